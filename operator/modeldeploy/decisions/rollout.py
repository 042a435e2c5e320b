"""Progressive rollout of a new stable version, as a pure state machine.

With `spec.rollout`, moving `versionLabels.stable` to a new version is not applied at once. The
operator loads the new version beside the old one, then shifts the unlabelled traffic to it
through `rollout.steps` (weights), holding each step `stepSeconds` and checking it every
`analysis.intervalSeconds` from Prometheus, and promotes it or rolls it back by itself. The spec
is the desired end state and is never edited; progress lives in `status.rollout` (this module's
`State`), so a rollout survives an operator restart.

While it runs, the routing table (routing.py in the server) sends `100 - weight` % to the old
version under the `stable` label and `weight` % to the new one under the label `candidate`
(requests may name either label to reach one version). The phases:

- `Progressing`: waiting for the new version to be AVAILABLE on every ready pod (weight 0), then
  stepping. Each check compares the two versions over the same window (judgement.py): latency
  by a rank test with a ratio and a margin, errors by exact tests against maxErrorRate and the
  old version, each Pass, High, Low or Inconclusive. A check with a High verdict fails; failed
  checks accumulate over the rollout, and at failureThreshold it is rolled back. A check with too
  few answers (no traffic, Prometheus unreachable) is Inconclusive: the step waits, and after
  `inconclusiveSeconds` it is rolled back (reason Inconclusive). A step advances once held for
  stepSeconds with its last check passed.
- `Promoting`: every step passed (or `modeldeploy promote`): the stable label moves to the new
  version with all the traffic; once that is live on every pod, `Succeeded`.
- `Succeeded`: the old version is unloaded unless another label or model.versions keeps it.
- `Failed`: rolled back (failed checks, a version that did not load, or `modeldeploy abort`):
  all traffic on the old version, the new one unloaded, until the spec changes again.

`step` joins the machine to the reconcile: from the spec, the previous status, the pods' reports
and a measurement (taken by the controller from Prometheus), the rollout's new state, the labels
and weights to route by while it runs, and its Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from modelserver import contract

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import judgement
from modeldeploy.decisions.records import PodReport

CANDIDATE_LABEL = "candidate"
LATENCY_BOUNDS = contract.LATENCY_BUCKETS_SECONDS  # the server's per-version latency histogram
DIFF_BOUNDS, RATIO_BOUNDS = contract.SHADOW_DIFF_BUCKETS, contract.SHADOW_RATIO_BUCKETS  # the shadow's histograms
PROGRESSING, PROMOTING, SUCCEEDED, FAILED = "Progressing", "Promoting", "Succeeded", "Failed"


@dataclass(frozen=True, slots=True)
class Plan:
    """spec.rollout, as plain data."""

    steps: tuple[int, ...]
    step_seconds: int
    interval_seconds: int
    max_error_rate: float
    max_latency_ratio: float
    min_requests: int
    failure_threshold: int = 2
    max_latency_ms: float | None = None
    window_seconds: int = 0  # each check's window (0: interval_seconds)
    min_latency_delta_ms: float = 1.0
    confidence: float = 0.99
    inconclusive_seconds: int | None = 600  # a step Inconclusive this long is rolled back (None: wait)
    shadow_percent: float = 0.0  # of the stable version's requests mirrored before the first step (0: none)
    shadow_seconds: int = 0
    max_divergence: float | None = None
    min_top1_agreement: float | None = None

    @property
    def window(self) -> int:
        return max(self.window_seconds, self.interval_seconds)


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """One version over the check's window (None: no data): its inference answers, those that were
    not OK, and its OK answers' latencies as per-bucket counts over `LATENCY_BOUNDS` (seconds)."""

    requests: float | None
    errors: float | None
    latency: tuple[float, ...] | None = None
    problem: str = ""  # why there is no data: no Prometheus URL, Prometheus unreachable or in error


@dataclass(frozen=True, slots=True)
class ShadowMetrics:
    """What the pods' shadow runs observed over the check's window (None: no data)."""

    results: dict[str, float]  # compared | mismatched | failed | dropped -> mirrored requests
    ratios: tuple[float, ...] | None = None  # per-bucket counts over RATIO_BOUNDS
    diffs: tuple[float, ...] | None = None  # per-bucket counts over DIFF_BOUNDS
    agree: float | None = None  # rows of [rows, classes] outputs
    disagree: float | None = None
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Measured:
    new: VersionMetrics
    old: VersionMetrics  # in the same window
    shadow: ShadowMetrics | None = None  # while the rollout shadows


@dataclass(frozen=True, slots=True)
class Check:
    passed: bool | None  # None: inconclusive (too few answers to judge)
    failures: tuple[str, ...]  # what failed, with the numbers
    verdicts: dict[str, dict[str, Any]]  # metric -> its verdict (judgement.Verdict.as_status)


@dataclass(frozen=True, slots=True)
class State:
    phase: str
    from_version: int
    to_version: int
    generation: int  # the spec generation this rollout belongs to
    step: int = -1  # index into steps; -1: loading the new version
    weight: int = 0
    step_started: float = 0.0
    last_check: float = 0.0
    failed_checks: int = 0
    message: str = ""
    analysis: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it failed: RolledBack, Aborted, LoadFailed, Inconclusive
    shadow_started: float | None = None  # when the new version began to get mirrored requests

    @property
    def shadowing(self) -> bool:
        return self.phase == PROGRESSING and self.step < 0 and self.shadow_started is not None

    def as_status(self) -> dict[str, Any]:
        d = asdict(self)
        return {"phase": d["phase"], "fromVersion": d["from_version"], "toVersion": d["to_version"],
                "generation": d["generation"], "step": d["step"], "weight": d["weight"],
                "stepStarted": d["step_started"], "lastCheck": d["last_check"],
                "failedChecks": d["failed_checks"], "message": d["message"], "analysis": d["analysis"],
                **({"reason": d["reason"]} if d["reason"] else {}),
                **({"shadowStarted": d["shadow_started"]} if d["shadow_started"] is not None else {})}

    @staticmethod
    def from_status(s: dict[str, Any] | None) -> State | None:
        if not s or "phase" not in s:
            return None
        try:
            return State(str(s["phase"]), int(s["fromVersion"]), int(s["toVersion"]), int(s.get("generation", 0)),
                         int(s.get("step", -1)), int(s.get("weight", 0)), float(s.get("stepStarted", 0)),
                         float(s.get("lastCheck", 0)), int(s.get("failedChecks", 0)), str(s.get("message", "")),
                         dict(s.get("analysis") or {}),
                         str(s.get("reason") or ""),
                         None if s.get("shadowStarted") is None else float(s["shadowStarted"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class Outcome:
    state: State
    labels: dict[str, int]  # where the labels the rollout controls point (stable, candidate)
    weights: dict[str, int]  # the unlabelled traffic split
    events: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message)


def evaluate(plan: Plan, new: VersionMetrics, old: VersionMetrics, alone: bool = False) -> Check:
    """One analysis: each metric's verdict (judgement), the check failing when any is High and
    inconclusive when none is High and one is Inconclusive. `alone`: the new version answers every
    request at this step (100%), so there is no other version in the same window to compare with:
    latency is judged by `maxLatencyMs` alone and errors by `maxErrorRate` alone. (A window of the
    old version from before would be a comparison across time: on a shared node its tail moved by
    2x between windows, rolling healthy versions back.)"""
    if alone:
        latency = (judgement.Verdict(judgement.PASS, "none", "not compared: the new version answers every request "
                                     "at this step (maxLatencyMs, when set, still applies)")
                   if (new.requests or 0) >= plan.min_requests else
                   judgement.Verdict(judgement.INCONCLUSIVE, "none", f"too few answers: {new.requests or 0:g} "
                                     f"(minRequests {plan.min_requests})"))
        old = VersionMetrics(None, None, None, old.problem)
    else:
        latency = judgement.judge_latency(new.latency, old.latency, LATENCY_BOUNDS, max_ratio=plan.max_latency_ratio,
                                          min_delta_ms=plan.min_latency_delta_ms, confidence=plan.confidence,
                                          min_requests=plan.min_requests)
    verdicts = {
        "latency": latency,
        "errors": judgement.judge_errors(new.errors, new.requests, old.errors, old.requests,
                                         max_rate=plan.max_error_rate, confidence=plan.confidence,
                                         min_requests=plan.min_requests),
    }
    if plan.max_latency_ms is not None:
        verdicts["latencyBound"] = judgement.judge_latency_bound(new.latency, LATENCY_BOUNDS,
                                                                 max_p99_ms=plan.max_latency_ms,
                                                                 confidence=plan.confidence,
                                                                 min_requests=plan.min_requests)
    problem = new.problem or old.problem
    if problem:  # not a judgement of the version: say where the data should have come from
        verdicts = {name: judgement.Verdict(judgement.INCONCLUSIVE, v.test, problem) for name, v in verdicts.items()}
    failures = tuple(f"{name}: {v.reason}" for name, v in verdicts.items() if v.failed)
    inconclusive = any(v.result == judgement.INCONCLUSIVE for v in verdicts.values())
    passed = False if failures else (None if inconclusive else True)
    return Check(passed, failures, {name: v.as_status() for name, v in verdicts.items()})


def evaluate_shadow(plan: Plan, m: ShadowMetrics | None) -> Check:
    """A check while the rollout shadows: the new version judged on the stable version's requests,
    mirrored to it: its time on the same inputs, its output divergence and top-1 agreement (when
    bounded), and its failures on them (by maxErrorRate)."""
    if m is None or m.problem:
        why = (m.problem if m is not None else "") or "no shadow data"
        return Check(None, (), {"shadow": judgement.Verdict(judgement.INCONCLUSIVE, "", why).as_status()})
    compared = m.results.get("compared", 0.0) + m.results.get("mismatched", 0.0)
    verdicts = {
        "pairedLatency": judgement.judge_paired_latency(m.ratios, RATIO_BOUNDS, max_ratio=plan.max_latency_ratio,
                                                        confidence=plan.confidence, min_requests=plan.min_requests),
        "shadowErrors": judgement.judge_errors(m.results.get("failed", 0.0) + m.results.get("mismatched", 0.0),
                                               compared + m.results.get("failed", 0.0), None, None,
                                               max_rate=plan.max_error_rate, confidence=plan.confidence,
                                               min_requests=plan.min_requests),
    }
    if plan.max_divergence is not None:
        verdicts["divergence"] = judgement.judge_divergence(m.diffs, DIFF_BOUNDS, max_divergence=plan.max_divergence,
                                                            confidence=plan.confidence, min_requests=plan.min_requests)
    if plan.min_top1_agreement is not None and not (m.agree or m.disagree) and compared >= plan.min_requests:
        verdicts["top1Agreement"] = judgement.Verdict(judgement.PASS, "none", "not applicable: the model's outputs "
                                                      "have no [rows, classes] tensor")
    elif plan.min_top1_agreement is not None:
        verdicts["top1Agreement"] = judgement.judge_agreement(m.agree, m.disagree, min_agreement=plan.min_top1_agreement,
                                                              confidence=plan.confidence, min_requests=plan.min_requests)
    failures = tuple(f"{name}: {v.reason}" for name, v in verdicts.items() if v.failed)
    inconclusive = any(v.result == judgement.INCONCLUSIVE for v in verdicts.values())
    return Check(False if failures else (None if inconclusive else True), failures,
                 {name: v.as_status() for name, v in verdicts.items()})


def _result(check: Check) -> str:
    return "Failed" if check.passed is False else "Inconclusive" if check.passed is None else "Passed"


def _why_inconclusive(check: Check) -> str:
    return "; ".join(f"{k}: {v['reason']}" for k, v in check.verdicts.items() if v["result"] == judgement.INCONCLUSIVE)


def split(state: State) -> tuple[dict[str, int], dict[str, int]]:
    """Labels and weights for a state: during Progressing both versions; afterwards one."""
    if state.phase == PROGRESSING:
        labels = {"stable": state.from_version, CANDIDATE_LABEL: state.to_version}
        weights = {"stable": 100 - state.weight, CANDIDATE_LABEL: state.weight}
        return labels, {k: w for k, w in weights.items() if w > 0}
    if state.phase in (PROMOTING, SUCCEEDED):
        return {"stable": state.to_version}, {"stable": 100}
    return {"stable": state.from_version}, {"stable": 100}


def _out(state: State, *events: tuple[str, str, str]) -> Outcome:
    labels, weights = split(state)
    return Outcome(state, labels, weights, tuple(events))


def start(from_version: int, to_version: int, generation: int, now: float) -> Outcome:
    s = State(PROGRESSING, from_version, to_version, generation, step_started=now,
              message=f"loading version {to_version} beside {from_version}")
    return _out(s, ("Normal", "RolloutStarted", f"rolling out version {to_version} (from {from_version})"))


def advance(plan: Plan, s: State, now: float, *, candidate_ready: bool, candidate_failed: str = "",
            promoted_everywhere: bool = False, check: Check | None = None, command: str = "",
            step_live: bool = True) -> Outcome:
    """One step of the state machine. `check` is the analysis of this interval when one is due
    (`check_due`); `command` is "promote" or "abort" from the user (modeldeploy promote/abort).
    `step_live`: the current step's split is in force on every ready pod; until it is, the step's
    clock does not run and no check is judged (it would measure the previous split's traffic)."""
    if s.phase in (SUCCEEDED, FAILED):
        return _out(s)
    if command == "abort" and s.phase == PROGRESSING:
        return _rollback(s, now, "Aborted", f"rollout of version {s.to_version} aborted by the user")
    if s.phase == PROMOTING:
        if promoted_everywhere:
            return _out(replace(s, phase=SUCCEEDED, weight=100, message=f"version {s.to_version} is stable"),
                        ("Normal", "RolloutSucceeded", f"version {s.to_version} promoted to stable"))
        return _out(s)
    if candidate_failed:
        return _rollback(s, now, "LoadFailed", f"version {s.to_version} did not load: {candidate_failed}")
    if command == "promote":
        return _promote(s, now, "promoted by the user: remaining steps skipped")
    if s.step < 0:
        return _before_steps(plan, s, now, candidate_ready, check)
    if not step_live:
        return _out(replace(s, step_started=now, last_check=now,
                            message=f"{_where(plan, s)}, waiting for the split to be live on every pod"))
    judged = _judge(plan, s, now, check)
    if isinstance(judged, Outcome):
        return judged
    s = judged
    if now - s.step_started < plan.step_seconds:
        return _out(replace(s, message=f"{_where(plan, s)}, checks passing"))
    if s.step + 1 >= len(plan.steps) or plan.steps[s.step] >= 100:
        return _promote(s, now, f"all {len(plan.steps)} steps passed")
    return _first_step(plan, s, now, s.step + 1)


def _where(plan: Plan, s: State) -> str:
    if s.shadowing:
        return f"shadowing {plan.shadow_percent:g}% of version {s.from_version}'s requests to version {s.to_version}"
    return f"step {s.step + 1}/{len(plan.steps)}: {s.weight}% to version {s.to_version}"


def _first_step(plan: Plan, s: State, now: float, index: int = 0) -> Outcome:
    nxt = replace(s, step=index, weight=plan.steps[index], step_started=now, last_check=now,
                  message=f"step {index + 1}/{len(plan.steps)}: {plan.steps[index]}% to version {s.to_version}")
    return _out(nxt, ("Normal", "RolloutStep", nxt.message))


def _before_steps(plan: Plan, s: State, now: float, candidate_ready: bool, check: Check | None) -> Outcome:
    """Loading the new version, then (with a shadow) judging it on mirrored requests that no user
    sees answered: for `shadow_seconds`, its checks passing, before the first step."""
    if not candidate_ready:
        return _out(s)
    if plan.shadow_percent <= 0:
        return _first_step(plan, s, now)
    if not s.shadowing:
        sh = replace(s, shadow_started=now, step_started=now, last_check=now)
        sh = replace(sh, message=f"{_where(plan, sh)} (answers compared and discarded)")
        return _out(sh, ("Normal", "RolloutShadow", sh.message))
    judged = _judge(plan, s, now, check)
    if isinstance(judged, Outcome):
        return judged
    if now - (judged.shadow_started or 0.0) < plan.shadow_seconds:
        return _out(replace(judged, message=f"{_where(plan, judged)}, checks passing"))
    return _first_step(plan, judged, now)


def _judge(plan: Plan, s: State, now: float, check: Check | None) -> Outcome | State:
    """A check's effect: an Outcome that ends this call (no check due, waiting for data, a failed
    check, a rollback), or the state to go on with (the check passed)."""
    if check is None:
        return _out(s)
    s = replace(s, last_check=now, analysis={"result": _result(check), "failures": list(check.failures),
                                             "metrics": check.verdicts})
    if check.passed is None:
        waited = now - s.step_started
        if plan.inconclusive_seconds is not None and waited >= plan.inconclusive_seconds:
            return _rollback(s, now, "Inconclusive", f"version {s.to_version} rolled back: its checks stayed "
                             f"inconclusive for {waited:.0f} s ({_why_inconclusive(check)})")
        return _out(replace(s, message=f"{_where(plan, s)}, waiting for data: {_why_inconclusive(check)}"))
    if not check.passed:
        failed = s.failed_checks + 1
        s = replace(s, failed_checks=failed, message=f"check failed ({failed}/{plan.failure_threshold}): "
                    + "; ".join(check.failures))
        if failed >= plan.failure_threshold:
            return _rollback(s, now, "RolledBack", f"version {s.to_version} rolled back after {failed} failed "
                             f"checks: {'; '.join(check.failures)}")
        return _out(s, ("Warning", "RolloutCheckFailed", s.message))
    return s


def check_due(plan: Plan, s: State, now: float) -> bool:
    """Every interval, and the first time once a whole window has passed since the step's split went
    live: an earlier window would mix in the previous step's traffic, and the new version's series,
    which start with its first request, would have too few samples to give a rate."""
    return (s.phase == PROGRESSING and (s.step >= 0 or s.shadowing) and now - s.last_check >= plan.interval_seconds
            and now - s.step_started >= plan.window)


def seconds_to_next_check(plan: Plan, s: State, now: float) -> float | None:
    """When the next check falls due (0: now); None when no check is pending (not stepping)."""
    if s.phase != PROGRESSING or (s.step < 0 and not s.shadowing):
        return None
    return max(0.0, s.last_check + plan.interval_seconds - now, s.step_started + plan.window - now)


def _promote(s: State, now: float, why: str) -> Outcome:
    s = replace(s, phase=PROMOTING, weight=100, message=f"promoting version {s.to_version}: {why}")
    return _out(s, ("Normal", "RolloutPromoting", s.message))


def _rollback(s: State, now: float, reason: str, message: str) -> Outcome:
    s = replace(s, phase=FAILED, weight=0, message=message, reason=reason)
    return _out(s, ("Warning", reason, message))


# -- from the spec and the status to the machine and back --
Obj = dict[str, Any]
COMMAND_ANNOTATION = api.ROLLOUT_COMMAND_ANNOTATION
MIN_WINDOW_SECONDS = 10  # a rate over fewer seconds than a few scrape intervals is noise, or nothing


def plan_of(r: api.Rollout) -> Plan:
    a = r.analysis
    interval = a.interval_seconds or min(r.step_seconds, 60)
    return Plan(tuple(r.steps), r.step_seconds, interval, a.max_error_rate, a.max_latency_ratio, a.min_requests,
                a.failure_threshold, a.max_latency_ms, window_seconds=MIN_WINDOW_SECONDS,
                min_latency_delta_ms=a.min_latency_delta_ms, confidence=a.confidence,
                inconclusive_seconds=a.inconclusive_seconds,
                shadow_percent=r.shadow.percent if r.shadow else 0.0,
                shadow_seconds=(r.shadow.seconds or r.step_seconds) if r.shadow else 0,
                max_divergence=a.max_divergence, min_top1_agreement=a.min_top1_agreement)


@dataclass(frozen=True, slots=True)
class Step:
    state: State | None  # None: no rollout (status.rollout cleared)
    override: tuple[Mapping[str, int], Mapping[str, int], Mapping[str, Any] | None] | None  # labels, weights, shadow
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


def split_live(previous: Obj, state: State) -> bool:
    """The state's split is the table in force, live on every ready pod (pushed; with ConfigMap
    delivery the operator cannot tell, and takes the table as live)."""
    r = previous.get("routing") or {}
    labels, weights = split(state)
    if (r.get("weights") or {}) != weights or any((r.get("labels") or {}).get(k) != v for k, v in labels.items()):
        return False
    return r.get("delivery") != "Push" or (r.get("livePods") == r.get("readyPods") and not r.get("waiting"))


def candidate(pods: Sequence[PodReport] | None, version: int) -> tuple[bool, str]:
    """(AVAILABLE on every ready pod that answered, and there is one; the first load error)."""
    answered = [p for p in pods or () if not p.unreachable]
    failed = next((f"{p.pod}: {p.errors[version]}" for p in answered if p.errors.get(version)), "")
    ready = bool(answered) and all(p.versions.get(version) == "AVAILABLE" for p in answered)
    return ready, failed


def step(spec: api.ModelDeploymentSpec, body: Obj, pods: Sequence[PodReport] | None,
         measured: Measured | None, now: float) -> Step:
    r = spec.rollout
    previous = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 1)
    target = (spec.version_labels or {}).get("stable")
    state = State.from_status(previous.get("rollout"))
    if r is None or target is None:
        return Step(None, None)
    plan = plan_of(r)
    events: tuple[tuple[str, str, str], ...] = ()
    current = in_force_stable(previous)
    if state is not None and state.to_version == target:
        if state.generation != generation and state.phase in (PROGRESSING, FAILED):
            # a new spec change restarts the analysis; after a rollback it is a retry (as in Flagger)
            out = start(state.from_version, target, generation, now)
            state, events = out.state, out.events
    elif current is not None and current != target:
        out = start(current, target, generation, now)
        state, events = out.state, out.events
    else:
        return Step(None, None)  # nothing to roll out (first deployment, or the stable version is in force)
    verb = command_for(body, previous, state.generation)
    ready, failed = candidate(pods, state.to_version)
    check = None
    if measured is not None and check_due(plan, state, now):
        check = (evaluate_shadow(plan, measured.shadow) if state.shadowing else
                 evaluate(plan, measured.new, measured.old, alone=state.weight >= 100))
    out = advance(plan, state, now, candidate_ready=ready, candidate_failed=failed,
                          promoted_everywhere=promoted_everywhere(previous, state.to_version), check=check, command=verb,
                          step_live=state.step < 0 or split_live(previous, state))
    if verb and out.state.phase != state.phase:
        events += (("Normal", "RolloutCommand", f"{verb} by the user: {out.state.message}"),)
    new_state = out.state
    keep = {k: v for k, v in (spec.version_labels or {}).items() if k not in ("stable", CANDIDATE_LABEL)}
    shadow = ({"label": CANDIDATE_LABEL, "percent": plan.shadow_percent, "source": "stable"}
              if new_state.shadowing else None)
    override = None if new_state.phase == SUCCEEDED else ({**keep, **out.labels}, out.weights, shadow)
    unload = frozenset({new_state.to_version}) if new_state.phase == FAILED else frozenset()
    return Step(new_state, override, events + out.events, unload)


def status_of(state: State | None, body: Obj) -> Obj | None:
    if state is None:
        return None
    out = state.as_status()
    command = command_of(body)
    if command:
        out["command"] = command  # acted on once
    return out


def next_look(spec: api.ModelDeploymentSpec, status: Obj, now: float, recheck: float) -> float | None:
    """Seconds to a rollout's next check (never sooner than `recheck`); `recheck` while it loads the
    new version or promotes; None without a rollout in progress."""
    state = State.from_status(status.get("rollout"))
    if spec.rollout is None or state is None:
        return None
    due = seconds_to_next_check(plan_of(spec.rollout), state, now)
    if due is not None:
        return max(due, recheck)
    return recheck if state.phase in (PROGRESSING, PROMOTING) else None
