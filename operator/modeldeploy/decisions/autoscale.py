"""Replicas from a metric, by the HorizontalPodAutoscaler's algorithm as Kubernetes implements it
(pkg/controller/podautoscaler), as pure functions of plain data.

One step (`decide`), every `autoscaling.interval`:

1. Bounds first: replicas outside `[minReplicas, maxReplicas]` are brought inside, metrics or not.
2. Missing data never scales: a metric that is absent, NaN (no traffic makes a latency quantile
   NaN: no traffic is not zero latency) or stale holds the current replicas, with the reason.
3. The raw recommendation: `ratio = value / target`; within the tolerance (|ratio - 1| <= 0.1)
   nothing changes; otherwise `ceil(ready * ratio)`. Pods not yet ready are not capacity: they
   count for nothing when scaling up and as exactly on target when scaling down (Kubernetes'
   treatment of unready pods), so a scale-up in progress is not repeated and not undone.
4. Stabilization: recommendations are kept for the longer window; a scale-up takes the lowest
   recommendation of the scale-up window (default 0 s: the newest), a scale-down the highest of
   the scale-down window (default 300 s), so one quiet interval never removes pods.
5. Rate limits, per direction, over the scale events of each policy's period: scale-up by
   default at most max(+100%, +4 pods) per 15 s, scale-down at most -100% per 15 s; with several
   policies the one allowing the largest change wins (selectPolicy Max).
6. Bounds again.

History (recommendations and scale events) is plain data the caller keeps (in status), so a
decision survives an operator restart.

`scale` joins the algorithm to the reconcile: with the operator's mode, the replicas to render and
`status.autoscaler` (the figures, the reason, and the history the stabilization windows and rate
limits need) from a measurement the controller took; with the HPA mode, what the
HorizontalPodAutoscaler reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import queries


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str  # "Percent" | "Pods"
    value: int
    period_seconds: int = 15


@dataclass(frozen=True, slots=True)
class Rules:
    stabilization_seconds: int
    policies: tuple[Policy, ...]


DEFAULT_UP = Rules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
DEFAULT_DOWN = Rules(300, (Policy("Percent", 100, 15),))


@dataclass(frozen=True, slots=True)
class Behavior:
    up: Rules = DEFAULT_UP
    down: Rules = DEFAULT_DOWN
    tolerance: float = 0.1


@dataclass(frozen=True, slots=True)
class Recommendation:
    at: float  # seconds (any monotonic clock the caller keeps: status uses Unix time)
    replicas: int


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    at: float
    change: int  # positive: pods added; negative: removed


@dataclass(frozen=True, slots=True)
class Observation:
    now: float
    current: int  # the Deployment's spec.replicas
    ready: int  # its ready pods
    value: float | None  # the metric (None: no data)
    target: float
    min_replicas: int
    max_replicas: int
    missing: str = ""  # why value is None or unusable (unreachable, empty, stale), for the reason
    behavior: Behavior = field(default_factory=Behavior)
    recommendations: tuple[Recommendation, ...] = ()
    events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str  # a short CamelCase word, as in a condition's reason
    message: str
    held: bool  # the metric was missing: nothing moved but the bounds
    recommendations: tuple[Recommendation, ...]
    events: tuple[ScaleEvent, ...]


def usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and not math.isinf(value)


def raw_recommendation(current: int, ready: int, ratio: float, tolerance: float) -> int:
    """Step 3: ceil(ready * ratio) outside the tolerance; unready pods count as 0 usage when
    scaling up and as on target when scaling down."""
    if abs(ratio - 1.0) <= tolerance:
        return current
    unready = max(0, current - ready)
    if ratio > 1.0:
        return max(current, math.ceil(ready * ratio)) if ready else current
    return math.ceil(ready * ratio + unready)


def stabilize(current: int, raw: int, now: float, history: Sequence[Recommendation], behavior: Behavior) -> int:
    """Step 4: the lowest recommendation of the scale-up window, the highest of the scale-down
    window (the raw one included), applied as Kubernetes' stabilizeRecommendationWithBehaviors."""
    up = down = raw
    for rec in history:
        if rec.at > now - behavior.up.stabilization_seconds:
            up = min(up, rec.replicas)
        if rec.at > now - behavior.down.stabilization_seconds:
            down = max(down, rec.replicas)
    out = current
    if out < up:
        out = up
    if out > down:
        out = down
    return out


def _changes(events: Sequence[ScaleEvent], now: float, period: int) -> tuple[int, int]:
    added = sum(e.change for e in events if e.change > 0 and e.at > now - period)
    removed = -sum(e.change for e in events if e.change < 0 and e.at > now - period)
    return added, removed


def up_limit(current: int, now: float, events: Sequence[ScaleEvent], rules: Rules) -> int:
    best = None
    for p in rules.policies:
        added, removed = _changes(events, now, p.period_seconds)
        start = current - added + removed
        proposed = start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100))
        best = proposed if best is None else max(best, proposed)
    return best if best is not None else current


def down_limit(current: int, now: float, events: Sequence[ScaleEvent], rules: Rules) -> int:
    best = None
    for p in rules.policies:
        added, removed = _changes(events, now, p.period_seconds)
        start = current + removed - added
        proposed = start - p.value if p.kind == "Pods" else int(start * (1 - p.value / 100))
        best = proposed if best is None else min(best, proposed)
    return best if best is not None else current


def decide(o: Observation) -> Decision:
    keep = max(o.behavior.up.stabilization_seconds, o.behavior.down.stabilization_seconds,
               *(p.period_seconds for p in (*o.behavior.up.policies, *o.behavior.down.policies)))
    history = tuple(r for r in o.recommendations if r.at > o.now - keep)
    events = tuple(e for e in o.events if e.at > o.now - keep)

    def out(desired: int, reason: str, message: str, held: bool = False,
            recs: tuple[Recommendation, ...] = history) -> Decision:
        evs = events + ((ScaleEvent(o.now, desired - o.current),) if desired != o.current else ())
        return Decision(desired, reason, message, held, recs, evs)

    if o.current > o.max_replicas:
        return out(o.max_replicas, "Bounds", f"{o.current} replicas is above maxReplicas {o.max_replicas}")
    if o.current < o.min_replicas:
        return out(o.min_replicas, "Bounds", f"{o.current} replicas is below minReplicas {o.min_replicas}")
    if not usable(o.value):
        why = o.missing or ("no data" if o.value is None else f"the metric is {o.value} (no traffic?)")
        return out(o.current, "MetricUnavailable", f"holding {o.current} replicas: {why}", held=True)
    if o.ready == 0:
        return out(o.current, "NoReadyPods", f"holding {o.current} replicas: no pod is ready to measure", held=True)
    value = float(o.value)  # type: ignore[arg-type]
    ratio = value / o.target
    raw = raw_recommendation(o.current, o.ready, ratio, o.behavior.tolerance)
    recs = history + (Recommendation(o.now, raw),)
    stable = stabilize(o.current, raw, o.now, history, o.behavior)
    desired = stable
    if desired > o.current:
        desired = min(desired, up_limit(o.current, o.now, events, o.behavior.up))
    elif desired < o.current:
        desired = max(desired, down_limit(o.current, o.now, events, o.behavior.down))
    desired = min(max(desired, o.min_replicas), o.max_replicas)
    cmp = f"{value:g} against a target of {o.target:g}"
    if desired > o.current:
        return out(desired, "ScaleUp", f"{o.current} -> {desired} replicas: {cmp}", recs=recs)
    if desired < o.current:
        return out(desired, "ScaleDown", f"{o.current} -> {desired} replicas: {cmp}", recs=recs)
    if raw == o.current:
        return out(desired, "WithinTolerance", f"{o.current} replicas: {cmp} (within {o.behavior.tolerance:g})",
                   recs=recs)
    if raw < o.current and stable == o.current:
        return out(desired, "ScaleDownStabilized",
                   f"{o.current} replicas: {cmp}; recommendations of the last "
                   f"{o.behavior.down.stabilization_seconds} s keep them", recs=recs)
    return out(desired, "Limited", f"{o.current} replicas: {cmp}; bounded by min/max or rate limits", recs=recs)


# ---- the spec and status, as this module's plain data ------------------------------------------


def behavior_of(spec: Any) -> Behavior:
    """spec.autoscaling (tolerance, behavior) as a Behavior; unset parts keep Kubernetes' defaults."""
    def rules(given: Any, default: Rules) -> Rules:
        if given is None:
            return default
        window = default.stabilization_seconds if given.stabilization_window_seconds is None else given.stabilization_window_seconds
        policies = default.policies if not given.policies else tuple(
            Policy(p.type, p.value, p.period_seconds) for p in given.policies)
        return Rules(window, policies)

    b = spec.behavior
    return Behavior(rules(b.scale_up if b else None, DEFAULT_UP), rules(b.scale_down if b else None, DEFAULT_DOWN),
                    spec.tolerance)


def history_of(status: dict[str, Any] | None) -> tuple[tuple[Recommendation, ...], tuple[ScaleEvent, ...]]:
    s = status or {}
    try:
        recs = tuple(Recommendation(float(r["at"]), int(r["replicas"])) for r in s.get("recommendations") or [])
        events = tuple(ScaleEvent(float(e["at"]), int(e["change"])) for e in s.get("scaleEvents") or [])
    except (KeyError, TypeError, ValueError):
        return (), ()
    return recs, events


def due(status: dict[str, Any] | None, now: float, interval: float) -> bool:
    """Whether an evaluation is due (every `interval` seconds; at once with no history)."""
    last = (status or {}).get("lastEvaluation")
    try:
        return last is None or now - float(last) >= interval - 0.5
    except (TypeError, ValueError):
        return True


def _rfc3339(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_of(d: Decision, o: Observation, metric: str, previous: dict[str, Any] | None) -> dict[str, Any]:
    """status.autoscaler after a decision (history kept for the windows, as plain data)."""
    prev = previous or {}
    scaled = d.desired != o.current
    out: dict[str, Any] = {
        "mode": "operator", "metric": metric, "target": o.target,
        "value": None if not usable(o.value) else round(float(o.value), 6),  # type: ignore[arg-type]
        "currentReplicas": o.current, "readyReplicas": o.ready, "desiredReplicas": d.desired,
        "reason": d.reason, "message": d.message, "lastEvaluation": o.now,
        "lastScaleTime": _rfc3339(o.now) if scaled else prev.get("lastScaleTime"),
        "recommendations": [{"at": r.at, "replicas": r.replicas} for r in d.recommendations],
        "scaleEvents": [{"at": e.at, "change": e.change} for e in d.events],
    }
    return {k: v for k, v in out.items() if v is not None}


# -- from the spec and the status to the algorithm and back --
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Measured:
    at: float  # Unix seconds
    value: float | None
    missing: str = ""


def query_for(a: api.Autoscaling, namespace: str, name: str) -> str:
    window = f"{a.window_seconds}s"
    metric = api.Metric(a.metric)
    if metric in (api.Metric.latency_p50, api.Metric.latency_p95, api.Metric.latency_p99):
        return queries.latency_ms(namespace, name, queries.QUANTILES[metric.value], window)
    if metric == api.Metric.rps:
        return queries.requests_per_second(namespace, name, window)
    return queries.in_flight_per_pod(namespace, name)


def stale_after(a: api.Autoscaling) -> float:
    return max(30.0, 2.0 * a.interval_seconds)


def summary(metric: str, value: Any, target: float) -> str:
    shown = "?" if value is None else f"{float(value):.3g}"
    return f"{metric} {shown}/{target:g}"


@dataclass(frozen=True, slots=True)
class Scaling:
    replicas: int | None  # what the Deployment gets (None: the HPA owns replicas)
    status: Obj | None  # status.autoscaler
    events: tuple[tuple[str, str, str], ...] = ()


def scale(spec: api.ModelDeploymentSpec, deployment: Obj | None, hpa: Obj | None, previous: Obj | None,
           measured: Measured | None) -> Scaling:
    a = spec.autoscaling
    if a is None:
        return Scaling(spec.replicas, None)
    if a.mode == api.AutoscalingMode.hpa:
        return Scaling(None, hpa_status(a, hpa))
    prev = previous or {}
    dep_spec = (deployment or {}).get("spec") or {}
    floor = max(1, a.min_replicas)  # minReplicas 0: the algorithm keeps 1; scaling to zero is scaletozero.decide's
    current = int(prev.get("desiredReplicas") or dep_spec.get("replicas") or floor)
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if measured is None:  # not due: keep the last decision (a hand edit of the replicas is undone)
        kept = min(max(current, floor), a.max_replicas)
        return Scaling(kept, prev or None)
    recs, evs = history_of(prev)
    obs = Observation(measured.at, current, ready, measured.value, a.target, floor,
                                a.max_replicas, measured.missing, behavior_of(a), recs, evs)
    d = decide(obs)
    status = {**status_of(d, obs, a.metric, prev), "summary": summary(a.metric, obs.value if
                                                                              usable(obs.value) else None, a.target)}
    events: list[tuple[str, str, str]] = []
    if d.desired > current:
        events.append(("Normal", "ScaledUp", d.message))
    elif d.desired < current:
        events.append(("Normal", "ScaledDown", d.message))
    elif d.held and prev.get("reason") != d.reason:
        events.append(("Warning", d.reason, d.message))
    return Scaling(d.desired, status, tuple(events))


def hpa_status(a: api.Autoscaling, hpa: Obj | None) -> Obj:
    st = (hpa or {}).get("status") or {}
    value = None
    for m in st.get("currentMetrics") or []:
        cur = (m.get("external") or {}).get("current") or {}
        raw = cur.get("value") if "value" in cur else cur.get("averageValue")
        value = _quantity(raw)
    out = {"mode": "hpa", "metric": a.metric, "target": a.target, "value": value,
           "currentReplicas": st.get("currentReplicas"), "desiredReplicas": st.get("desiredReplicas"),
           "lastScaleTime": st.get("lastScaleTime"), "summary": summary(a.metric, value, a.target)}
    return {k: v for k, v in out.items() if v is not None}


def _quantity(raw: Any) -> float | None:
    """A Kubernetes quantity as the HPA reports metric values ("142", "1500m")."""
    if raw is None:
        return None
    text = str(raw)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def external_metric_name(metric: str) -> str:
    """The External metric the chart's prometheus-adapter rules serve for a spec metric."""
    return {"latencyP50Ms": "modeldeploy_latency_p50_ms", "latencyP95Ms": "modeldeploy_latency_p95_ms",
            "latencyP99Ms": "modeldeploy_latency_p99_ms", "requestsPerSecond": "modeldeploy_requests_per_second",
            "inFlightRequests": "modeldeploy_in_flight_requests"}[metric]


def next_evaluation(spec: api.ModelDeploymentSpec) -> float | None:
    """Seconds to the operator's next autoscaling evaluation (None: the operator does not autoscale)."""
    a = spec.autoscaling
    return float(a.interval_seconds) if a is not None and a.mode == api.AutoscalingMode.operator else None
