"""The docs' status table (docs/operator.md) and troubleshooting tables (docs/operations.md) name
every condition reason and Event reason the operator can emit (found by running the reconcile,
against a recording stand-in for the API, through every kind of case: a new model, drift, an invalid
spec, missing storage, a refused child, a child name taken by an object the operator did not create,
what the admin's policy refuses; and the condition reasons by running the pure status decisions over
every kind of rollout, a crash loop and pods that refuse the operator's token)."""

from __future__ import annotations

import copy
from typing import Any

from modeldeploy.controller import reconcile
from modeldeploy.controller.context import OperatorContext, Settings
from modeldeploy.decisions import rollout
from modeldeploy.decisions.plan import failing_event, token_event
from modeldeploy.decisions.policy import Policy
from modeldeploy.decisions.status import Problem, Rollout, conditions_for, rollout_conditions
from operator_support import ROOT, RecordingKube

ROLLOUTS = [
    None,  # no Deployment yet
    Rollout(wanted=2, ready=2, updated=2, total=2, observed=True, deadline_exceeded=False),
    Rollout(wanted=0, ready=0, updated=0, total=0, observed=True, deadline_exceeded=False),
    Rollout(wanted=2, ready=1, updated=2, total=2, observed=True, deadline_exceeded=False),
    Rollout(wanted=2, ready=2, updated=1, total=3, observed=True, deadline_exceeded=False),
    Rollout(wanted=2, ready=1, updated=1, total=3, observed=True, deadline_exceeded=True),
]
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [  # (case, RecordingKube arguments, spec)
    ("a new model", {}, {}),
    ("an invalid spec", {}, {"rollout": {"steps": [50, 10]}}),
    ("missing storage", {"claims": ()}, {}),
    ("a child the API server refuses", {"reject": ("Deployment",)}, {}),
]


def _run(kube_args: dict[str, Any], spec: dict[str, Any], drift: bool = False, policy: Policy | None = None,
         taken: str = "") -> tuple[set[str], set[str]]:
    """(problem reasons in status, Event reasons) of reconciling one ModelDeployment (`taken`: the
    name of a ConfigMap someone else made where its ConfigMap goes)."""
    kube = RecordingKube(**kube_args)
    ctx = OperatorContext(kube=kube, reconcile=reconcile.reconcile,  # type: ignore[arg-type]
                          settings=Settings(model_status_url="", workers=1, policy=policy or Policy()))
    if taken:
        kube.objects[("ConfigMap", taken)] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": taken}}
    body = {"apiVersion": "serving.modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ml", "uid": "u1", "generation": 1, "resourceVersion": "1"},
            "spec": {"model": {"storage": {"pvc": {"claimName": "models"}}}, **spec}}
    kube.objects[("ModelDeployment", "m")] = body
    ctx.cache.seen(body)
    reconcile.reconcile(ctx, "ml", "m")
    if drift:  # a child edited by hand after the first run
        dep = copy.deepcopy(kube.objects[("Deployment", "m")])
        dep["spec"]["replicas"], dep["metadata"]["resourceVersion"] = 9, "999"
        kube.objects[("Deployment", "m")] = dep
        ctx.cache.seen(dep)
        reconcile.reconcile(ctx, "ml", "m")
    md = ctx.cache.get("ModelDeployment", "ml", "m") or {}
    degraded = {c["type"]: c for c in md.get("status", {}).get("conditions", [])}.get("Degraded", {})
    problems = {degraded["reason"]} if degraded.get("status") == "True" else set()
    return problems, {reason for _, reason, _ in kube.events}


def emitted() -> tuple[set[str], set[str]]:
    problems, events = _run({}, {}, drift=True)
    for _, kube_args, spec in CASES:
        p, e = _run(kube_args, spec)
        problems, events = problems | p, events | e
    for p, e in (_run({}, {"model": {"storage": {"hostPath": {"path": "/x"}}}}, policy=Policy(allow_host_path=False)),
                 _run({}, {"rollout": {"steps": [10], "prometheus": {"url": "http://p"}}},
                      policy=Policy(prometheus_url_prefixes=("http://q",))),
                 _run({}, {}, taken="m-config")):
        problems, events = problems | p, events | e
    reasons = {c["reason"] for problem in [None, *(Problem(p, "m") for p in problems)] for r in ROLLOUTS
               for c in conditions_for(problem, r, 1)}
    reasons |= {c["reason"] for c in conditions_for(None, ROLLOUTS[1], 1, ["stable→2"])}  # a label move not applied yet
    failing = {"pod": "p", "container": "c", "reason": "CrashLoopBackOff"}
    reasons |= {c["reason"] for c in conditions_for(None, ROLLOUTS[1], 1, failing=failing)}  # a crash loop
    events |= {e.reason for e in failing_event({"lastFailureInfo": failing}, {})}
    refused = conditions_for(None, ROLLOUTS[1], 1, token_refused="1 of 1 ready pods refuse ...")  # a Secret edited by hand
    reasons |= {c["reason"] for c in refused}
    events |= {e.reason for e in token_event({"conditions": refused}, {})}
    r_reasons, r_events = progressive_rollouts()
    return reasons | problems | r_reasons, events | problems | r_events


def progressive_rollouts() -> tuple[set[str], set[str]]:
    """Condition and Event reasons of progressive rollouts: the state machine driven through a
    promotion, a rollback on failed checks, one on checks that stay inconclusive, an abort, a promote
    command and a version that fails to load."""
    plan = rollout.Plan((50, 100), 0, 1, 0.01, 1.2, 10, inconclusive_seconds=3)
    latency = tuple(100.0 if i == 60 else 0.0 for i in range(len(rollout.LATENCY_BOUNDS) + 1))
    good, bad = rollout.VersionMetrics(100, 0, latency), rollout.VersionMetrics(100, 50, latency)
    events: set[str] = set()
    finals: list[rollout.State] = []

    def run(check: rollout.VersionMetrics | None, **kw: Any) -> None:
        out = rollout.start(1, 2, 1, 0)
        s = out.state
        events.update(e[1] for e in out.events)
        for t in range(1, 8):
            c = rollout.evaluate(plan, check, good) if check and rollout.check_due(plan, s, t) else None
            out = rollout.advance(plan, s, t, candidate_ready=True, check=c, promoted_everywhere=True,
                                  **(kw if t == 2 else {}))
            s = out.state
            events.update(e[1] for e in out.events)
            finals.append(s)

    run(good)
    run(bad)
    run(rollout.VersionMetrics(None, None, None))
    run(None, command="abort")
    run(None, command="promote")
    run(None, candidate_failed="p0: no such file")
    events.add("RolloutCommand")  # rollouts.step's note of a promote/abort command acted on
    base = conditions_for(None, ROLLOUTS[1], 1)
    reasons = {c["reason"] for s in finals for c in rollout_conditions(base, s.as_status(), 1)}
    return reasons, events


def test_the_cases_find_every_kind_of_reason() -> None:
    reasons, events = emitted()
    assert {"InvalidSpec", "StorageNotFound", "ApplyFailed", "ProgressDeadlineExceeded", "Available", "LabelsPending"} <= reasons
    assert {"ChildNotOwned", "HostPathNotAllowed", "PrometheusURLNotAllowed", "AdminTokenRejected"} <= reasons & events
    assert {"Created", "Reconciled", "DriftCorrected", "StorageNotFound"} <= events
    assert {"RolloutProgressing", "RolledBack", "Aborted", "LoadFailed"} <= reasons
    assert {"RolloutStarted", "RolloutStep", "RolloutCheckFailed", "RolloutPromoting", "RolloutSucceeded"} <= events


def test_readme_names_every_reason_the_operator_emits() -> None:
    operator = (ROOT / "docs" / "operator.md").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    troubleshooting = operations.split("\n## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    reasons, events = emitted()
    conditions_table = operator.split("\n## Status, conditions and events", 1)[1].split("\n## ", 1)[0]
    assert not {r for r in reasons if f"`{r}`" not in conditions_table}, "docs/operator.md status section lacks condition reasons"
    user_facing = {r for r in reasons if r not in ("AsExpected", "RolloutComplete")} | events
    missing = sorted(r for r in user_facing if f"`{r}`" not in troubleshooting)
    assert not missing, f"docs/operations.md troubleshooting lacks: {missing}"
