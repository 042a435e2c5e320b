"""Reconcile one ModelDeployment: observe → plan → execute → report.

- **observe** (reads): the ModelDeployment and its children from the cache (what the watches and
  our own writes left there), the PersistentVolumeClaim its spec names (a GET), and, when pods are
  ready, each ready pod's own report from its admin port (HTTP, in parallel; clients.servers), or, when
  the pods cannot be reached, one server's version report through the Service; the admin token is
  derived from the operator's key (admintoken.py), never read from its Secret;
- **plan** and **report** (pure, plan.py): what to create, update or keep, which Events, what status;
- **execute** (writes): our finalizer, the children (a missing one created with a POST, which never
  overwrites an object of that name, then applied once so that our field manager owns its fields;
  one that carries our ownerReference applied server-side; each answer goes into the cache, so its
  watch event is known as our own echo), the children's Events, then the routing table pushed
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
import time
from typing import TYPE_CHECKING

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import activator, servers
from modeldeploy.clients.kube import KubeError
from modeldeploy.controller import measure, metrics
from modeldeploy.controller.workqueue import Retry
from modeldeploy.decisions import admintoken, autoscale, plan, render, rollout, scaletozero
from modeldeploy.decisions.plan import Event, Observed, Outcome, Plan, parse_spec
from modeldeploy.decisions.records import Endpoint, PodReport, PushResult, VersionReport

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
    moving = ctx.traffic_pending.pop((namespace, name), False)
    latest = ctx.cache.get(api.KIND, namespace, name) or body
    spec = plan.parse_spec(body) if problem is None else None
    # Spread the periodic re-checks of ModelDeployments created together (±10%).
    resync = ctx.settings.resync_seconds * random.uniform(0.9, 1.1)
    return plan.next_look(spec if isinstance(spec, api.ModelDeploymentSpec) else None, latest.get("status") or {},
                          time.time(), resync, ctx.settings.traffic_recheck_seconds, moving and problem is None)


def _reconcile(ctx: OperatorContext, body: Obj) -> plan.Problem | None:
    observed = observe(ctx, body)
    decided = plan.plan(observed, ctx.settings.defaults)
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
    problem = plan.assess(body, parsed, claim_found, warmup_problem, ctx.settings.policy)
    spec = None if isinstance(parsed, plan.Problem) or problem is not None else parsed
    children = {(kind, child): obj for _, kind, child in render.child_refs(name)
                if (obj := ctx.cache.get(kind, namespace, child)) is not None}
    uid = str(meta.get("uid") or "")
    token = admintoken.derive(ctx.settings.token_key, namespace, name, uid) if uid else None
    endpoints, pods, served, refused = ask_servers(ctx, spec, namespace, name, children, token)
    due = admintoken.create_due(ctx.secrets_created.get((namespace, name, uid)), time.monotonic(), bool(refused),
                                ctx.settings.secret_seconds)
    now_s = time.time()
    measured = measure_autoscaler(ctx, body, spec, children, now_s)
    checked = measure_rollout(ctx, body, spec, now_s)
    act, ready_pods, idle, idle_problem = observe_zero(ctx, spec, namespace, name, children)
    return Observed(body, None if isinstance(parsed, plan.Problem) else parsed, problem, children, served, endpoints,
                    pods, token, due, refused, measured, checked, now_s, tuple(ctx.cache.pods(namespace, name)),
                    act, ready_pods, idle, idle_problem, store_errors=ask_unready_servers(ctx, spec, namespace, name, token))


def ask_unready_servers(ctx: OperatorContext, spec: api.ModelDeploymentSpec | None, namespace: str, name: str,
                        token: str | None) -> tuple[str, ...]:
    """storage.uri: why pods that are not ready cannot list the store, from their admin ports (a
    server that cannot load its first version stays up and not ready: no crash loop to see)."""
    if spec is None or not spec.model.storage.uri or token is None or not ctx.settings.pod_admin:
        return ()
    unready = servers.unready_endpoints(ctx.cache.endpoint_slices(namespace, render.admin_service_name(name)))
    if not unready:
        return ()
    reports = servers.fetch_reports(unready, token, api.model_name(spec, name))
    return tuple(f"pod {r.pod}: {r.store_error}" for r in reports if r.store_error and not r.unreachable)


def observe_zero(ctx: OperatorContext, spec: api.ModelDeploymentSpec | None, namespace: str, name: str,
                 children: dict[plan.ChildKey, Obj]
                 ) -> tuple[scaletozero.Activator | None, tuple[scaletozero.PodEndpoint, ...], float | None, str]:
    """Scale to zero: the ready pods' model ports (the admin Service's slices), the activator told
    them (an idempotent PUT, whose answer is what it holds and where its ports are), and, while pods
    run and nothing is held, the inference requests of the idle window from Prometheus."""
    a = spec.autoscaling if spec is not None else None
    limits = a.to_zero if a is not None and a.mode == api.AutoscalingMode.operator else None
    if a is None or limits is None:
        return None, (), None, ""
    pods = scaletozero.pod_endpoints(ctx.cache.endpoint_slices(namespace, render.admin_service_name(name)))
    url = ctx.settings.activator_url
    act = activator.sync(url, ctx.settings.activator_token, namespace, name, limits, pods) if url else None
    running = int((((children.get(("Deployment", name)) or {}).get("spec")) or {}).get("replicas") or 0) > 0
    if not running or act is None or not act.reachable or act.held:
        return act, tuple(pods), None, ""
    prom = a.prometheus.url if a.prometheus else ctx.settings.prometheus_url
    requests, why = measure.idle_requests(prom, namespace, name, limits.idle_seconds)
    return act, tuple(pods), requests, why


def ask_servers(ctx: OperatorContext, spec: api.ModelDeploymentSpec | None, namespace: str, name: str,
                children: dict[plan.ChildKey, Obj], token: str | None
                ) -> tuple[tuple[Endpoint, ...], tuple[PodReport, ...] | None, dict[int, VersionReport] | None,
                           tuple[str, ...]]:
    """Each ready pod's report from its admin port (and the pods that refused the token); when no
    pod can be reached there and the Deployment has ready pods, one server's version report through
    the Service instead."""
    if spec is None:
        return (), None, None, ()
    model = api.model_name(spec, name)
    endpoints = tuple(servers.ready_endpoints(ctx.cache.endpoint_slices(namespace, render.admin_service_name(name))))
    pods: tuple[PodReport, ...] | None = None
    refused: tuple[str, ...] = ()
    if token is not None and ctx.settings.pod_admin and endpoints:
        reports = tuple(servers.fetch_reports(endpoints, token, model))
        refused = tuple(r.pod for r in reports if r.token_refused)
        # every pod unreachable: the operator runs where it cannot reach pods (ConfigMap delivery)
        pods = None if all(r.unreachable for r in reports) else reports
    served = None
    url = ctx.settings.model_status_url
    if not pods and url and _ready_replicas(children.get(("Deployment", name))) > 0:
        served = servers.fetch_status(url.format(name=name, namespace=namespace), model, sorted(spec.version_labels or {}))
    return endpoints, pods, served, refused


def measure_autoscaler(ctx: OperatorContext, body: Obj, spec: api.ModelDeploymentSpec | None,
                       children: dict[plan.ChildKey, Obj], now_s: float) -> autoscale.Measured | None:
    """The autoscaler's metric, when the operator autoscales and an evaluation is due."""
    a = spec.autoscaling if spec is not None else None
    if a is None or a.mode != api.AutoscalingMode.operator:
        return None
    if not autoscale.due((body.get("status") or {}).get("autoscaler"), now_s, a.interval_seconds):
        return None
    meta = body["metadata"]
    ready = _ready_replicas(children.get(("Deployment", meta["name"])))
    return measure.autoscaler_metric(a, ctx.settings.prometheus_url, meta["namespace"], meta["name"], ready, now_s)


def measure_rollout(ctx: OperatorContext, body: Obj, spec: api.ModelDeploymentSpec | None,
                    now_s: float) -> rollout.Measured | None:
    """A progressive rollout's check, when one is due."""
    state = rollout.State.from_status((body.get("status") or {}).get("rollout"))
    if spec is None or spec.rollout is None or state is None:
        return None
    rplan = rollout.plan_of(spec.rollout)
    if not rollout.check_due(rplan, state, now_s):
        return None
    meta = body["metadata"]
    return measure.rollout_check(spec.rollout, ctx.settings.prometheus_url, meta["namespace"], meta["name"],
                                 state.from_version, state.to_version, rplan.window, state.shadowing)


def _ready_replicas(deployment: Obj | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def claim_exists(ctx: OperatorContext, namespace: str, claim: str) -> bool:
    """Whether the PersistentVolumeClaim exists: a GET, unless one found it within
    `ctx.settings.claim_seconds` (a claim in use cannot go away: Kubernetes' pvc-protection keeps it while
    pods mount it). A missing claim is asked for again at every reconcile."""
    key = (namespace, claim)
    if ctx.claims_seen.get(key, 0.0) > time.monotonic():
        return True
    try:
        found = ctx.kube.get("v1", "PersistentVolumeClaim", namespace, claim) is not None
    except KubeError as exc:
        raise Retry(f"checking storage: {exc}", 1) from exc
    if found:
        ctx.claims_seen[key] = time.monotonic() + ctx.settings.claim_seconds
    else:
        ctx.claims_seen.pop(key, None)
    return found


# -- execute --
def execute(ctx: OperatorContext, body: Obj, decided: Plan) -> Outcome | None:
    """Do what the plan says; None when the ModelDeployment went away meanwhile."""
    if decided.finalizer == "remove" and ctx.settings.activator_url:
        meta = body["metadata"]
        activator.forget(ctx.settings.activator_url, ctx.settings.activator_token, meta["namespace"], meta["name"])
    if decided.finalizer is not None and not _finalizer(ctx, body, decided.finalizer):
        return None
    if not body["metadata"].get("deletionTimestamp"):
        problem = sync_slices(ctx, body, decided.slices)
        if problem is not None:
            return Outcome({}, problem)
    applied: dict[plan.ChildKey, Obj] = {}
    for action in decided.writes:
        try:
            out = create(ctx, body, action) if action.verb == "create" else apply(ctx, action.desired)
        except KubeError as exc:
            metrics.API_ERRORS.labels(status=str(exc.status)).inc()
            if exc.transient:
                raise Retry(f"writing {action.key[0]} {action.key[1]}: {exc}", 0.5 if exc.status == 409 else 1) from exc
            return Outcome(applied, plan.Problem("ApplyFailed", f"the API server rejected a child: {exc.message}"))
        except NotOurs as exc:
            return Outcome(applied, exc.problem)
        if out is None:
            continue  # the token Secret, there already
        applied[action.key] = out
        if action.event is not None and (not action.event.only_if_changed or _changed(action, out)):
            post_event(ctx, body, action.event)
    pushed: tuple[PushResult, ...] = ()
    if decided.push_to and decided.token and decided.routing is not None:
        # after the ConfigMap: a pod that starts meanwhile reads the same table from routing.json
        pushed = tuple(servers.push(decided.push_to, decided.token, decided.routing))
        for r in pushed:
            if r.error:
                log.info("routing push to %s/%s pod %s: %s", body["metadata"]["namespace"], body["metadata"]["name"],
                         r.pod, r.error)
    return Outcome(applied, pushed=pushed)


def sync_slices(ctx: OperatorContext, body: Obj, desired: tuple[Obj, ...]) -> plan.Problem | None:
    """The Service's EndpointSlices that the operator writes (scale to zero), before the children:
    the activator's slice is in place before a Deployment scaled to zero loses its pods. Slices of
    ours no longer wanted (the pods moved, scale to zero turned off) are deleted."""
    meta = body["metadata"]
    live = {s["metadata"]["name"]: s for s in ctx.cache.endpoint_slices(meta["namespace"], meta["name"])
            if scaletozero.ours(s)}
    try:
        for s in desired:
            if not scaletozero.slice_in_sync(s, live.get(s["metadata"]["name"])):
                ctx.cache.wrote(ctx.kube.apply(s))
        for gone in sorted(set(live) - {s["metadata"]["name"] for s in desired}):
            ctx.kube.delete("discovery.k8s.io/v1", "EndpointSlice", meta["namespace"], gone)
            ctx.cache.deleted(live[gone])
    except KubeError as exc:
        metrics.API_ERRORS.labels(status=str(exc.status)).inc()
        if exc.transient:
            raise Retry(f"writing the Service's EndpointSlices: {exc}", 1) from exc
        return plan.Problem("ApplyFailed", f"the API server rejected an EndpointSlice: {exc.message}")
    return None


class NotOurs(Exception):
    def __init__(self, problem: plan.Problem):
        super().__init__(problem.message)
        self.problem = problem


def create(ctx: OperatorContext, body: Obj, action: plan.ChildAction) -> Obj | None:
    """A POST, which fails (409) when an object of that name exists: never a takeover. The token
    Secret is then done (None: it is there; the operator cannot read it). Another child that exists
    is ours only if the cache has it with our ownerReference by now (the watch event of a create
    whose answer was lost); else NotOurs. A child created is then applied once, so that our field
    manager owns its fields as applied (clients.kube.Kube.create)."""
    meta, desired = body["metadata"], action.desired
    key = (meta["namespace"], meta["name"], str(meta.get("uid") or ""))
    try:
        out = ctx.kube.create(desired)
    except KubeError as exc:
        if exc.status != 409:
            raise
        if action.exists_ok:
            ctx.secrets_created[key] = time.monotonic()
            return None
        cached = ctx.cache.get(action.key[0], meta["namespace"], action.key[1])
        if cached is None or not plan.owned(cached, key[2]):
            raise NotOurs(plan.not_owned(action.key[0], action.key[1], meta["namespace"], cached, plan.owner_of(body))) from exc
        return apply(ctx, desired)
    if action.exists_ok:
        ctx.secrets_created[key] = time.monotonic()
        return {k: v for k, v in out.items() if k not in ("data", "stringData")}  # the token stays out of memory
    ctx.cache.wrote(out)
    return apply(ctx, desired)


def apply(ctx: OperatorContext, desired: Obj) -> Obj:
    """Server-side apply (force: the operator owns every field it renders) of a child that carries
    our ownerReference; then, when the answer shows the fields our create left to our field manager
    as an Update, that entry is dropped (clients.kube.Kube.drop_create_entry)."""
    out = ctx.kube.apply(desired)
    ctx.cache.wrote(out)
    try:
        dropped = ctx.kube.drop_create_entry(out)
    except KubeError as exc:  # someone changed it meanwhile: the next apply's answer tells again
        log.info("could not drop the create's managedFields entry of %s %s: %s", desired["kind"],
                 desired["metadata"]["name"], exc)
        return out
    if dropped is not None:
        ctx.cache.wrote(dropped)
        return dropped
    return out


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
        ctx.kube.post_event(body, event.type, event.reason, event.message, ctx.settings.reporting_component, ctx.settings.reporting_instance)
    except KubeError as exc:
        log.info("could not post the %s event of %s: %s", event.reason, body["metadata"].get("name"), exc)
