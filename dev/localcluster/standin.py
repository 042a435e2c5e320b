"""The fake API server's Deployment controller stand-in, for tests that run no controllers (the
operator tests): with `simulate_deployments=True` every Deployment reports all its pods ready
shortly after each change; `set_deployment_ready` pins a number instead. The local cluster turns it
off and runs the real controllers (`localcluster.controllers`)."""

from __future__ import annotations

from typing import Any

from localcluster.apimachinery import Obj


class DeploymentStandIn:
    """Mixed into FakeKubeAPI (which provides the store, its lock and `update`)."""

    lock: Any
    objects: dict[Any, Obj]
    resources: dict[Any, Any]
    simulate_deployments: bool
    _deployment_overrides: dict[tuple[str, str], int]
    update: Any

    def set_deployment_ready(self, namespace: str, name: str, ready: int) -> None:
        """Pretend `ready` pods of a Deployment are ready (overrides simulate_deployments)."""
        with self.lock:
            self._deployment_overrides[(namespace, name)] = ready
            obj = self.objects.get(("apps", "deployments", namespace, name))
            if obj:
                self._write_deployment_status(namespace, name)

    def _write_deployment_status(self, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.objects.get(("apps", "deployments", namespace, name))
            if obj is None:
                return
            wanted = obj["spec"].get("replicas", 1)
            ready = min(wanted, self._deployment_overrides.get((namespace, name), wanted if self.simulate_deployments else 0))
            gen = obj["metadata"]["generation"]
            status = {
                "observedGeneration": gen,
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
            if obj.get("status") != status:
                self.update(self.resources[("apps", "deployments")], namespace, name, {**obj, "status": status}, subresource="status")
