"""What the node agent reports (pure): a pod's status from its containers' states, restart back-off,
the node's scheduling check."""

from __future__ import annotations

from localcluster.objects import Obj, with_condition

NODE_RESOURCES = {"cpu", "memory", "ephemeral-storage", "pods", "hugepages-2Mi"}


def pod_status(previous: Obj, containers: list[Obj], start_time: str, now: str, volumes_ready: bool = True,
               finished: bool = False) -> Obj:
    """The pod's status: phase, conditions (PodScheduled, Initialized, ContainersReady, Ready),
    127.0.0.1 as pod and host IP, and the container statuses (kept in the spec's order). A pod whose
    containers all ended for good (`finished`: their restartPolicy says so) is Succeeded when each
    exited 0, else Failed."""
    all_ready = bool(containers) and all(c.get("ready") for c in containers)
    ever_started = any("running" in c["state"] or c.get("restartCount") or "terminated" in c["state"] for c in containers)
    conditions = previous.get("conditions") or []
    for ctype, ok, reason in (
        ("PodScheduled", True, ""),
        ("Initialized", volumes_ready, "" if volumes_ready else "VolumesNotReady"),
        ("ContainersReady", all_ready, "" if all_ready else "ContainersNotReady"),
        ("Ready", all_ready, "" if all_ready else "ContainersNotReady"),
    ):
        cond: Obj = {"type": ctype, "status": "True" if ok else "False"}
        if reason:
            cond["reason"] = reason
            not_ready = [c["name"] for c in containers if not c.get("ready")]
            cond["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        else:
            cond.update(reason=None, message=None)
        conditions = with_condition(conditions, cond, now)
    conditions = [{k: v for k, v in c.items() if v is not None} for c in conditions]
    phase = "Running" if ever_started else "Pending"
    if finished:
        codes = [((c.get("state") or {}).get("terminated") or {}).get("exitCode", 1) for c in containers]
        phase = "Succeeded" if all(code == 0 for code in codes) else "Failed"
    return {
        "phase": phase,
        "conditions": sorted(conditions, key=lambda c: c["type"]),
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": start_time,
        "qosClass": previous.get("qosClass", "Burstable"),
        "containerStatuses": containers,
    }


def unschedulable(pod: Obj, node_resources: set[str] = NODE_RESOURCES) -> str | None:
    """Why the one node cannot take the pod (extended resources such as GPUs it does not have)."""
    wanted: set[str] = set()
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        wanted |= set((res.get("limits") or {}).keys()) | set((res.get("requests") or {}).keys())
    missing = sorted(wanted - node_resources)
    if missing:
        return f"0/1 nodes are available: 1 Insufficient {', '.join(missing)}."
    return None


def restart_delay(crashes: int, base: float, cap: float = 300.0) -> float:
    """The kubelet's CrashLoopBackOff: the first restart at once, then base, 2*base, ... up to cap."""
    if crashes <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (crashes - 2)))
