"""The fake API server's Deployment controller stand-in, for tests that run no controllers (the
operator tests): with `simulate=True` every Deployment reports all its pods ready shortly after each
change; `set_ready` pins a number instead. The local cluster turns it off and runs the real
controllers (`localcluster.controllers`)."""

from __future__ import annotations

from localcluster.apimachinery import Obj, Resource
from localcluster.store import Store


class DeploymentStandIn:
    """Writes Deployments' status into `store`; `after_write` is the store's write hook."""

    def __init__(self, store: Store, simulate: bool):
        self.store = store
        self.simulate = simulate
        self.overrides: dict[tuple[str, str], int] = {}  # (namespace, name) -> ready pods

    def after_write(self, r: Resource, obj: Obj) -> None:
        """A Deployment changed: write its status shortly (on the store's loop), as a controller would."""
        loop = self.store.loop
        if r.plural == "deployments" and (self.simulate or self.overrides) and loop is not None:
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            loop.call_soon_threadsafe(loop.call_later, 0.05, self.write_status, ns, name)

    def set_ready(self, namespace: str, name: str, ready: int) -> None:
        """Pretend `ready` pods of a Deployment are ready (overrides `simulate`)."""
        with self.store.lock:
            self.overrides[(namespace, name)] = ready
            if ("apps", "deployments", namespace, name) in self.store.objects:
                self.write_status(namespace, name)

    def write_status(self, namespace: str, name: str) -> None:
        store = self.store
        with store.lock:
            obj = store.objects.get(("apps", "deployments", namespace, name))
            if obj is None:
                return
            status = deployment_status(obj, self.overrides.get((namespace, name)), self.simulate)
            if obj.get("status") != status:
                store.update(store.resources[("apps", "deployments")], namespace, name, {**obj, "status": status},
                             subresource="status")


def deployment_status(deployment: Obj, pinned: int | None, simulate: bool) -> Obj:
    """The status a Deployment controller would report with `pinned` (else all, or none) pods ready."""
    wanted = deployment["spec"].get("replicas", 1)
    ready = min(wanted, pinned if pinned is not None else wanted if simulate else 0)
    return {
        "observedGeneration": deployment["metadata"]["generation"],
        "replicas": wanted,
        "updatedReplicas": wanted,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": wanted - ready,
        "conditions": [
            {"type": "Available", "status": "True" if ready >= wanted else "False",
             "reason": "MinimumReplicasAvailable" if ready >= wanted else "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" if ready >= wanted else "ReplicaSetUpdated"},
        ],
    }
