"""Server-side printing of built-in kinds (`kubectl get pods`, `deploy`, `rs`, `svc`, ...), with the
columns kube-apiserver prints for them (pkg/printers/internalversion), computed from the object."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from localcluster.apimachinery import age
from localcluster.objects import SERVICE_PORTS_ANNOTATION, Obj, annotations_of, condition, terminating

Column = tuple[str, str, int, Callable[[Obj], Any]]  # (name, type, priority, cell)


def _age(o: Obj) -> str:
    return age((o.get("metadata") or {}).get("creationTimestamp"))


def _st(o: Obj, key: str, default: Any = 0) -> Any:
    return (o.get("status") or {}).get(key, default)


def pod_status_text(pod: Obj) -> str:
    """The STATUS column: Terminating, a container's waiting/terminated reason, or the phase."""
    if terminating(pod):
        return "Terminating"
    for c in _st(pod, "containerStatuses", []) or []:
        state = c.get("state") or {}
        for key in ("waiting", "terminated"):
            reason = (state.get(key) or {}).get("reason")
            if reason:
                return str(reason)
    if condition(pod, "PodScheduled").get("status") == "False":
        return "Pending"
    return str(_st(pod, "phase", "Pending"))


def _pod_ready(pod: Obj) -> str:
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for c in _st(pod, "containerStatuses", []) or [] if c.get("ready"))
    return f"{ready}/{len(containers)}"


def _restarts(pod: Obj) -> int:
    return sum(int(c.get("restartCount") or 0) for c in _st(pod, "containerStatuses", []) or [])


def _service_ports(svc: Obj) -> str:
    try:
        local = json.loads(annotations_of(svc).get(SERVICE_PORTS_ANNOTATION) or "{}")
    except ValueError:
        local = {}
    out = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        mapped = local.get(p.get("name") or str(p.get("port")))
        out.append(f"{p.get('port')}{':' + str(mapped) if mapped else ''}/{p.get('protocol', 'TCP')}")
    return ",".join(out) or "<none>"


def _slice_endpoints(s: Obj) -> str:
    addrs = [f"{a}:{p.get('port')}" for e in s.get("endpoints") or [] for a in e.get("addresses") or []
             for p in (s.get("ports") or [])[:1]]
    return ",".join(addrs) or "<unset>"


def _node_status(n: Obj) -> str:
    return "Ready" if condition(n, "Ready").get("status") == "True" else "NotReady"


def _event_object(e: Obj) -> str:
    inv = e.get("involvedObject") or e.get("regarding") or {}
    return f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}"


COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "pods"): [
        ("Ready", "string", 0, _pod_ready), ("Status", "string", 0, pod_status_text),
        ("Restarts", "integer", 0, _restarts), ("Age", "string", 0, _age),
        ("IP", "string", 1, lambda p: _st(p, "podIP", "<none>")),
        ("Node", "string", 1, lambda p: (p.get("spec") or {}).get("nodeName") or "<none>"),
    ],
    ("apps", "deployments"): [
        ("Ready", "string", 0, lambda d: f"{_st(d, 'readyReplicas')}/{(d.get('spec') or {}).get('replicas', 1)}"),
        ("Up-to-date", "integer", 0, lambda d: _st(d, "updatedReplicas")),
        ("Available", "integer", 0, lambda d: _st(d, "availableReplicas")), ("Age", "string", 0, _age),
    ],
    ("apps", "replicasets"): [
        ("Desired", "integer", 0, lambda r: (r.get("spec") or {}).get("replicas", 1)),
        ("Current", "integer", 0, lambda r: _st(r, "replicas")), ("Ready", "integer", 0, lambda r: _st(r, "readyReplicas")),
        ("Age", "string", 0, _age),
    ],
    ("", "services"): [
        ("Type", "string", 0, lambda s: (s.get("spec") or {}).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda s: (s.get("spec") or {}).get("clusterIP") or "<none>"),
        ("External-IP", "string", 0, lambda s: "127.0.0.1" if annotations_of(s).get(SERVICE_PORTS_ANNOTATION) else "<none>"),
        ("Port(s)", "string", 0, _service_ports), ("Age", "string", 0, _age),
    ],
    ("discovery.k8s.io", "endpointslices"): [
        ("AddressType", "string", 0, lambda s: s.get("addressType", "")),
        ("Ports", "string", 0, lambda s: ",".join(str(p.get("port")) for p in s.get("ports") or []) or "<unset>"),
        ("Endpoints", "string", 0, _slice_endpoints), ("Age", "string", 0, _age),
    ],
    ("", "nodes"): [
        ("Status", "string", 0, _node_status), ("Roles", "string", 0, lambda n: "control-plane"),
        ("Age", "string", 0, _age),
        ("Version", "string", 0, lambda n: (_st(n, "nodeInfo", {}) or {}).get("kubeletVersion", "")),
    ],
    ("", "events"): [
        ("Last Seen", "string", 0, lambda e: age(e.get("lastTimestamp") or e.get("eventTime"))),
        ("Type", "string", 0, lambda e: e.get("type", "")), ("Reason", "string", 0, lambda e: e.get("reason", "")),
        ("Object", "string", 0, _event_object), ("Message", "string", 0, lambda e: e.get("message", "")),
    ],
    ("", "persistentvolumeclaims"): [
        ("Status", "string", 0, lambda c: _st(c, "phase", "Pending")),
        ("Capacity", "string", 0, lambda c: (_st(c, "capacity", {}) or {}).get("storage", "")),
        ("Age", "string", 0, _age),
    ],
}
