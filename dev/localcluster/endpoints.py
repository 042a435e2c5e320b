"""The EndpointSlice controller's decisions (pure): a Service's slices from the pods it selects.

As in Kubernetes (discovery.k8s.io/v1), one slice holds the endpoints that share the same port
numbers; an endpoint is `ready` when its pod is Ready and not terminating, `serving` when its pod is
Ready, `terminating` once the pod has a deletionTimestamp. Here every pod's address is 127.0.0.1 and
its container ports are mapped to host ports (see `podspec`), so a slice's port numbers are the
pod's host ports: pods with different host ports get different slices, exactly as pods whose named
ports resolve to different numbers do in a real cluster.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from localcluster.objects import (
    HOST_PORTS_ANNOTATION,
    Obj,
    annotations_of,
    labels_of,
    meta,
    name_of,
    namespace_of,
    owner_reference,
    pod_ready,
    selector_matches,
    terminating,
    uid_of,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"


def host_ports(pod: Obj) -> dict[int, int]:
    """containerPort -> host port, as the node agent recorded it on the pod."""
    try:
        raw = json.loads(annotations_of(pod).get(HOST_PORTS_ANNOTATION) or "{}")
        return {int(k): int(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def container_port(pod: Obj, target: Any) -> int | None:
    """A Service's targetPort (a number or a container port's name) as the pod's container port."""
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


def endpoint_ports(service: Obj, pod: Obj) -> tuple[tuple[str, int, str], ...]:
    """(port name, host port, protocol) for each Service port the pod serves."""
    mapping = host_ports(pod)
    out = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        cport = container_port(pod, sp.get("targetPort", sp.get("port")))
        if cport is not None and cport in mapping:
            out.append((str(sp.get("name", "")), mapping[cport], str(sp.get("protocol", "TCP"))))
    return tuple(out)


def _endpoint(pod: Obj) -> Obj:
    ready, gone = pod_ready(pod), terminating(pod)
    return {
        "addresses": [(pod.get("status") or {}).get("podIP", "127.0.0.1")],
        "conditions": {"ready": ready and not gone, "serving": ready, "terminating": gone},
        "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "targetRef": {"kind": "Pod", "namespace": namespace_of(pod), "name": name_of(pod), "uid": uid_of(pod)},
    }


def slice_name(service: Obj, ports: tuple[tuple[str, int, str], ...]) -> str:
    digest = hashlib.sha256(json.dumps(ports).encode()).hexdigest()[:5]
    return f"{name_of(service)}-{digest}"


def desired_slices(service: Obj, pods: list[Obj]) -> list[Obj]:
    """Every EndpointSlice the Service should have (none without a selector), sorted by name."""
    selector = (service.get("spec") or {}).get("selector")
    groups: dict[tuple[tuple[str, int, str], ...], list[Obj]] = {}
    for pod in sorted(pods, key=name_of):
        status = pod.get("status") or {}
        if not selector_matches(selector, labels_of(pod)) or not status.get("podIP"):
            continue
        if status.get("phase") in ("Succeeded", "Failed") or namespace_of(pod) != namespace_of(service):
            continue
        ports = endpoint_ports(service, pod)
        if ports:
            groups.setdefault(ports, []).append(pod)
    slices: list[Obj] = []
    for ports, members in groups.items():
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name(service, ports), "namespace": namespace_of(service),
                # the Service's own labels, mirrored as Kubernetes' controller does (kubernetes#94443)
                "labels": {**labels_of(service), SERVICE_NAME_LABEL: name_of(service), MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [owner_reference(service)],
            },
            "addressType": "IPv4",
            "endpoints": [_endpoint(p) for p in members],
            "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
        })
    return sorted(slices, key=lambda s: s["metadata"]["name"])


def same_content(desired: Obj, live: Obj) -> bool:
    keys = ("addressType", "endpoints", "ports")
    return all(desired.get(k) == live.get(k) for k in keys) and meta(desired).get("labels") == labels_of(live)


def endpoints_of(slices: list[Obj], port_name: str) -> list[tuple[str, int, Obj]]:
    """(address, port, conditions) of every endpoint of a Service port across its slices."""
    out = []
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name", "") == port_name), None)
        if port is None:
            continue
        for e in s.get("endpoints") or []:
            for addr in e.get("addresses") or []:
                out.append((addr, int(port), e.get("conditions") or {}))
    return out
