"""kube-controller-manager's part of the local cluster: the Deployment, ReplicaSet, EndpointSlice and
ServiceAccount controllers and a volume binder, each a thin shell around the pure decisions in `rollout`,
`replicaset` and `endpoints`.

Each controller keeps a set of keys to sync: watch events (from the store, in-process) mark keys,
a key is synced once however many events arrived meanwhile, and a sync may ask to run again later
(minReadySeconds, progress deadlines). Nothing polls: an idle cluster does no work.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from localcluster import endpoints, replicaset, rollout
from localcluster.apimachinery import ApiError
from localcluster.client import Client
from localcluster.objects import Obj, controller_uid, labels_of, meta, name_of, namespace_of, uid_of, utcnow

log = logging.getLogger("localcluster.controllers")
Key = tuple[str, str]  # (namespace, name)


class Queue:
    """Coalescing, delayed work on the event loop: `add(key, delay)` runs `sync(key)` once, at the
    earliest time asked for; `sync` returns seconds until it wants to run again, or None."""

    def __init__(self, name: str, sync: Callable[[Key], float | None], loop: asyncio.AbstractEventLoop):
        self.name, self.sync, self.loop = name, sync, loop
        self._timers: dict[Key, asyncio.TimerHandle] = {}

    def add(self, key: Key, delay: float = 0.0) -> None:
        when = self.loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None and timer.when() <= when:
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = self.loop.call_at(when, self._run, key)

    def _run(self, key: Key) -> None:
        self._timers.pop(key, None)
        try:
            again = self.sync(key)
        except ApiError as exc:  # a conflict or a vanished object: look again shortly
            log.debug("%s %s/%s: %s; retrying", self.name, *key, exc)
            again = 0.5
        except Exception:
            log.exception("%s %s/%s failed; retrying in 2 s", self.name, *key)
            again = 2.0
        if again is not None:
            self.add(key, again)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


def _owner_name(obj: Obj, kind: str) -> str | None:
    return next((r.get("name") for r in meta(obj).get("ownerReferences") or [] if r.get("controller") and r.get("kind") == kind), None)


class DeploymentController:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.queue = Queue("deployment", self.sync, loop)
        self.unsubscribe = client.subscribe({("apps", "deployments"), ("apps", "replicasets")}, self.on_event, loop)

    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        name = name_of(obj) if plural == "deployments" else _owner_name(obj, "Deployment")
        if name:
            self.queue.add((namespace_of(obj), name))

    def _replicasets(self, d: Obj) -> list[Obj]:
        return [r for r in self.client.list("apps", "replicasets", namespace_of(d)) if controller_uid(r) == uid_of(d)]

    def sync(self, key: Key) -> float | None:
        d = self.client.get("apps", "deployments", *key)
        if d is None or meta(d).get("deletionTimestamp"):
            return None
        for step in rollout.plan_deployment(d, self._replicasets(d)):
            self._act(d, step)
        now = utcnow()
        d = self.client.get("apps", "deployments", *key) or d
        status = rollout.deployment_status(d, self._replicasets(d), now)
        d = self.client.write_status("apps", "deployments", d, status) or d
        return rollout.progress_deadline_in(d, now)

    def _act(self, d: Obj, step: rollout.Step) -> None:
        ns = namespace_of(d)
        if step.action == "create" and step.manifest is not None:
            self.client.create("apps", "replicasets", step.manifest)
            self.client.event(d, "Normal", "ScalingReplicaSet", f"Scaled up replica set {step.name} from 0 to {step.replicas}")
        elif step.action == "scale":
            rs = self.client.get("apps", "replicasets", ns, step.name)
            if rs is None:
                return
            before = int(rs["spec"].get("replicas", 1))
            rs["spec"]["replicas"] = step.replicas
            rs["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(d["spec"].get("replicas", 1))
            self.client.replace("apps", "replicasets", rs)
            direction = "up" if step.replicas > before else "down"
            self.client.event(d, "Normal", "ScalingReplicaSet", f"Scaled {direction} replica set {step.name} from {before} to {step.replicas}")
        elif step.action == "delete":
            self.client.delete("apps", "replicasets", ns, step.name)


class ReplicaSetController:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.queue = Queue("replicaset", self.sync, loop)
        self.unsubscribe = client.subscribe({("apps", "replicasets"), ("", "pods")}, self.on_event, loop)

    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        name = name_of(obj) if plural == "replicasets" else _owner_name(obj, "ReplicaSet")
        if name:
            self.queue.add((namespace_of(obj), name))

    def sync(self, key: Key) -> float | None:
        rs = self.client.get("apps", "replicasets", *key)
        if rs is None or meta(rs).get("deletionTimestamp"):
            return None
        pods = self.client.list("", "pods", key[0])
        create, delete = replicaset.plan_replicaset(rs, pods)
        for _ in range(create):
            pod = self.client.create("", "pods", replicaset.pod_for(rs))
            self.client.event(rs, "Normal", "SuccessfulCreate", f"Created pod: {name_of(pod)}")
        for name in delete:
            self.client.delete("", "pods", key[0], name)
            self.client.event(rs, "Normal", "SuccessfulDelete", f"Deleted pod: {name}")
        now = utcnow()
        if create or delete:
            pods = self.client.list("", "pods", key[0])
        self.client.write_status("apps", "replicasets", rs, replicaset.replicaset_status(rs, pods, now))
        return replicaset.next_available_in(rs, pods, now)


class EndpointSliceController:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.queue = Queue("endpointslice", self.sync, loop)
        resources = {("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices")}
        self.unsubscribe = client.subscribe(resources, self.on_event, loop)

    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        ns = namespace_of(obj)
        if plural == "services":
            self.queue.add((ns, name_of(obj)))
        elif plural == "endpointslices":
            svc = labels_of(obj).get(endpoints.SERVICE_NAME_LABEL)
            if svc and labels_of(obj).get(endpoints.MANAGED_BY_LABEL) == endpoints.MANAGED_BY:
                self.queue.add((ns, svc))
        else:  # a pod changed: every Service of its namespace may select it (or have selected it)
            for service in self.client.list("", "services", ns):
                self.queue.add((ns, name_of(service)))

    def sync(self, key: Key) -> float | None:
        ns, name = key
        svc = self.client.get("", "services", ns, name)
        live = {name_of(s): s for s in self.client.list("discovery.k8s.io", "endpointslices", ns)
                if labels_of(s).get(endpoints.SERVICE_NAME_LABEL) == name
                and labels_of(s).get(endpoints.MANAGED_BY_LABEL) == endpoints.MANAGED_BY}
        desired = endpoints.desired_slices(svc, self.client.list("", "pods", ns)) if svc else []
        for s in desired:
            current = live.pop(name_of(s), None)
            if current is None:
                self.client.create("discovery.k8s.io", "endpointslices", s)
            elif not endpoints.same_content(s, current):
                s["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self.client.replace("discovery.k8s.io", "endpointslices", s)
        for stale in live:
            self.client.delete("discovery.k8s.io", "endpointslices", ns, stale)
        return None


class VolumeBinder:
    """Binds every PersistentVolumeClaim at once to a directory `<pvc root>/<namespace>/<claim>`."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, pvc_root: Path):
        self.client, self.pvc_root = client, pvc_root
        self.unsubscribe = client.subscribe({("", "persistentvolumeclaims")}, self.on_event, loop)

    def on_event(self, etype: str, plural: str, claim: Obj) -> None:
        if etype == "DELETED" or (claim.get("status") or {}).get("phase") == "Bound":
            return
        os.makedirs(self.pvc_root / namespace_of(claim) / name_of(claim), exist_ok=True)
        spec = claim.get("spec") or {}
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        status = {"phase": "Bound", "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]), "capacity": {"storage": storage}}
        self.client.write_status("", "persistentvolumeclaims", claim, status)


class ServiceAccountController:
    """Every namespace gets a ServiceAccount `default` (and gets it back when it is deleted), as
    kube-controller-manager's serviceaccount controller does: pods that name no account run as it."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.unsubscribe = client.subscribe({("", "namespaces"), ("", "serviceaccounts")}, self.on_event, loop)

    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        ns = name_of(obj) if plural == "namespaces" else namespace_of(obj)
        if plural == "serviceaccounts" and (etype != "DELETED" or name_of(obj) != "default"):
            return
        namespace = self.client.get("", "namespaces", "", ns)
        if namespace is None or meta(namespace).get("deletionTimestamp") or self.client.get("", "serviceaccounts", ns, "default"):
            return
        try:
            self.client.create("", "serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                       "metadata": {"name": "default", "namespace": ns}})
        except ApiError as exc:  # created meanwhile, or the namespace went
            log.debug("serviceaccount default in %s: %s", ns, exc)


class ControllerManager:
    """Every controller of the local cluster, started together on one event loop."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, pvc_root: Path):
        self.deployments = DeploymentController(client, loop)
        self.replicasets = ReplicaSetController(client, loop)
        self.endpointslices = EndpointSliceController(client, loop)
        self.volumes = VolumeBinder(client, loop, pvc_root)
        self.serviceaccounts = ServiceAccountController(client, loop)
        # Objects that existed before the controllers started (none in a fresh cluster; harmless).
        for d in client.list("apps", "deployments"):
            self.deployments.on_event("ADDED", "deployments", d)
        for svc in client.list("", "services"):
            self.endpointslices.on_event("ADDED", "services", svc)
        for claim in client.list("", "persistentvolumeclaims"):
            self.volumes.on_event("ADDED", "persistentvolumeclaims", claim)
        for namespace in client.list("", "namespaces"):
            self.serviceaccounts.on_event("ADDED", "namespaces", namespace)

    def close(self) -> None:
        for part in (self.deployments, self.replicasets, self.endpointslices, self.volumes, self.serviceaccounts):
            part.unsubscribe()
        for queue in (self.deployments.queue, self.replicasets.queue, self.endpointslices.queue):
            queue.close()
