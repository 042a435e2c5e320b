"""Reconcile one ModelDeployment: observe → plan → execute → report.

- **observe** (reads): the ModelDeployment and its children from the cache (what the watches and
  our own writes left there), the PersistentVolumeClaim its spec names (a GET), and, when pods are
  ready, each ready pod's own report from its admin port (HTTP, in parallel; podadmin.py), or, when
  the pods cannot be reached, one server's version report through the Service;
- **plan** and **report** (pure, plan.py): what to create, update or keep, which Events, what status;
- **execute** (writes): our finalizer, the server-side applies (each answer goes into the cache, so
  its watch event is known as our own echo), the children's Events, then the routing table pushed
  to every ready pod that lags (traffic.py decides when labels and weights may move);
- then the status patch and the summary Event.

It is idempotent and needs no state of its own beyond the cache, so running it again at any point
(an operator restart, a retry after a conflict, a child edited by hand) converges to the same
result. A spec that cannot work is reported, and nothing is applied. The work queue runs at most
one reconcile per ModelDeployment at a time; transient API errors raise `Retry`, which it backs off.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import secrets
import time
from typing import TYPE_CHECKING

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import podadmin
from modeldeploy.clients.kube import KubeError
from modeldeploy.controller import metrics, rollouts, scaling
from modeldeploy.controller.workqueue import Retry
from modeldeploy.decisions import autoscale, plan, render, rollout, serverconfig
from modeldeploy.decisions.plan import Event, Observed, Outcome, Plan, parse_spec

if TYPE_CHECKING:
    from modeldeploy.controller.context import OperatorContext

Obj = plan.Obj
log = logging.getLogger("modeldeploy.controller.reconcile")


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(ctx: OperatorContext, namespace: str, name: str) -> float | None:
    """One run for the work queue: the seconds until the periodic re-check (None: gone)."""
    body = ctx.cache.get(api.KIND, namespace, name)
    if body is None:
        return None
    started = time.monotonic()
    try:
        problem = _reconcile(ctx, body)
    except Retry:
        metrics.RECONCILES.labels(result="retry").inc()
        raise
    except Exception:
        metrics.RECONCILES.labels(result="error").inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(result="problem" if problem else "ok").inc()
    if problem is not None:
        log.warning("%s/%s: %s: %s", namespace, name, problem.reason, problem.message)
    if body["metadata"].get("deletionTimestamp"):
        return None
    if problem is None and ctx.traffic_pending.pop((namespace, name), False):
        return ctx.traffic_recheck_seconds  # labels or weights still moving: look again soon
    # Spread the re-checks of ModelDeployments created together (±10%).
    after = ctx.resync_seconds * random.uniform(0.9, 1.1)
    a = (plan.parse_spec(body) if problem is None else None)
    if isinstance(a, api.ModelDeploymentSpec) and a.autoscaling and a.autoscaling.mode == api.AutoscalingMode.operator:
        after = min(after, float(a.autoscaling.interval_seconds))  # the autoscaler's next evaluation
    latest = ctx.cache.get(api.KIND, namespace, name) or body
    state = rollout.State.from_status((latest.get("status") or {}).get("rollout"))
    if isinstance(a, api.ModelDeploymentSpec) and a.rollout is not None and state is not None:
        # a rollout checks on time; while it loads the new version or promotes, it looks again soon
        due = rollout.seconds_to_next_check(rollouts.plan_of(a.rollout), state, time.time())
        if due is not None:
            after = min(after, max(due, ctx.traffic_recheck_seconds))
        elif state.phase in (rollout.PROGRESSING, rollout.PROMOTING):
            after = min(after, ctx.traffic_recheck_seconds)
    return after


def _reconcile(ctx: OperatorContext, body: Obj) -> plan.Problem | None:
    observed = observe(ctx, body)
    decided = plan.plan(observed, ctx.defaults)
    outcome = execute(ctx, body, decided)
    if outcome is None:
        return None  # the ModelDeployment is gone
    said = plan.report(observed, decided, outcome, now())
    if said.status is not None:
        write_status(ctx, body, said.status)
    for event in said.events:
        post_event(ctx, body, event)
    routing = (said.status or body.get("status") or {}).get("routing") or {}
    if decided.traffic is not None and (routing.get("waiting") or not decided.traffic.settled):
        ctx.traffic_pending[(body["metadata"]["namespace"], body["metadata"]["name"])] = True
    return said.problem


# -- observe --
def observe(ctx: OperatorContext, body: Obj) -> Observed:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if meta.get("deletionTimestamp"):
        return Observed(body, None, None)
    parsed = parse_spec(body)
    claim = plan.claim_name(parsed)
    claim_found = None if claim is None else claim_exists(ctx, namespace, claim)
    ref = plan.warmup_requests_ref(parsed)
    warmup_problem = None
    if ref is not None:
        try:
            warmup_problem = plan.warmup_requests_problem(ref, namespace, ctx.kube.get("v1", "ConfigMap", namespace, ref.name))
        except KubeError as exc:
            raise Retry(f"reading the warmup requests ConfigMap: {exc}", 1) from exc
    problem = plan.assess(body, parsed, claim_found, warmup_problem)
    spec = None if isinstance(parsed, plan.Problem) else parsed
    children = {(kind, child): obj for _, kind, child in render.child_refs(name)
                if (obj := ctx.cache.get(kind, namespace, child)) is not None}
    served = None
    endpoints: tuple[podadmin.Endpoint, ...] = ()
    pods: tuple[plan.traffic.PodReport, ...] | None = None
    token = podadmin.token_of(children.get(("Secret", render.token_secret_name(name))), serverconfig.ADMIN_TOKEN_KEY)
    if spec is not None and problem is None:
        model = api.model_name(spec, name)
        endpoints = tuple(podadmin.ready_endpoints(ctx.cache.endpoint_slices(namespace, render.admin_service_name(name))))
        if token is not None and ctx.pod_admin and endpoints:
            reports = tuple(podadmin.fetch(endpoints, token, model))
            # every pod unreachable: the operator runs where it cannot reach pods (ConfigMap delivery)
            pods = None if all(r.unreachable for r in reports) else reports
        deployment = children.get(("Deployment", name))
        if not pods and int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0) > 0:
            served = ctx.probe(namespace, name, model, sorted(spec.version_labels or {}))
    measured = None
    a = spec.autoscaling if spec is not None and problem is None else None
    if a is not None and a.mode == api.AutoscalingMode.operator:
        now_s = time.time()
        if autoscale.due((body.get("status") or {}).get("autoscaler"), now_s, a.interval_seconds):
            dep = children.get(("Deployment", name))
            ready = int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)
            measured = scaling.measure(a, ctx.prometheus_url, namespace, name, ready, now_s)
    now_s = time.time()
    checked = None
    state = rollout.State.from_status((body.get("status") or {}).get("rollout"))
    if spec is not None and problem is None and spec.rollout is not None and state is not None:
        rplan = rollouts.plan_of(spec.rollout)
        if rollout.check_due(rplan, state, now_s):
            checked = rollouts.measure(spec.rollout, ctx.prometheus_url, namespace, name, state.from_version,
                                       state.to_version, rplan.window)
    return Observed(body, spec, problem, children, served, endpoints, pods, token, secrets.token_urlsafe(32), measured,
                    checked, now_s)


def claim_exists(ctx: OperatorContext, namespace: str, claim: str) -> bool:
    """Whether the PersistentVolumeClaim exists: a GET, unless one found it within
    `ctx.claim_seconds` (a claim in use cannot go away: Kubernetes' pvc-protection keeps it while
    pods mount it). A missing claim is asked for again at every reconcile."""
    key = (namespace, claim)
    if ctx.claims_seen.get(key, 0.0) > time.monotonic():
        return True
    try:
        found = ctx.kube.get("v1", "PersistentVolumeClaim", namespace, claim) is not None
    except KubeError as exc:
        raise Retry(f"checking storage: {exc}", 1) from exc
    if found:
        ctx.claims_seen[key] = time.monotonic() + ctx.claim_seconds
    else:
        ctx.claims_seen.pop(key, None)
    return found


# -- execute --
def execute(ctx: OperatorContext, body: Obj, decided: Plan) -> Outcome | None:
    """Do what the plan says; None when the ModelDeployment went away meanwhile."""
    if decided.finalizer is not None and not _finalizer(ctx, body, decided.finalizer):
        return None
    applied: dict[plan.ChildKey, Obj] = {}
    for action in decided.writes:
        try:
            out = ctx.kube.apply(action.desired)
        except KubeError as exc:
            metrics.API_ERRORS.labels(status=str(exc.status)).inc()
            if exc.transient:
                raise Retry(f"applying {action.key[0]} {action.key[1]}: {exc}", 0.5 if exc.status == 409 else 1) from exc
            return Outcome(applied, plan.Problem("ApplyFailed", f"the API server rejected a child: {exc.message}"))
        ctx.cache.wrote(out)
        applied[action.key] = out
        if action.event is not None and (not action.event.only_if_changed or _changed(action, out)):
            post_event(ctx, body, action.event)
    pushed: tuple[podadmin.PushResult, ...] = ()
    if decided.push_to and decided.token and decided.routing is not None:
        # after the ConfigMap: a pod that starts meanwhile reads the same table from routing.json
        pushed = tuple(podadmin.push(decided.push_to, decided.token, decided.routing))
        for r in pushed:
            if r.error:
                log.info("routing push to %s/%s pod %s: %s", body["metadata"]["namespace"], body["metadata"]["name"],
                         r.pod, r.error)
    return Outcome(applied, pushed=pushed)


def _changed(action: plan.ChildAction, after: Obj) -> bool:
    """Whether an apply changed the object (a no-op apply keeps the resourceVersion)."""
    before = action.live
    return before is None or before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion")


def _finalizer(ctx: OperatorContext, body: Obj, what: str) -> bool:
    meta = body["metadata"]
    current = list(meta.get("finalizers") or [])
    wanted = current + [plan.FINALIZER] if what == "add" else [f for f in current if f != plan.FINALIZER]
    try:
        out = ctx.kube.patch_finalizers(meta["namespace"], meta["name"], wanted, meta.get("resourceVersion"))
    except KubeError as exc:
        if exc.status == 404:
            return False
        metrics.API_ERRORS.labels(status=str(exc.status)).inc()
        raise Retry(f"{'adding' if what == 'add' else 'removing'} the finalizer: {exc}", 0.5) from exc
    ctx.cache.wrote(out)
    return True


# -- report --
def write_status(ctx: OperatorContext, body: Obj, patch: Obj) -> None:
    meta = body["metadata"]
    try:
        out = ctx.kube.patch_status(meta["namespace"], meta["name"], patch)
    except KubeError as exc:
        if exc.status == 404:
            return
        metrics.API_ERRORS.labels(status=str(exc.status)).inc()
        raise Retry(f"writing status: {exc}", 0.5) from exc
    ctx.cache.wrote(out)


def post_event(ctx: OperatorContext, body: Obj, event: Event) -> None:
    """Best effort, as Kubernetes' own recorders: a lost Event is logged, never retried."""
    try:
        ctx.kube.post_event(body, event.type, event.reason, event.message, ctx.reporting_component, ctx.reporting_instance)
    except KubeError as exc:
        log.info("could not post the %s event of %s: %s", event.reason, body["metadata"].get("name"), exc)
