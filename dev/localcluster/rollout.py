"""The Deployment controller's decisions (pure), as kube-controller-manager makes them.

From a Deployment and the ReplicaSets it controls, `plan_deployment` returns the steps to take
(create the ReplicaSet of the current pod template, scale ReplicaSets, delete old history), and
`deployment_status` the status to report. The arithmetic follows pkg/controller/deployment
(rolling.go, recreate.go, util/deployment_util.go): `maxSurge` rounds up, `maxUnavailable` rounds
down, both 0 means 1 unavailable; a rolling update first scales the new ReplicaSet up within
`desired + maxSurge`, then scales old ones down while `desired - maxUnavailable` pods stay available
(unhealthy old pods go first). Each sync does one of the two, as the real controller does; the
resulting ReplicaSet and pod events trigger the next.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from localcluster.objects import (
    Obj,
    condition,
    meta,
    name_of,
    owner_reference,
    parse_time,
    timestamp,
    with_condition,
)

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' rand.SafeEncodeString


@dataclass(frozen=True)
class Step:
    """One action: `create` a ReplicaSet (`manifest`), `scale` one to `replicas`, or `delete` one."""

    action: str
    name: str
    replicas: int = 0
    manifest: Obj | None = None


def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """An IntOrString (3 or "25%") against `total` replicas."""
    if isinstance(value, bool):
        raise ValueError(f"invalid value {value!r}")
    if isinstance(value, int):
        return value
    text = str(value)
    if not text.endswith("%") or not text[:-1].isdigit():
        raise ValueError(f"invalid value {value!r}: an integer or a percentage such as '25%'")
    exact = int(text[:-1]) * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def resolve_fenceposts(max_surge: Any, max_unavailable: Any, desired: int) -> tuple[int, int]:
    """(surge, unavailable) for `desired` replicas; never both 0 (then 1 may be unavailable)."""
    surge = scaled_value("25%" if max_surge is None else max_surge, desired, True)
    unavailable = scaled_value("25%" if max_unavailable is None else max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def new_rs_replicas(desired: int, surge: int, all_replicas: int, new_replicas: int) -> int:
    """How many replicas the new ReplicaSet may have now (scaling up within desired + maxSurge)."""
    if new_replicas >= desired:
        return desired
    max_total = desired + surge
    if all_replicas >= max_total:
        return new_replicas
    return new_replicas + min(max_total - all_replicas, desired - new_replicas)


def scale_down_old(desired: int, unavailable: int, all_replicas: int, new_replicas: int, new_available: int,
                   olds: list[tuple[int, int]]) -> list[int]:
    """New replica counts of the old ReplicaSets, given as (replicas, available) oldest first."""
    counts = [r for r, _ in olds]
    min_available = desired - unavailable
    max_scaled_down = all_replicas - min_available - (new_replicas - new_available)
    if sum(counts) == 0 or max_scaled_down <= 0:
        return counts
    cleaned = 0
    for i, (replicas, available) in enumerate(olds):  # unhealthy old pods first
        if cleaned >= max_scaled_down or replicas == 0 or replicas <= available:
            continue
        down = min(max_scaled_down - cleaned, replicas - available)
        counts[i] -= down
        cleaned += down
    available_now = new_available + sum(min(a, c) for (_, a), c in zip(olds, counts, strict=True))
    if available_now <= min_available:
        return counts
    budget = available_now - min_available
    for i, count in enumerate(counts):
        if budget <= 0:
            break
        down = min(count, budget)
        counts[i] -= down
        budget -= down
    return counts


def template_hash(template: Obj) -> str:
    """A stable 10-character name for a pod template (the `pod-template-hash` label)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def _spec_replicas(obj: Obj) -> int:
    return int((obj.get("spec") or {}).get("replicas", 1))


def _status(obj: Obj, key: str) -> int:
    return int((obj.get("status") or {}).get(key) or 0)


def _revision(obj: Obj) -> int:
    try:
        return int((meta(obj).get("annotations") or {}).get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _oldest_first(rss: list[Obj]) -> list[Obj]:
    return sorted(rss, key=lambda r: (meta(r).get("creationTimestamp", ""), name_of(r)))


def replicaset_for(deployment: Obj, pod_hash: str, revision: int, replicas: int) -> Obj:
    """The ReplicaSet of the Deployment's current template: its labels, selector and pods carry the hash."""
    spec = deployment["spec"]
    template = copy.deepcopy(spec["template"])
    template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
    selector = copy.deepcopy(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": f"{name_of(deployment)}-{pod_hash}", "namespace": meta(deployment).get("namespace", ""),
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {REVISION_ANNOTATION: str(revision),
                            "deployment.kubernetes.io/desired-replicas": str(_spec_replicas(deployment))},
            "ownerReferences": [owner_reference(deployment)],
        },
        "spec": {"replicas": replicas, "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                 "selector": selector, "template": template},
    }


def current_replicaset(deployment: Obj, rss: list[Obj]) -> Obj | None:
    pod_hash = template_hash(deployment["spec"]["template"])
    return next((r for r in rss if (meta(r).get("labels") or {}).get(HASH_LABEL) == pod_hash), None)


def plan_deployment(deployment: Obj, rss: list[Obj]) -> list[Step]:
    """The steps that move the Deployment's ReplicaSets one sync towards its spec."""
    spec = deployment["spec"]
    if spec.get("paused"):
        return []
    desired = _spec_replicas(deployment)
    rss = _oldest_first(rss)
    new = current_replicaset(deployment, rss)
    olds = [r for r in rss if r is not new]
    strategy = spec.get("strategy") or {}
    recreate = strategy.get("type") == "Recreate"
    rolling = strategy.get("rollingUpdate") or {}
    surge, unavailable = resolve_fenceposts(rolling.get("maxSurge"), rolling.get("maxUnavailable"), desired)
    steps = _history_cleanup(olds, int(spec.get("revisionHistoryLimit", 10)))
    if recreate:
        return _plan_recreate(deployment, new, olds, desired, rss) + steps
    old_total = sum(_spec_replicas(o) for o in olds)
    if new is None:
        revision = max((_revision(r) for r in rss), default=0) + 1
        initial = new_rs_replicas(desired, surge, old_total, 0)
        rs = replicaset_for(deployment, template_hash(spec["template"]), revision, initial)
        return [Step("create", rs["metadata"]["name"], initial, rs), *steps]
    new_replicas = _spec_replicas(new)
    target = new_rs_replicas(desired, surge, old_total + new_replicas, new_replicas)
    if target != new_replicas:
        return [Step("scale", name_of(new), target), *steps]
    counts = scale_down_old(desired, unavailable, old_total + new_replicas, new_replicas, _status(new, "availableReplicas"),
                            [(_spec_replicas(o), _status(o, "availableReplicas")) for o in olds])
    scaled = [Step("scale", name_of(o), c) for o, c in zip(olds, counts, strict=True) if c != _spec_replicas(o)]
    return scaled + steps


def _plan_recreate(deployment: Obj, new: Obj | None, olds: list[Obj], desired: int, rss: list[Obj]) -> list[Step]:
    active = [o for o in olds if _spec_replicas(o) > 0]
    if active:
        return [Step("scale", name_of(o), 0) for o in active]
    if any(_status(o, "replicas") > 0 for o in olds):
        return []  # wait until every old pod is gone
    if new is None:
        revision = max((_revision(r) for r in rss), default=0) + 1
        rs = replicaset_for(deployment, template_hash(deployment["spec"]["template"]), revision, desired)
        return [Step("create", rs["metadata"]["name"], desired, rs)]
    return [Step("scale", name_of(new), desired)] if _spec_replicas(new) != desired else []


def _history_cleanup(olds: list[Obj], limit: int) -> list[Step]:
    dead = [o for o in olds if _spec_replicas(o) == 0 and _status(o, "replicas") == 0]
    dead.sort(key=_revision)
    return [Step("delete", name_of(o)) for o in dead[: max(0, len(dead) - limit)]]


def deployment_status(deployment: Obj, rss: list[Obj], now: dt.datetime) -> Obj:
    """Replica counts summed over the ReplicaSets, observedGeneration, Available and Progressing."""
    spec, previous = deployment["spec"], deployment.get("status") or {}
    desired = _spec_replicas(deployment)
    new = current_replicaset(deployment, rss)
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    _, unavailable = resolve_fenceposts(rolling.get("maxSurge"), rolling.get("maxUnavailable"), desired)
    counts = {
        "replicas": sum(_status(r, "replicas") for r in rss),
        "updatedReplicas": _status(new, "replicas") if new else 0,
        "readyReplicas": sum(_status(r, "readyReplicas") for r in rss),
        "availableReplicas": sum(_status(r, "availableReplicas") for r in rss),
    }
    status: Obj = {"observedGeneration": int(meta(deployment).get("generation") or 1), **counts}
    status["unavailableReplicas"] = max(0, desired - counts["availableReplicas"])
    stamp = timestamp(now)
    available = counts["availableReplicas"] >= desired - unavailable
    conditions = with_condition(previous.get("conditions") or [], {
        "type": "Available", "status": "True" if available else "False",
        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        "message": "Deployment has minimum availability." if available else "Deployment does not have minimum availability.",
        "lastUpdateTime": stamp,
    }, stamp)
    progressing = _progressing(deployment, new, counts, desired, now)
    if progressing is not None:
        conditions = with_condition(conditions, progressing, stamp)
    status["conditions"] = sorted(conditions, key=lambda c: c["type"])
    return status


def _progressing(deployment: Obj, new: Obj | None, counts: dict[str, int], desired: int, now: dt.datetime) -> Obj | None:
    previous = deployment.get("status") or {}
    before = condition(deployment, "Progressing")
    rs_name = name_of(new) if new else name_of(deployment)
    complete = new is not None and counts["updatedReplicas"] == desired and counts["replicas"] == desired \
        and counts["availableReplicas"] == desired
    stamp = timestamp(now)
    if complete:
        if before.get("reason") == "NewReplicaSetAvailable":
            return None
        return {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{rs_name}" has successfully progressed.', "lastUpdateTime": stamp}
    moved = any(int(previous.get(k) or 0) != v for k, v in counts.items()) or \
        int(previous.get("observedGeneration") or 0) != int(meta(deployment).get("generation") or 1)
    if moved or not before or before.get("reason") == "NewReplicaSetAvailable":
        return {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                "message": f'ReplicaSet "{rs_name}" is progressing.', "lastUpdateTime": stamp}
    deadline = int(deployment["spec"].get("progressDeadlineSeconds", 600))
    since = parse_time(before.get("lastUpdateTime"))
    if before.get("reason") != "ProgressDeadlineExceeded" and since and (now - since).total_seconds() > deadline:
        return {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{rs_name}" has timed out progressing.', "lastUpdateTime": stamp}
    return None


def progress_deadline_in(deployment: Obj, now: dt.datetime) -> float | None:
    """Seconds until the Deployment's progress deadline passes (to re-check then), if it is progressing."""
    before = condition(deployment, "Progressing")
    since = parse_time(before.get("lastUpdateTime"))
    if before.get("reason") != "ReplicaSetUpdated" or since is None:
        return None
    deadline = int(deployment["spec"].get("progressDeadlineSeconds", 600))
    return max(0.0, deadline - (now - since).total_seconds()) + 1.0
