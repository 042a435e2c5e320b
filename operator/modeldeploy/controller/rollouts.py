"""Progressive rollouts between the state machine (rollout.py) and the reconcile.

- `measure` (I/O): the new and the old version's requests, error ratio and p99 over the check's
  window, from Prometheus, on model-server's per-version series of this ModelDeployment's pods;
- `step` (pure): from the spec, the previous status, the pods' reports and a measurement, the
  rollout's new state, the labels and weights to route by while it runs, and its Events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import queries as promql
from modeldeploy.decisions import rollout, traffic

Obj = dict[str, Any]
COMMAND_ANNOTATION = api.ROLLOUT_COMMAND_ANNOTATION
MIN_WINDOW_SECONDS = 10  # a rate over fewer seconds than a few scrape intervals is noise, or nothing


def plan_of(r: api.Rollout) -> rollout.Plan:
    a = r.analysis
    interval = a.interval_seconds or min(r.step_seconds, 60)
    return rollout.Plan(tuple(r.steps), r.step_seconds, interval, a.max_error_rate, a.max_latency_ratio,
                        a.min_requests, a.failure_threshold, a.max_latency_ms, window_seconds=MIN_WINDOW_SECONDS)


@dataclass(frozen=True, slots=True)
class Measured:
    new: rollout.VersionMetrics
    old: rollout.VersionMetrics


def measure(r: api.Rollout, default_url: str, namespace: str, name: str, from_v: int, to_v: int,
            window_s: int) -> Measured:
    url = r.prometheus.url if r.prometheus else default_url
    window = f"{window_s}s"

    def value(q: str) -> float | None:
        if not url:
            return None
        v = promql.instant(url, q).value
        return None if v is None or math.isnan(v) else v

    def of(version: int) -> rollout.VersionMetrics:
        sel = promql.selector(namespace, name, api=promql.INFERENCE_APIS, version=str(version))
        return rollout.VersionMetrics(
            requests=value(f"sum(increase(modelserver_requests_total{sel}[{window}]))"),
            # any answer but OK counts against the new version: one that refuses what the old one
            # answers (an INVALID_ARGUMENT) is failing its users too
            error_rate=value(promql.error_ratio(namespace, name, window, codes="!OK", version=str(version))),
            p99_ms=value(promql.latency_ms(namespace, name, 0.99, window, version=str(version))))

    return Measured(of(to_v), of(from_v))


@dataclass(frozen=True, slots=True)
class Step:
    state: rollout.State | None  # None: no rollout (status.rollout cleared)
    override: tuple[Mapping[str, int], Mapping[str, int]] | None  # labels, weights to route by
    events: tuple[tuple[str, str, str], ...] = ()
    unload: frozenset[int] = frozenset()  # a rolled-back version: unloaded though the spec lists it


def command_of(body: Obj) -> str:
    return str(((body.get("metadata") or {}).get("annotations") or {}).get(COMMAND_ANNOTATION) or "")


def command_for(body: Obj, previous: Obj, generation: int) -> str:
    """The promote/abort verb to act on now: the annotation's `<verb>@<generation>`, when it was
    given for this rollout's spec generation and not acted on yet (a command left from an earlier
    rollout never acts on a later one)."""
    command = command_of(body)
    verb, _, gen = command.partition("@")
    if not command or command == ((previous.get("rollout") or {}).get("command")) or gen != str(generation):
        return ""
    return verb


def in_force_stable(previous: Obj) -> int | None:
    labels = ((previous.get("routing") or {}).get("labels")) or {}
    return int(labels["stable"]) if "stable" in labels else None


def promoted_everywhere(previous: Obj, to_version: int) -> bool:
    r = previous.get("routing") or {}
    return ((r.get("labels") or {}).get("stable") == to_version and (r.get("weights") or {}) in ({}, {"stable": 100})
            and r.get("livePods") == r.get("readyPods") and not r.get("waiting"))


def split_live(previous: Obj, state: rollout.State) -> bool:
    """The state's split is the table in force, live on every ready pod (pushed; with ConfigMap
    delivery the operator cannot tell, and takes the table as live)."""
    r = previous.get("routing") or {}
    labels, weights = rollout.split(state)
    if (r.get("weights") or {}) != weights or any((r.get("labels") or {}).get(k) != v for k, v in labels.items()):
        return False
    return r.get("delivery") != "Push" or (r.get("livePods") == r.get("readyPods") and not r.get("waiting"))


def candidate(pods: Sequence[traffic.PodReport] | None, version: int) -> tuple[bool, str]:
    """(AVAILABLE on every ready pod that answered, and there is one; the first load error)."""
    answered = [p for p in pods or () if not p.unreachable]
    failed = next((f"{p.pod}: {p.errors[version]}" for p in answered if p.errors.get(version)), "")
    ready = bool(answered) and all(p.versions.get(version) == "AVAILABLE" for p in answered)
    return ready, failed


def step(spec: api.ModelDeploymentSpec, body: Obj, pods: Sequence[traffic.PodReport] | None,
         measured: Measured | None, now: float) -> Step:
    r = spec.rollout
    previous = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 1)
    target = (spec.version_labels or {}).get("stable")
    state = rollout.State.from_status(previous.get("rollout"))
    if r is None or target is None:
        return Step(None, None)
    plan = plan_of(r)
    events: tuple[tuple[str, str, str], ...] = ()
    current = in_force_stable(previous)
    if state is not None and state.to_version == target:
        if state.generation != generation and state.phase in (rollout.PROGRESSING, rollout.FAILED):
            # a new spec change restarts the analysis; after a rollback it is a retry (as in Flagger)
            out = rollout.start(state.from_version, target, generation, now)
            state, events = out.state, out.events
    elif current is not None and current != target:
        out = rollout.start(current, target, generation, now)
        state, events = out.state, out.events
    else:
        return Step(None, None)  # nothing to roll out (first deployment, or the stable version is in force)
    verb = command_for(body, previous, state.generation)
    ready, failed = candidate(pods, state.to_version)
    check = None
    if measured is not None and rollout.check_due(plan, state, now):
        check = rollout.evaluate(plan, measured.new, measured.old, state.baseline_p99_ms)
    out = rollout.advance(plan, state, now, candidate_ready=ready, candidate_failed=failed,
                          promoted_everywhere=promoted_everywhere(previous, state.to_version), check=check, command=verb,
                          step_live=state.step < 0 or split_live(previous, state))
    if verb and out.state.phase != state.phase:
        events += (("Normal", "RolloutCommand", f"{verb} by the user: {out.state.message}"),)
    new_state = out.state
    keep = {k: v for k, v in (spec.version_labels or {}).items() if k not in ("stable", rollout.CANDIDATE_LABEL)}
    override = None if new_state.phase == rollout.SUCCEEDED else ({**keep, **out.labels}, out.weights)
    unload = frozenset({new_state.to_version}) if new_state.phase == rollout.FAILED else frozenset()
    return Step(new_state, override, events + out.events, unload)


def status_of(state: rollout.State | None, body: Obj) -> Obj | None:
    if state is None:
        return None
    out = state.as_status()
    command = command_of(body)
    if command:
        out["command"] = command  # acted on once
    return out
