"""The rollout state machine (modeldeploy.decisions.rollout) table-driven: advancing, the last step, no data
and too few requests (inconclusive: the step waits, then rolls back after inconclusiveSeconds), NaN, the
latency test with its ratio, margin and absolute bound, errors, the threshold, failures accumulating across
steps, promote/abort commands, a version that fails to load, and a restart mid-step. The statistics
themselves are tested in test_judgement.py."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
from modeldeploy.decisions.rollout import (
    CANDIDATE_LABEL,
    DIFF_BOUNDS,
    FAILED,
    LATENCY_BOUNDS,
    PROGRESSING,
    PROMOTING,
    RATIO_BOUNDS,
    SUCCEEDED,
    Plan,
    ShadowMetrics,
    State,
    VersionMetrics,
    advance,
    check_due,
    evaluate,
    start,
)

PLAN = Plan(steps=(5, 25, 100), step_seconds=60, interval_seconds=20, max_error_rate=0.01, max_latency_ratio=1.2,
            min_requests=100)


def lat(ms: float, n: int, seed: int = 1, spread: float = 0.1) -> tuple[float, ...]:
    """n latencies around `ms` (lognormal), as per-bucket counts over the server's buckets."""
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(math.log(ms / 1000), spread, n)
    counts = [0.0] * (len(LATENCY_BOUNDS) + 1)
    for x in samples:
        counts[bisect.bisect_left(LATENCY_BOUNDS, x)] += 1
    return tuple(counts)


GOOD = VersionMetrics(requests=500, errors=0, latency=lat(10, 500, seed=2))
OLD = VersionMetrics(requests=5000, errors=0, latency=lat(10, 5000, seed=3))
NONE = VersionMetrics(None, None, None)


@pytest.mark.parametrize(("new", "old", "plan", "passed", "words"), [
    (GOOD, OLD, PLAN, True, ""),
    (VersionMetrics(50, 0, lat(10, 50)), OLD, PLAN, None, "too few answers"),  # inconclusive: wait
    (NONE, OLD, PLAN, None, "too few answers"),
    (VersionMetrics(500, math.nan, lat(10, 500)), OLD, PLAN, None, "too few answers"),
    (VersionMetrics(500, 25, lat(10, 500)), OLD, PLAN, False, "errors: more errors: 25 errors in 500 answers"),
    (VersionMetrics(500, 2, lat(10, 500)), OLD, PLAN, True, ""),  # 0.4%: under the bound
    (VersionMetrics(500, 0, lat(12.5, 500)), OLD, PLAN, False, "latency: slower (p50 and p99)"),
    (VersionMetrics(500, 0, lat(11.5, 500)), OLD, PLAN, True, ""),  # slower, significantly, but within 1.2x
    (VersionMetrics(500, 0, lat(0.15, 500)), VersionMetrics(5000, 0, lat(0.1, 5000)), PLAN, True, ""),  # +0.05 ms
    (GOOD, VersionMetrics(0, None, None), PLAN, None, "too few answers"),
    (VersionMetrics(500, 0, lat(11, 500)), OLD, Plan((5,), 60, 20, 0.01, 1.2, 100, max_latency_ms=10.5), False,
     "latencyBound: "),
    (VersionMetrics(None, None, None, "Prometheus unreachable at http://p:9090: refused"), OLD, PLAN, None,
     "Prometheus unreachable"),
])
def test_checks(new, old, plan, passed, words) -> None:  # type: ignore[no-untyped-def]
    c = evaluate(plan, new, old)
    reasons = "; ".join(c.failures) + "; ".join(str(v["reason"]) for v in c.verdicts.values())
    assert c.passed == passed and (words in reasons if words else not c.failures), c.verdicts


def test_a_healthy_version_is_promoted_through_every_step() -> None:
    out = start(3, 4, 7, now=0)
    assert (out.state.phase, out.weights) == (PROGRESSING, {"stable": 100})
    assert out.labels == {"stable": 3, CANDIDATE_LABEL: 4}
    out = advance(PLAN, out.state, 1, candidate_ready=False)
    assert out.state.step == -1  # waits for the version to load everywhere
    out = advance(PLAN, out.state, 2, candidate_ready=True)
    assert (out.state.step, out.weights) == (0, {"stable": 95, CANDIDATE_LABEL: 5})
    weights, t, s = [], 2.0, out.state
    while s.phase == PROGRESSING:
        t += 20
        assert check_due(PLAN, s, t)
        out = advance(PLAN, s, t, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD))
        s = out.state
        weights.append(s.weight)
    assert weights[:3] == [5, 5, 25] and s.phase == PROMOTING and out.labels == {"stable": 4}
    assert advance(PLAN, s, t + 1, candidate_ready=True).state.phase == PROMOTING  # until live everywhere
    done = advance(PLAN, s, t + 2, candidate_ready=True, promoted_everywhere=True)
    assert done.state.phase == SUCCEEDED and done.events[0][1] == "RolloutSucceeded"


def test_failures_accumulate_across_steps_and_roll_back_at_the_threshold() -> None:
    s = advance(PLAN, start(3, 4, 1, 0).state, 0, candidate_ready=True).state
    bad = evaluate(PLAN, VersionMetrics(500, 100, lat(10, 500)), OLD)
    s = advance(PLAN, s, 20, candidate_ready=True, check=bad).state
    assert (s.phase, s.failed_checks) == (PROGRESSING, 1) and s.weight == 5  # no advance on a failure
    for t in (40, 60):
        s = advance(PLAN, s, t, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD)).state
    assert s.weight == 25 and s.failed_checks == 1  # a passing step advanced; the failure is remembered
    out = advance(PLAN, s, 80, candidate_ready=True, check=bad)
    assert out.state.phase == FAILED and out.labels == {"stable": 3} and out.weights == {"stable": 100}
    assert out.events[0][:2] == ("Warning", "RolledBack") and "100 errors in 500 answers" in out.events[0][2]
    assert advance(PLAN, out.state, 100, candidate_ready=True).state.phase == FAILED  # stays until the spec changes


def test_no_data_waits_then_rolls_back_after_inconclusive_seconds() -> None:
    plan = Plan((5, 25, 100), 60, 20, 0.01, 1.2, 100, inconclusive_seconds=300)
    s = advance(plan, start(3, 4, 1, 0).state, 0, candidate_ready=True).state
    nodata = evaluate(plan, NONE, OLD)
    s = advance(plan, s, 61, candidate_ready=True, check=nodata).state
    assert (s.phase, s.step, s.failed_checks) == (PROGRESSING, 0, 0) and "waiting for data" in s.message
    assert s.analysis["result"] == "Inconclusive"
    s = advance(plan, s, 299, candidate_ready=True, check=nodata).state
    assert s.phase == PROGRESSING and s.weight == 5  # an inconclusive step never advances
    out = advance(plan, s, 300, candidate_ready=True, check=nodata)
    assert out.state.phase == FAILED and out.state.reason == "Inconclusive" and out.events[0][1] == "Inconclusive"
    forever = Plan((5,), 60, 20, 0.01, 1.2, 100, inconclusive_seconds=None)
    s = advance(forever, start(3, 4, 1, 0).state, 0, candidate_ready=True).state
    assert advance(forever, s, 10**6, candidate_ready=True, check=nodata).state.phase == PROGRESSING


def test_commands_and_a_version_that_does_not_load() -> None:
    s = start(3, 4, 1, 0).state
    out = advance(PLAN, s, 1, candidate_ready=False, candidate_failed="Warmup request 0 failed")
    assert out.state.phase == FAILED and out.events[0][1] == "LoadFailed"
    s = advance(PLAN, s, 1, candidate_ready=True).state
    assert advance(PLAN, s, 2, candidate_ready=True, command="promote").state.phase == PROMOTING
    out = advance(PLAN, s, 2, candidate_ready=True, command="abort")
    assert out.state.phase == FAILED and out.events[0][1] == "Aborted"


def test_a_restart_mid_step_resumes_from_status() -> None:
    s = advance(PLAN, start(3, 4, 9, 0).state, 0, candidate_ready=True).state
    s = advance(PLAN, s, 20, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD)).state
    again = State.from_status(s.as_status())
    assert again == s
    assert not check_due(PLAN, again, 30) and check_due(PLAN, again, 40)
    nxt = advance(PLAN, again, 61, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD)).state
    assert nxt.weight == 25
    assert State.from_status({}) is None and State.from_status({"phase": "x"}) is None


def test_a_step_waits_for_its_split_to_be_live_everywhere() -> None:
    s = advance(PLAN, start(3, 4, 9, 0).state, 0, candidate_ready=True).state
    held = advance(PLAN, s, 30, candidate_ready=True, check=evaluate(PLAN, NONE, OLD),
                   step_live=False).state
    assert held.failed_checks == 0 and held.step_started == 30 and "live on every pod" in held.message
    assert not check_due(PLAN, held, 45) and check_due(PLAN, held, 50)  # the clock started when it went live
    assert advance(PLAN, held, 89, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD)).state.weight == 5
    assert advance(PLAN, held, 91, candidate_ready=True, check=evaluate(PLAN, GOOD, OLD)).state.weight == 25


def test_split_live_reads_status_routing() -> None:
    from modeldeploy.decisions.rollout import split_live

    s = advance(PLAN, start(3, 4, 9, 0).state, 0, candidate_ready=True).state  # 5% to version 4
    table = {"labels": {"stable": 3, CANDIDATE_LABEL: 4, "other": 1}, "weights": {"stable": 95, CANDIDATE_LABEL: 5}}
    assert split_live({"routing": {**table, "delivery": "Push", "livePods": 2, "readyPods": 2}}, s)
    assert not split_live({"routing": {**table, "delivery": "Push", "livePods": 1, "readyPods": 2}}, s)
    assert not split_live({"routing": {**table, "delivery": "Push", "livePods": 2, "readyPods": 2,
                                       "waiting": ["table 3 not live on p1 yet"]}}, s)
    assert not split_live({"routing": {**table, "weights": {"stable": 100}, "delivery": "Push", "livePods": 2,
                                       "readyPods": 2}}, s)
    assert split_live({"routing": {**table, "delivery": "ConfigMap"}}, s)
    assert not split_live({}, s)


def test_the_first_check_of_a_step_waits_for_a_whole_window() -> None:
    plan = Plan((5, 25, 100), step_seconds=5, interval_seconds=3, max_error_rate=0.01, max_latency_ratio=1.2,
                min_requests=100, window_seconds=10)
    s = advance(plan, start(3, 4, 9, 0).state, 0, candidate_ready=True).state
    assert [t for t in range(0, 14) if check_due(plan, s, t)] == [10, 11, 12, 13]
    s = advance(plan, s, 10, candidate_ready=True, check=evaluate(plan, GOOD, OLD)).state
    assert s.weight == 25 and s.step_started == 10
    assert not check_due(plan, s, 19) and check_due(plan, s, 20)


def test_a_100_percent_step_is_judged_by_the_absolute_bounds_alone() -> None:
    """The old version answers nothing at 100%: nothing to compare with in the same window."""
    slow = VersionMetrics(500, 0, lat(20, 500))
    assert evaluate(PLAN, slow, OLD).passed is False  # at a split step: slower than the old version
    c = evaluate(PLAN, slow, NONE, alone=True)
    assert c.passed is True and c.verdicts["latency"]["test"] == "none"
    bounded = Plan((5, 100), 60, 20, 0.01, 1.2, 100, max_latency_ms=15)
    assert evaluate(bounded, slow, NONE, alone=True).passed is False  # maxLatencyMs still applies
    failing = evaluate(PLAN, VersionMetrics(500, 25, lat(10, 500)), NONE, alone=True)
    assert failing.passed is False and failing.verdicts["errors"]["test"] == "binomial"  # maxErrorRate alone
    assert evaluate(PLAN, VersionMetrics(50, 0, lat(10, 50)), NONE, alone=True).passed is None  # too few answers


def test_prometheus_buckets_become_per_bucket_counts() -> None:
    from modeldeploy.controller.measure import bucket_counts

    b = LATENCY_BOUNDS
    cumulative = [({"le": repr(b[0])}, 2.0), ({"le": f"{b[1]:.6g}"}, 5.0), ({"le": repr(b[3])}, 4.9999),
                  ({"le": "+Inf"}, 9.0), ({"le": "junk"}, 7.0), ({"le": repr(b[5])}, math.nan)]
    counts = bucket_counts(tuple(cumulative))
    assert counts is not None and len(counts) == len(b) + 1
    assert counts[:5] == (2.0, 3.0, 0.0, 0.0, 0.0)  # b[2] missing holds b[1]'s count; the dip counts as 0
    assert counts[-1] == pytest.approx(4.0) and sum(counts) == pytest.approx(9.0)
    assert bucket_counts(()) is None and bucket_counts((({"le": "0.123456"}, 3.0),)) is None  # not our buckets


def _md(generation: int, stable: int, status: dict | None = None) -> dict:
    return {"apiVersion": "serving.modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ml", "generation": generation},
            "spec": {"model": {"storage": {"pvc": {"claimName": "models"}}, "versions": [3, 4]},
                     "versionLabels": {"stable": stable}, "rollout": {"steps": [50, 100], "stepSeconds": 60}},
            "status": status or {}}


def test_the_reconcile_glue_starts_resumes_and_retries() -> None:
    from modeldeploy.decisions import plan as plan_mod
    from modeldeploy.decisions import rollout as rollouts
    from modeldeploy.decisions.records import PodReport

    routing = {"labels": {"stable": 3}, "weights": {"stable": 100}, "delivery": "Push", "livePods": 1, "readyPods": 1}
    pods = [PodReport("p0", versions={3: "AVAILABLE", 4: "AVAILABLE"})]

    def step(b: dict, now: float) -> rollouts.Step:
        return rollouts.step(plan_mod.parse_spec(b), b, pods, None, now)

    assert step(_md(1, 3, {"routing": routing}), 0).state is None  # 3 is in force: nothing to roll out
    first = step(_md(2, 4, {"routing": routing}), 0)  # stable 3 -> 4: loaded beside, then step 1
    assert first.state.phase == PROGRESSING and first.state.weight == 50 and first.override[1] == {
        "stable": 50, CANDIDATE_LABEL: 50}
    assert [e[1] for e in first.events] == ["RolloutStarted", "RolloutStep"]
    failed = State(FAILED, 3, 4, 2, step=0, message="version 4 rolled back after 2 failed checks")
    b = _md(2, 4, {"routing": routing, "rollout": failed.as_status()})
    held = step(b, 100)
    assert held.state.phase == FAILED and held.override == ({"stable": 3}, {"stable": 100}, None) and not held.events
    assert held.unload == {4} and first.unload == frozenset()
    from modeldeploy.decisions import traffic
    spec = plan_mod.parse_spec(b)
    in_force = traffic.Table.from_status(routing)
    assert traffic.decide(spec, 2, in_force, pods, held.override, held.unload).load_versions == (3,)  # the new one goes
    labelled = ({"stable": 3, "canary": 4}, {"stable": 100}, None)  # unless a label still points at it
    assert traffic.decide(spec, 2, in_force, pods, labelled, held.unload).load_versions == (3, 4)
    retry = step(_md(3, 4, {"routing": routing, "rollout": failed.as_status()}), 100)  # a new spec change
    assert retry.state.phase == PROGRESSING and retry.state.generation == 3 and retry.events[0][1] == "RolloutStarted"


def test_promote_and_abort_commands_are_acted_on_once() -> None:
    from modeldeploy.api import v1alpha1 as api
    from modeldeploy.decisions import plan as plan_mod
    from modeldeploy.decisions import rollout as rollouts
    from modeldeploy.decisions.records import PodReport

    pods = [PodReport("p0", versions={3: "AVAILABLE", 4: "AVAILABLE"})]
    running = State(PROGRESSING, 3, 4, 2, step=0, weight=50, step_started=0, last_check=0)
    routing = {"labels": {"stable": 3, CANDIDATE_LABEL: 4}, "weights": {"stable": 50, CANDIDATE_LABEL: 50},
               "delivery": "Push", "livePods": 1, "readyPods": 1}
    for verb, phase in (("promote", PROMOTING), ("abort", FAILED)):
        b = _md(2, 4, {"routing": routing, "rollout": running.as_status()})
        b["metadata"]["annotations"] = {api.ROLLOUT_COMMAND_ANNOTATION: f"{verb}@2"}
        out = rollouts.step(plan_mod.parse_spec(b), b, pods, None, 5)
        assert out.state.phase == phase and "RolloutCommand" in [e[1] for e in out.events], out
        assert rollouts.status_of(out.state, b)["command"] == f"{verb}@2"
        b["status"]["rollout"] = {**running.as_status(), "command": f"{verb}@2"}  # already acted on
        assert rollouts.step(plan_mod.parse_spec(b), b, pods, None, 5).state.phase == PROGRESSING


def test_a_command_left_from_an_earlier_rollout_does_not_act_on_a_later_one() -> None:
    from modeldeploy.api import v1alpha1 as api
    from modeldeploy.decisions import rollout as rollouts

    b = {"metadata": {"annotations": {api.ROLLOUT_COMMAND_ANNOTATION: "promote@2"}}}
    assert rollouts.command_for(b, {}, 2) == "promote"
    assert rollouts.command_for(b, {"rollout": {"command": "promote@2"}}, 2) == ""  # acted on already
    assert rollouts.command_for(b, {}, 5) == ""  # status cleared since, a new rollout of generation 5
    assert rollouts.command_for({"metadata": {}}, {}, 2) == ""


def test_the_next_check_is_due_after_the_interval_and_a_whole_window() -> None:
    from modeldeploy.decisions.rollout import seconds_to_next_check

    plan = Plan((5, 100), step_seconds=60, interval_seconds=20, max_error_rate=0.01, max_latency_ratio=1.2,
                min_requests=100, window_seconds=30)
    loading = start(3, 4, 9, 0).state
    assert seconds_to_next_check(plan, loading, 0) is None  # no check while the new version loads
    s = advance(plan, loading, 100, candidate_ready=True).state
    assert seconds_to_next_check(plan, s, 100) == 30 and seconds_to_next_check(plan, s, 140) == 0
    s = advance(plan, s, 130, candidate_ready=True, check=evaluate(plan, GOOD, OLD)).state
    assert seconds_to_next_check(plan, s, 130) == 20


def _shadow(compared: float, ratio: float = 1.0, diff: float = 0.0, failed: float = 0, agree: float | None = None,
            disagree: float | None = None) -> ShadowMetrics:

    ratios = [0.0] * (len(RATIO_BOUNDS) + 1)
    rng = np.random.default_rng(5)
    for x in rng.lognormal(math.log(ratio), 0.05, int(compared)):
        ratios[bisect.bisect_left(RATIO_BOUNDS, x)] += 1
    diffs = [0.0] * (len(DIFF_BOUNDS) + 1)
    diffs[bisect.bisect_left(DIFF_BOUNDS, diff)] += compared
    return ShadowMetrics({"compared": compared, "failed": failed}, tuple(ratios), tuple(diffs), agree, disagree)


SHADOW_PLAN = Plan((20, 100), 60, 20, 0.01, 1.2, 100, shadow_percent=10, shadow_seconds=40, max_divergence=0.01,
                   min_top1_agreement=0.99)


@pytest.mark.parametrize(("m", "passed", "words"), [
    (None, None, "no shadow data"),
    (_shadow(50), None, "too few pairs"),
    (_shadow(500), True, ""),
    (_shadow(500, ratio=1.5), False, "pairedLatency: slower"),
    (_shadow(500, ratio=1.1), True, ""),  # slower on every pair, but by less than 1.2x
    (_shadow(500, diff=0.5), False, "divergence: 500 of 500 requests differ by more than 0.01"),
    (_shadow(500, diff=1e-7), True, ""),
    (_shadow(500, failed=30), False, "shadowErrors: more errors"),
    (_shadow(500, agree=900, disagree=100), False, "top1Agreement: disagrees"),
    (_shadow(500, agree=995, disagree=5), True, ""),
])
def test_shadow_checks(m, passed, words) -> None:  # type: ignore[no-untyped-def]
    from modeldeploy.decisions.rollout import evaluate_shadow

    c = evaluate_shadow(SHADOW_PLAN, m)
    reasons = "; ".join(c.failures) + "; ".join(str(v["reason"]) for v in c.verdicts.values())
    assert c.passed == passed and (words in reasons if words else not c.failures), c.verdicts


def test_a_shadow_phase_comes_before_the_first_step_and_can_roll_back_unseen() -> None:
    from modeldeploy.decisions.rollout import evaluate_shadow

    s = start(3, 4, 1, 0).state
    out = advance(SHADOW_PLAN, s, 1, candidate_ready=True)
    assert out.state.shadowing and out.state.weight == 0 and out.weights == {"stable": 100}
    assert out.events[0][1] == "RolloutShadow" and "shadowing 10% of version 3's requests to version 4" in out.state.message
    s = out.state
    assert not check_due(SHADOW_PLAN, s, 15) and check_due(SHADOW_PLAN, s, 21)
    good = evaluate_shadow(SHADOW_PLAN, _shadow(500))
    s = advance(SHADOW_PLAN, s, 21, candidate_ready=True, check=good).state
    assert s.shadowing and "checks passing" in s.message  # held for shadow_seconds
    out = advance(SHADOW_PLAN, s, 41, candidate_ready=True, check=good)
    assert not out.state.shadowing and out.state.weight == 20 and out.events[0][1] == "RolloutStep"
    assert State.from_status(out.state.as_status()) == out.state
    # a diverging version never reaches a user: rolled back while it shadows
    s = advance(SHADOW_PLAN, start(3, 4, 1, 0).state, 1, candidate_ready=True).state
    bad = evaluate_shadow(SHADOW_PLAN, _shadow(500, diff=2.0))
    s = advance(SHADOW_PLAN, s, 21, candidate_ready=True, check=bad).state
    out = advance(SHADOW_PLAN, s, 41, candidate_ready=True, check=bad)
    assert out.state.phase == FAILED and out.state.weight == 0 and "divergence" in out.events[0][2]


def test_the_step_routes_the_shadow_while_it_runs() -> None:
    from modeldeploy.decisions import plan as plan_mod
    from modeldeploy.decisions import rollout as rollouts
    from modeldeploy.decisions.records import PodReport

    pods = [PodReport("p0", versions={3: "AVAILABLE", 4: "AVAILABLE"})]
    routing = {"labels": {"stable": 3}, "weights": {"stable": 100}, "delivery": "Push", "livePods": 1, "readyPods": 1}
    b = _md(2, 4, {"routing": routing})
    b["spec"]["rollout"]["shadow"] = {"percent": 25}
    out = rollouts.step(plan_mod.parse_spec(b), b, pods, None, 0)
    assert out.state is not None and out.state.shadowing
    assert out.override == ({"stable": 3, CANDIDATE_LABEL: 4}, {"stable": 100},
                            {"label": CANDIDATE_LABEL, "percent": 25.0, "source": "stable"})
