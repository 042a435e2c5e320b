"""The ReplicaSet controller's decisions (pure): how many pods to create, which to delete, status.

Pods count as active until they are terminating or finished. Scale-down deletes first the pods that
matter least, in kube-controller-manager's order (controller.ActivePodsWithRanks): unscheduled before
scheduled, pending before running, not ready before ready, ready for a shorter time first, more
restarts first, newer first. A pod is available once it has been ready for `minReadySeconds`.
"""

from __future__ import annotations

import copy
import datetime as dt

from localcluster.objects import (
    Obj,
    condition,
    controller_uid,
    meta,
    name_of,
    owner_reference,
    parse_time,
    pod_ready,
    terminating,
    uid_of,
)

_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def active(pods: list[Obj]) -> list[Obj]:
    return [p for p in pods if not terminating(p) and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def owned_by(rs: Obj, pods: list[Obj]) -> list[Obj]:
    uid = uid_of(rs)
    return [p for p in pods if controller_uid(p) == uid]


def ready_since(pod: Obj) -> dt.datetime | None:
    c = condition(pod, "Ready")
    return parse_time(c.get("lastTransitionTime")) if c.get("status") == "True" else None


def available(pod: Obj, min_ready_seconds: int, now: dt.datetime) -> bool:
    since = ready_since(pod)
    if since is None:
        return False
    return min_ready_seconds <= 0 or (now - since).total_seconds() >= min_ready_seconds


def _restarts(pod: Obj) -> int:
    return sum(int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def deletion_order(pods: list[Obj]) -> list[Obj]:
    """Pods sorted so that the first ones are the best to delete on scale-down (stable sorts, the
    least significant criterion first)."""
    out = sorted(pods, key=lambda p: meta(p).get("creationTimestamp", ""), reverse=True)  # newer first
    out.sort(key=_restarts, reverse=True)  # more restarts first
    out.sort(key=lambda p: -(ready_since(p) or _EPOCH).timestamp())  # ready for a shorter time first
    out.sort(key=lambda p: (1 if (p.get("spec") or {}).get("nodeName") else 0,
                            _PHASE_RANK.get((p.get("status") or {}).get("phase", "Pending"), 0),
                            1 if pod_ready(p) else 0))
    return out


def plan_replicaset(rs: Obj, pods: list[Obj]) -> tuple[int, list[str]]:
    """(pods to create, names of pods to delete) to reach spec.replicas, from the ReplicaSet's pods."""
    mine = active(owned_by(rs, pods))
    wanted = int((rs.get("spec") or {}).get("replicas", 1))
    diff = len(mine) - wanted
    if diff < 0:
        return -diff, []
    return 0, [name_of(p) for p in deletion_order(mine)[:diff]]


def replicaset_status(rs: Obj, pods: list[Obj], now: dt.datetime) -> Obj:
    mine = active(owned_by(rs, pods))
    min_ready = int((rs.get("spec") or {}).get("minReadySeconds") or 0)
    return {
        "replicas": len(mine),
        "fullyLabeledReplicas": len(mine),
        "readyReplicas": sum(1 for p in mine if pod_ready(p)),
        "availableReplicas": sum(1 for p in mine if available(p, min_ready, now)),
        "observedGeneration": int(meta(rs).get("generation") or 1),
    }


def next_available_in(rs: Obj, pods: list[Obj], now: dt.datetime) -> float | None:
    """Seconds until a ready pod of the ReplicaSet becomes available (to recount then), if any will."""
    min_ready = int((rs.get("spec") or {}).get("minReadySeconds") or 0)
    waits = []
    for p in active(owned_by(rs, pods)):
        since = ready_since(p)
        if since is not None and not available(p, min_ready, now):
            waits.append(min_ready - (now - since).total_seconds())
    return max(0.0, min(waits)) + 0.05 if waits else None


def pod_for(rs: Obj) -> Obj:
    """A new pod of the ReplicaSet: its template, a generated name, owned by the ReplicaSet."""
    template = rs["spec"]["template"]
    tmeta = template.get("metadata") or {}
    pod_meta: Obj = {
        "generateName": f"{name_of(rs)}-",
        "namespace": meta(rs).get("namespace", ""),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [owner_reference(rs)],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(template.get("spec") or {}),
            "status": {"phase": "Pending", "qosClass": "Burstable"}}
