"""Small pure accessors for Kubernetes objects as plain dicts (labels, owners, conditions, times)."""

from __future__ import annotations

import datetime as dt
from typing import Any

Obj = dict[str, Any]
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Where the local cluster records what a real cluster would not need (host ports, Service ports).
ANNOTATION_PREFIX = "localcluster.modeldeploy.io"
HOST_PORTS_ANNOTATION = f"{ANNOTATION_PREFIX}/host-ports"
SERVICE_PORTS_ANNOTATION = f"{ANNOTATION_PREFIX}/ports"
# A container's ID is its process on this machine: `local://PID`.
CONTAINER_ID_SCHEME = "local://"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def name_of(obj: Obj) -> str:
    return str(meta(obj).get("name", ""))


def namespace_of(obj: Obj) -> str:
    return str(meta(obj).get("namespace", ""))


def uid_of(obj: Obj) -> str:
    return str(meta(obj).get("uid", ""))


def labels_of(obj: Obj) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict(meta(obj).get("annotations") or {})


def terminating(obj: Obj) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def controller_uid(obj: Obj) -> str | None:
    """The uid of the object's controlling owner (ownerReferences[].controller), if any."""
    for ref in meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owner_reference(owner: Obj, block: bool = True) -> Obj:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": name_of(owner), "uid": uid_of(owner),
            "controller": True, "blockOwnerDeletion": block}


def selector_matches(match_labels: dict[str, str] | None, labels: dict[str, str]) -> bool:
    """A Service-style selector (or a LabelSelector's matchLabels): every pair present. Empty matches nothing."""
    if not match_labels:
        return False
    return all(labels.get(k) == v for k, v in match_labels.items())


def condition(obj: Obj | None, ctype: str) -> Obj:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def with_condition(conditions: list[Obj], new: Obj, now: str) -> list[Obj]:
    """Conditions with `new` set; lastTransitionTime moves only when the status changes."""
    out, found = [], False
    for c in conditions:
        if c.get("type") != new["type"]:
            out.append(c)
            continue
        found = True
        if all(c.get(k) == new.get(k) for k in ("status", "reason", "message")):
            out.append(c)  # unchanged: keep its times, so that an idle status write is a no-op
            continue
        merged = {**c, **new}
        merged["lastTransitionTime"] = c.get("lastTransitionTime", now) if c.get("status") == new["status"] else now
        out.append(merged)
    if not found:
        out.append({**new, "lastTransitionTime": now})
    return out


def pod_ready(pod: Obj) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def container_id(pid: int) -> str:
    return f"{CONTAINER_ID_SCHEME}{pid}"


def running_pid(pod: Obj) -> int | None:
    """The PID of the pod's first running container (from its `local://PID` containerID); None when
    none is running here (or the pod is on a real cluster's node)."""
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        cid = c.get("containerID", "")
        if cid.startswith(CONTAINER_ID_SCHEME) and "running" in (c.get("state") or {}):
            return int(cid.removeprefix(CONTAINER_ID_SCHEME))
    return None
