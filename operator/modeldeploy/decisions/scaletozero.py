"""Scale to zero and back (`autoscaling.minReplicas: 0`), as pure functions of plain data.

The design is Knative's: the ModelDeployment's Service has no selector while scale-to-zero is on,
and the operator writes its EndpointSlices (`service_slices`): the ready pods' addresses when there
are any (copied from the headless admin Service's slices, which Kubernetes' EndpointSlice
controller keeps, so the ports are the pods' own), the activator's ports for this ModelDeployment
when there are none. Clients keep the Service's name and ports; once a pod is ready, traffic goes
to it directly and the activator is not in the path.

`decide` picks the replicas, every reconcile:

- requests held in the activator (`held > 0`): at least one replica (the autoscaler's figure, at
  least 1), whatever the idle measure says: a held request is demand;
- at zero and nothing held: stay at zero;
- running: zero once there was no inference request for `idleSeconds` (Prometheus' count over that
  window is 0) and the pods have been up at least that long (a fresh pod's counter has no history
  yet); an unknown count (no Prometheus, no scrape) never scales to zero;
- without an activator (the operator was not given `--activator-url`, or it cannot be reached while
  at zero) nothing would hold the first request: the replicas stay at least 1, and at zero they come
  back, with the reason in the `ScaledToZero` condition.

`cold_start` splits the last cold start into its parts from the activator's record and the pod's
own condition times.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import render

Obj = dict[str, Any]
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "modeldeploy.io/operator"  # not the EndpointSlice controller's: it leaves these alone
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class Activator:
    """What the activator answered for this ModelDeployment (its PUT), or why it did not."""

    address: str = ""
    grpc_port: int = 0
    http_port: int = 0
    held: int = 0
    waiting_since: float | None = None  # Unix seconds
    held_at: float | None = None  # the last cold start: first held request,
    released_at: float | None = None  # the first ready pod,
    answered_at: float | None = None  # and that request's answer (Unix seconds)
    problem: str = ""  # unreachable, refused: the ports are unknown

    @property
    def reachable(self) -> bool:
        return not self.problem and bool(self.address) and self.grpc_port > 0 and self.http_port > 0


@dataclass(frozen=True, slots=True)
class PodEndpoint:
    pod: str
    address: str
    grpc_port: int
    http_port: int


@dataclass(frozen=True, slots=True)
class Observation:
    now: float  # Unix seconds
    limits: api.ScaleToZero
    current: int  # the Deployment's spec.replicas
    ready: int  # its ready pods
    wanted: int  # the autoscaler's figure (>= 1)
    activator: Activator | None  # None: no activator configured
    requests: float | None  # inference requests in the last idleSeconds (None: unknown)
    awake_since: float | None  # when the Deployment last left zero (None: never at zero)
    measure_problem: str = ""  # why `requests` is unknown


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str  # the ScaledToZero condition's reason
    message: str
    awake_since: float | None
    event: tuple[str, str, str] | None = None  # (type, reason, message) when replicas cross zero


def decide(o: Observation) -> Decision:
    wanted = max(1, o.wanted)
    act = o.activator
    if act is None or not act.reachable:
        why = "no activator is configured (the operator's --activator-url)" if act is None else \
            f"the activator cannot be reached: {act.problem}"
        awake = o.awake_since if o.current > 0 else o.now
        event = ("Warning", "ActivatorUnavailable", f"scaled up from zero: {why}") if o.current == 0 else None
        return Decision(max(o.current, wanted), "ActivatorUnavailable", f"kept above zero: {why}", awake, event)
    if act.held > 0:
        if o.current == 0:
            msg = f"{act.held} requests held in the activator: scaling up from zero"
            return Decision(wanted, "Activating", msg, o.now, ("Normal", "ScaledFromZero", msg))
        reason = "Activating" if o.ready == 0 else "Active"
        return Decision(max(o.current, wanted), reason, f"{act.held} requests held, {o.ready} pods ready", o.awake_since)
    if o.current == 0:
        return Decision(0, "ScaledToZero", f"no inference request for {o.limits.idle_seconds} s: 0 replicas; the "
                        "activator holds the next requests", None)
    idle = o.limits.idle_seconds
    if o.requests is None:
        return Decision(wanted, "IdleUnknown", f"not scaling to zero: the request count is unknown "
                        f"({o.measure_problem or 'no measurement'})", o.awake_since)
    up_for = None if o.awake_since is None else o.now - o.awake_since
    if o.requests > 0 or (up_for is not None and up_for < idle):
        why = f"{o.requests:g} inference requests in the last {idle} s" if o.requests > 0 else \
            f"up for {up_for:.0f} s of the {idle} s idle window"
        return Decision(wanted, "Active", why, o.awake_since)
    msg = f"no inference request for {idle} s: scaling to zero"
    return Decision(0, "Idle", msg, None, ("Normal", "ScaledToZero", msg))


# -- the Service's endpoints --
def pod_endpoints(admin_slices: list[Obj]) -> list[PodEndpoint]:
    """The ready pods (one each) with their gRPC and HTTP ports, from the admin Service's slices."""
    out: dict[str, PodEndpoint] = {}
    for s in admin_slices:
        ports = {p.get("name"): p.get("port") for p in s.get("ports") or []}
        grpc, http = ports.get("grpc"), ports.get("http")
        if not isinstance(grpc, int) or not isinstance(http, int):
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False or not ep.get("addresses"):
                continue
            pod = str((ep.get("targetRef") or {}).get("name") or ep["addresses"][0])
            out.setdefault(pod, PodEndpoint(pod, str(ep["addresses"][0]), grpc, http))
    return [out[k] for k in sorted(out)]


def service_slices(owner: render.Owner, pods: list[PodEndpoint], activator: Activator | None) -> list[Obj]:
    """The Service's EndpointSlices: the ready pods (one slice per distinct port pair, as the
    EndpointSlice controller groups them), else the activator's ports; none when neither."""
    groups: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for p in pods:
        groups.setdefault((p.grpc_port, p.http_port), []).append((p.address, p.pod))
    if not groups and activator is not None and activator.reachable:
        groups[(activator.grpc_port, activator.http_port)] = [(activator.address, "")]
    return [_slice(owner, ports, members) for ports, members in sorted(groups.items())]


def _slice(owner: render.Owner, ports: tuple[int, int], members: list[tuple[str, str]]) -> Obj:
    digest = hashlib.sha256(json.dumps(ports).encode()).hexdigest()[:5]
    endpoints = []
    for address, pod in members:
        ep: Obj = {"addresses": [address], "conditions": {"ready": True, "serving": True, "terminating": False}}
        if pod:
            ep["targetRef"] = {"kind": "Pod", "namespace": owner.namespace, "name": pod}
        endpoints.append(ep)
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{owner.name}-md-{digest}", "namespace": owner.namespace,
                     "labels": {**render.common_labels(owner), SERVICE_NAME_LABEL: owner.name, MANAGED_BY_LABEL: MANAGED_BY},
                     "ownerReferences": [render.owner_reference(owner)]},
        "addressType": "IPv6" if ":" in members[0][0] else "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "grpc", "port": ports[0], "protocol": "TCP", "appProtocol": "grpc"},
                  {"name": "http", "port": ports[1], "protocol": "TCP", "appProtocol": "http"}],
    }


def ours(slice_: Obj) -> bool:
    return ((slice_.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def slice_in_sync(desired: Obj, live: Obj | None) -> bool:
    return live is not None and all(desired[k] == live.get(k) for k in ("addressType", "endpoints", "ports")) and \
        desired["metadata"]["labels"] == (live.get("metadata") or {}).get("labels")


# -- status --
def _rfc3339(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(t: Any) -> float | None:
    try:
        return dt.datetime.strptime(str(t), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


def _condition_time(pod: Obj, ctype: str) -> float | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return _parse(c.get("lastTransitionTime"))
    return None


def cold_start(act: Activator | None, pods: list[Obj], warmup_seconds: float | None = None) -> Obj | None:
    """The last cold start in parts that add up to its length: held -> the pod scheduled
    (PodScheduled) -> the model loaded -> warmed up (the warmup the server reports) -> released to
    the ready pod (the activator's own time, when the operator told it) -> the first answer. The pod
    is the first one ready after the request was held and before its answer (condition times have
    1 s resolution, so the scheduling part is capped by the release); without it, `loadedSeconds`
    covers scheduling too."""
    if act is None or act.held_at is None or act.answered_at is None:
        return None
    out: Obj = {"started": _rfc3339(act.held_at), "seconds": round(act.answered_at - act.held_at, 3)}
    if act.released_at is None:
        return out
    to_release = max(0.0, act.released_at - act.held_at)
    ready = sorted((t, i) for i, p in enumerate(pods)
                   if (t := _condition_time(p, "Ready")) is not None and act.held_at - 1 <= t <= act.answered_at + 1)
    scheduled_at = _condition_time(pods[ready[0][1]], "PodScheduled") if ready else None
    scheduled = 0.0 if scheduled_at is None else min(to_release, max(0.0, scheduled_at - act.held_at))
    warm = min(warmup_seconds or 0.0, to_release - scheduled)
    if scheduled_at is not None:
        out["scheduledSeconds"] = round(scheduled, 3)
    out["loadedSeconds"] = round(to_release - scheduled - warm, 3)
    out["warmedUpSeconds"] = round(warm, 3)
    out["firstAnswerSeconds"] = round(max(0.0, act.answered_at - act.released_at), 3)
    return out


def status_of(d: Decision, act: Activator | None, requests: float | None, cold: Obj | None,
              previous: Obj | None) -> Obj:
    before = (previous or {}).get("lastColdStart")
    if cold and isinstance(before, dict) and before.get("started") == cold.get("started"):
        cold = {**cold, **before}  # the parts found while its pod was there stay (the pod may be gone now)
    out: Obj = {"heldRequests": act.held if act is not None else None,
                "waitingSince": _rfc3339(act.waiting_since) if act is not None else None,
                "awakeSince": d.awake_since, "message": d.message,
                "lastColdStart": cold or before}
    if requests is not None:
        out["requestsInIdleWindow"] = requests
    return {k: v for k, v in out.items() if v is not None}


def condition(d: Decision, generation: int) -> Obj:
    return {"type": "ScaledToZero", "status": "True" if d.replicas == 0 else "False", "reason": d.reason,
            "message": d.message, "observedGeneration": generation}


def plan(spec: api.ModelDeploymentSpec, deployment: Obj | None, autoscaled: int | None, act: Activator | None,
         requests: float | None, measure_problem: str, previous: Obj | None, now: float) -> Decision | None:
    """The replicas with scale to zero (None: it is off)."""
    a = spec.autoscaling
    limits = a.to_zero if a is not None and a.mode == api.AutoscalingMode.operator else None
    if limits is None:
        return None
    dep = deployment or {}
    current = int((dep.get("spec") or {}).get("replicas", 1) if deployment is not None else 1)
    ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
    awake = (previous or {}).get("awakeSince")
    return decide(Observation(now, limits, current, ready, autoscaled or 1, act, requests,
                              float(awake) if isinstance(awake, int | float) else None, measure_problem))


def with_status(status: Obj, d: Decision, act: Activator | None, requests: float | None, cold: Obj | None,
                previous: Obj | None, generation: int, now: str) -> Obj:
    """`status` with status.scaleToZero and the ScaledToZero condition (its transition time kept
    while its status does not change)."""
    prev = previous or {}
    cond = condition(d, generation)
    old = next((c for c in prev.get("conditions") or [] if c.get("type") == "ScaledToZero"), None)
    cond["lastTransitionTime"] = old.get("lastTransitionTime", now) if old and old.get("status") == cond["status"] else now
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "ScaledToZero"] + [cond]
    return {**status, "conditions": conditions,
            "scaleToZero": status_of(d, act, requests, cold, prev.get("scaleToZero"))}
