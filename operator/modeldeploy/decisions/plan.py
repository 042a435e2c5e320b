"""Pure decisions of a reconcile: from what was observed to what to do and what to say.

A reconcile reads as observe → plan → execute → report (reconcile.py does the I/O):

- `assess(body, claim_found)`: the spec parsed, or the problem that stops it (InvalidSpec,
  StorageNotFound, what the admin's policy refuses: HostPathNotAllowed, PrometheusURLNotAllowed) —
  `observe` calls it, as it needs the model's name and labels to ask the servers;
- `plan(observed, defaults)`: for each child, create, update or keep (KServe's CheckResult), with
  the Event each action earns (Created; DriftCorrected when a child we had applied was changed since),
  and whether our finalizer must be added or, for a ModelDeployment being deleted, removed. Only a
  child that carries this ModelDeployment's ownerReference (its uid) is ever updated; a missing one
  is created (a POST, which fails on an object of that name), and one that exists without our
  ownerReference stops the plan (ChildNotOwned): the operator never takes over what it did not create;
- `report(observed, plan, outcome, now)`: the status patch to write (None when nothing changed) and
  the summary Event (Reconciled for a new generation, or the problem's Warning once per problem).

Everything here takes and returns plain data; tests/operator/test_plan.py drives it table by table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import admintoken, autoscale, render, rollout, scaletozero, serverconfig, traffic
from modeldeploy.decisions import policy as admin_policy
from modeldeploy.decisions.records import Endpoint, PodReport, PushResult, VersionReport
from modeldeploy.decisions.status import (
    STORAGE_UNAVAILABLE,
    Problem,
    compute_status,
    container_failure,
    failure_text,
    store_error_of,
)

Obj = dict[str, Any]
ChildKey = tuple[str, str]  # (kind, name)
FINALIZER = f"{api.GROUP}/finalizer"


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    only_if_changed: bool = False  # post only if the apply changed the object (resourceVersion moved)


@dataclass(frozen=True)
class Observed:
    """What one reconcile saw: the ModelDeployment, its parsed spec or problem, its children as they
    are (by kind and name; absent ones missing), and the servers' own version reports (None: not asked
    or unreachable). Later: pod endpoints, per-pod reports."""

    body: Obj
    spec: api.ModelDeploymentSpec | None
    problem: Problem | None
    children: Mapping[ChildKey, Obj] = field(default_factory=dict)
    served: dict[int, VersionReport] | None = None
    # The ready pods' admin addresses and what each said (None: they cannot be asked, so routing
    # tables go by ConfigMap), the admin token (derived: admintoken.py), whether its Secret's create
    # is due, and the pods that refused the token (HTTP 401).
    endpoints: tuple[Endpoint, ...] = ()
    pods: tuple[PodReport, ...] | None = None
    token: str | None = None
    secret_due: bool = True
    token_refused: tuple[str, ...] = ()
    measured: autoscale.Measured | None = None  # the autoscaler's metric, when an evaluation was due
    rollout_measured: rollout.Measured | None = None  # a rollout's check, when one was due
    now: float = 0.0  # Unix seconds of this reconcile (rollout steps)
    server_pods: tuple[Obj, ...] = ()  # the Deployment's pods as the API server has them (container states)
    # scale to zero: the activator's answer, the ready pods' model ports, the inference requests of
    # the idle window (None: unknown, with why)
    activator: scaletozero.Activator | None = None
    ready_pods: tuple[scaletozero.PodEndpoint, ...] = ()
    idle_requests: float | None = None
    idle_problem: str = ""
    # storage.uri: what pods that are not ready say about the store (they cannot load their first
    # version while it cannot be listed), as "pod P: why"
    store_errors: tuple[str, ...] = ()

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))


@dataclass(frozen=True)
class ChildAction:
    verb: Literal["create", "update", "keep"]
    desired: Obj
    live: Obj | None = None  # the child as observed
    event: Event | None = None  # (for a create: posted only when the object was created)
    exists_ok: bool = False  # a create that finds the object there is done (the token Secret: see admintoken.py)

    @property
    def key(self) -> ChildKey:
        return (self.desired["kind"], self.desired["metadata"]["name"])


@dataclass(frozen=True)
class Plan:
    finalizer: Literal["add", "remove"] | None = None
    children: tuple[ChildAction, ...] = ()
    config_hash: str | None = None
    traffic: traffic.Decision | None = None  # the routing table to put in force, and where
    routing: Obj | None = None  # its document (routing.json, and the pushes)
    push_to: tuple[Endpoint, ...] = ()
    token: str | None = None
    scaling: autoscale.Scaling | None = None
    rollout: rollout.Step | None = None
    problem: Problem | None = None  # why nothing is written (ChildNotOwned)
    zero: scaletozero.Decision | None = None  # scale to zero's replicas and reason (None: off)
    slices: tuple[Obj, ...] = ()  # the Service's EndpointSlices the operator writes (scale to zero)

    @property
    def writes(self) -> tuple[ChildAction, ...]:
        return tuple(c for c in self.children if c.verb != "keep")


@dataclass(frozen=True)
class Outcome:
    """What executing a plan did: the API server's answers to the applies, and the failure that
    stopped it (ApplyFailed: a child the API server refused)."""

    applied: Mapping[ChildKey, Obj] = field(default_factory=dict)
    failure: Problem | None = None
    pushed: tuple[PushResult, ...] = ()


@dataclass(frozen=True)
class Report:
    status: Obj | None  # the merge patch for the status subresource, None when unchanged
    events: tuple[Event, ...]
    problem: Problem | None


# -- assess: the spec, or why it cannot work --
def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "").removeprefix("Value error, ")
        parts.append(f"spec.{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_spec(body: Obj) -> api.ModelDeploymentSpec | Problem:
    bad_name = api.name_problem(body["metadata"]["name"])
    if bad_name:
        return Problem("InvalidSpec", bad_name)
    try:
        spec = api.ModelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Problem("InvalidSpec", format_validation_error(exc))
    bad_args = serverconfig.args_problem(spec)
    return Problem("InvalidSpec", bad_args) if bad_args else spec


def claim_name(spec: api.ModelDeploymentSpec | Problem) -> str | None:
    """The PersistentVolumeClaim the spec needs (to check that it exists), if any."""
    if isinstance(spec, Problem) or spec.model.storage.pvc is None:
        return None
    return spec.model.storage.pvc.claim_name


def warmup_requests_ref(spec: api.ModelDeploymentSpec | Problem) -> api.ConfigMapKey | None:
    """The ConfigMap key holding warmup requests the spec uses, if any (to check it)."""
    if isinstance(spec, Problem) or not spec.warmup.enabled or spec.warmup.effective_source != api.WarmupSource.config_map:
        return None
    return spec.warmup.requests


def warmup_requests_problem(ref: api.ConfigMapKey, namespace: str, configmap: Obj | None) -> Problem | None:
    """Pure: the user's warmup requests ConfigMap must exist, hold the key, and hold REST API bodies."""
    import json

    if configmap is None:
        return Problem("WarmupRequestsNotFound", f'ConfigMap "{ref.name}" not found in namespace "{namespace}" '
                       "(spec.warmup.requests.name); create it or fix the spec")
    text = (configmap.get("data") or {}).get(ref.key)
    if text is None:
        return Problem("WarmupRequestsNotFound", f'ConfigMap "{ref.name}" has no key "{ref.key}" (spec.warmup.requests.key)')
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return Problem("InvalidWarmupRequests", f'ConfigMap "{ref.name}" key "{ref.key}" is not JSON: {exc}')
    bodies = doc if isinstance(doc, list) else [doc]
    for i, b in enumerate(bodies):
        if not isinstance(b, dict) or ("instances" in b) == ("inputs" in b):
            return Problem("InvalidWarmupRequests", f'ConfigMap "{ref.name}" key "{ref.key}": request {i} must be an '
                           'object with exactly one of "instances" or "inputs" (the REST API\'s format)')
    if len(bodies) > 1000:
        return Problem("InvalidWarmupRequests", f"at most 1000 warmup requests (TF Serving's limit), not {len(bodies)}")
    return None


def assess(body: Obj, parsed: api.ModelDeploymentSpec | Problem, claim_found: bool | None,
           warmup_problem: Problem | None = None, policy: admin_policy.Policy | None = None) -> Problem | None:
    if isinstance(parsed, Problem):
        return parsed
    refused = admin_policy.problem(parsed, policy or admin_policy.Policy())
    if refused is not None:
        return refused
    claim = claim_name(parsed)
    if claim is not None and claim_found is False:
        namespace = body["metadata"]["namespace"]
        return Problem(
            "StorageNotFound",
            f'PersistentVolumeClaim "{claim}" not found in namespace "{namespace}"; create it or fix spec.model.storage.pvc.claimName',
        )
    return warmup_problem


# -- plan: what to do --
def owner_of(body: Obj) -> render.Owner:
    meta = body["metadata"]
    return render.Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))


def rendered_hash(obj: Obj | None) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(render.RENDERED_HASH_ANNOTATION)


def owned(live: Obj, uid: str) -> bool:
    """Whether a child carries the ownerReference of the ModelDeployment with this uid."""
    return bool(uid) and any(ref.get("uid") == uid for ref in (live.get("metadata") or {}).get("ownerReferences") or [])


def not_owned(kind: str, name: str, namespace: str, live: Obj | None = None, owner: render.Owner | None = None) -> Problem:
    """The problem of a child name taken by an object this ModelDeployment did not create."""
    refs = ((live or {}).get("metadata") or {}).get("ownerReferences") or []
    earlier = next((r for r in refs if owner is not None and r.get("kind") == api.KIND and r.get("name") == owner.name), None)
    if earlier is not None:
        return Problem("ChildNotOwned", f"{kind} {name} belongs to an earlier ModelDeployment of this name (uid "
                       f"{earlier.get('uid')}) and waits for Kubernetes' garbage collector; the operator creates its "
                       "own once that one is gone")
    return Problem("ChildNotOwned", f"{kind} {name} already exists in namespace {namespace} and was not created by this "
                   "ModelDeployment (it has no ownerReference to it); the operator never takes over an object it did "
                   f"not create: delete or rename that {kind}, or give the ModelDeployment another name")


def applied_by_us(live: Obj) -> bool:
    """Whether our server-side apply manages the child (its answer always says so), as far as the API
    server tells (a server that reports no managedFields: assumed). A child whose create went
    through but whose apply right after did not is applied again (else the create's `Update` entry
    would keep a field that a later rendering leaves out)."""
    entries = (live.get("metadata") or {}).get("managedFields")
    if not entries:
        return True
    return any(e.get("manager") == api.FIELD_MANAGER and e.get("operation") == "Apply" and not e.get("subresource")
               for e in entries)


def child_action(desired: Obj, live: Obj | None, applied_before: bool = False) -> ChildAction:
    """`applied_before`: this generation was applied already, so a missing child was deleted since."""
    what = f"{desired['kind']} {desired['metadata']['name']}"
    if live is None and applied_before:
        return ChildAction("create", desired, None, Event("Normal", "DriftCorrected", f"re-created {what}, deleted since"))
    if live is None:
        return ChildAction("create", desired, None, Event("Normal", "Created", f"created {what}"))
    if render.in_sync(desired, live) and applied_by_us(live):
        return ChildAction("keep", desired, live)  # same rendered hash, every rendered field in place
    if rendered_hash(live) == rendered_hash(desired):
        # We had applied exactly this rendering before: someone changed the child since.
        drift = Event("Normal", "DriftCorrected", f"restored {what} to the rendered spec", only_if_changed=True)
        return ChildAction("update", desired, live, drift)
    return ChildAction("update", desired, live)


def plan(observed: Observed, defaults: render.Defaults) -> Plan:
    finalizers = observed.body["metadata"].get("finalizers") or []
    if observed.deleting:
        return Plan(finalizer="remove" if FINALIZER in finalizers else None)
    finalizer: Literal["add"] | None = None if FINALIZER in finalizers else "add"
    if observed.problem is not None or observed.spec is None:
        return Plan(finalizer=finalizer)  # nothing is applied until the problem is fixed
    spec, owner = observed.spec, owner_of(observed.body)
    generation = int(observed.body["metadata"].get("generation") or 1)
    in_force = traffic.Table.from_status((observed.body.get("status") or {}).get("routing"))
    stepped = rollout.step(spec, observed.body, observed.pods, observed.rollout_measured, observed.now)
    decision = traffic.decide(spec, generation, in_force, observed.pods, stepped.override, stepped.unload)
    previous = observed.body.get("status") or {}
    scaled = autoscale.scale(spec, observed.children.get(("Deployment", owner.name)),
                            observed.children.get(("HorizontalPodAutoscaler", owner.name)), previous.get("autoscaler"),
                            observed.measured)
    zero = scaletozero.plan(spec, observed.children.get(("Deployment", owner.name)), scaled.replicas, observed.activator,
                            observed.idle_requests, observed.idle_problem, previous.get("scaleToZero"), observed.now)
    serving = render.Serving(decision.load_versions, decision.table.document(api.model_name(spec, owner.name)),
                             scaled.replicas if zero is None else zero.replicas)
    children = render.render_all(spec, owner, defaults, serving)
    for c in children:
        live = observed.children.get((c["kind"], c["metadata"]["name"]))
        if live is not None and not owned(live, owner.uid):
            return Plan(finalizer=finalizer, problem=not_owned(c["kind"], c["metadata"]["name"], owner.namespace, live, owner))
    applied = previous.get("observedGeneration") == generation and previous.get("configHash") is not None
    actions = (secret_action(owner, observed),
               *(child_action(c, observed.children.get((c["kind"], c["metadata"]["name"])), applied) for c in children))
    targets = tuple(ep for ep in observed.endpoints if ep.pod in decision.push_to)
    return Plan(finalizer=finalizer, children=actions, config_hash=render.config_hash_of(children),
                traffic=decision, routing=serving.routing, push_to=targets if observed.token else (),
                token=observed.token, scaling=scaled, rollout=stepped, zero=zero,
                slices=tuple(scaletozero.service_slices(owner, list(observed.ready_pods) if zero.replicas else [],
                                                        observed.activator)) if zero else ())


def secret_action(owner: render.Owner, observed: Observed) -> ChildAction:
    """The admin token Secret holds the derived token (admintoken.py); the operator only creates it,
    when a create is due, and a create that finds it there is done (the content cannot differ unless
    someone changed it, which the pods' 401s tell)."""
    name = render.token_secret_name(owner.name)
    desired = render.render_token_secret(owner, observed.token or "")
    if not observed.secret_due or not observed.token:
        return ChildAction("keep", desired)
    return ChildAction("create", desired, None, Event("Normal", "Created", f"created Secret {name}"), exists_ok=True)


# -- report: what to say --
def routing_status(decision: traffic.Decision, pushed: tuple[PushResult, ...]) -> Obj:
    """status.routing: the table in force (or being put in force) and on how many pods it is live."""
    gen = decision.table.generation
    confirmed = [r for r in pushed if not r.error and r.generation >= gen]
    errors = [f"push to {r.pod}: {r.error}" for r in pushed if r.error]
    live = decision.live + len(confirmed)
    out: Obj = {**decision.table.as_status(), "delivery": decision.delivery, "summary": traffic.summary(decision.table)}
    if decision.delivery == "Push":
        out.update(livePods=live, readyPods=decision.ready)
        lagging = sorted(set(decision.push_to) - {r.pod for r in confirmed})
        waiting = [*decision.waiting, *errors, *(f"table {gen} not live on {p} yet" for p in lagging if not any(
            e.startswith(f"push to {p}:") for e in errors))]
        if waiting:
            out["waiting"] = waiting
    if decision.failed:
        out["failed"] = list(decision.failed)
    return out


def _differs(new: Obj, old: Obj) -> bool:
    if set(new) != set(old):
        return True
    strip = lambda cs: [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or []]  # noqa: E731
    return any((strip(new[k]) != strip(old.get(k))) if k == "conditions" else new[k] != old.get(k) for k in new)


def summary_event(problem: Problem | None, previous: Obj, generation: int, config_hash: str | None) -> Event | None:
    """The problem's Warning once per problem and generation, or Reconciled once per generation."""
    if problem is not None:
        was = {c.get("type"): c for c in previous.get("conditions") or []}.get("Degraded") or {}
        if was.get("reason") != problem.reason or was.get("message") != problem.message or previous.get("observedGeneration") != generation:
            return Event("Warning", problem.reason, problem.message)
        return None
    if previous.get("observedGeneration") != generation:
        return Event("Normal", "Reconciled", f"applied generation {generation} (config hash {config_hash})")
    return None


def report(observed: Observed, plan_: Plan, outcome: Outcome, now: str) -> Report:
    if observed.deleting:
        return Report(None, (), None)
    meta = observed.body["metadata"]
    generation = int(meta.get("generation") or 1)
    previous = observed.body.get("status") or {}
    problem = observed.problem or plan_.problem or outcome.failure
    # Status counts the Deployment as the apply left it, else as it is (pods of an earlier
    # generation may still serve while a problem blocks the new one).
    deployment = outcome.applied.get(("Deployment", meta["name"])) or observed.children.get(("Deployment", meta["name"]))
    routing = routing_status(plan_.traffic, outcome.pushed) if problem is None and plan_.traffic else None
    status = compute_status(
        spec=observed.spec, name=meta["name"], generation=generation, deployment=deployment, problem=problem,
        previous=previous, config_hash=plan_.config_hash if problem is None else previous.get("configHash"), now=now,
        served=(traffic.version_reports(observed.pods, plan_.traffic.table) if observed.pods
                and plan_.traffic else observed.served) if problem is None else None,
        routing=routing, autoscaler=plan_.scaling.status if plan_.scaling and problem is None else previous.get("autoscaler"),
        progressive=rollout.status_of(plan_.rollout.state, observed.body) if plan_.rollout and problem is None
        else previous.get("rollout"),
        failing=container_failure(observed.server_pods) if problem is None else None,
        token_refused=admintoken.refusal(list(observed.token_refused), len(observed.endpoints),
                                         render.token_secret_name(meta["name"]), meta["namespace"])
        if observed.token_refused and problem is None else None,
        store_error=(store_error_of(observed.pods) or next(iter(observed.store_errors), None))
        if problem is None else None,
    )
    if plan_.zero is not None and problem is None:
        status = scaletozero.with_status(status, plan_.zero, observed.activator, observed.idle_requests,
                                         scaletozero.cold_start(observed.activator, list(observed.server_pods),
                                                                _warmup_seconds(observed.pods)),
                                         previous, generation, now)
    event = summary_event(problem, previous, generation, plan_.config_hash)
    events = ((event,) if event else ()) + failed_version_event(status, previous) + failing_event(status, previous) \
        + token_event(status, previous) + storage_event(status, previous)
    if plan_.scaling is not None and problem is None:
        events += tuple(Event(t, r, m) for t, r, m in plan_.scaling.events)
    if plan_.rollout is not None and problem is None:
        events += tuple(Event(t, r, m) for t, r, m in plan_.rollout.events)
    if plan_.zero is not None and plan_.zero.event is not None and problem is None:
        events += (Event(*plan_.zero.event),)
    patch = merge_patch(previous, status) if _differs(status, previous) else None
    return Report(patch, events, problem)


def _warmup_seconds(pods: tuple[PodReport, ...] | None) -> float | None:
    """The longest warmup a ready pod reported (the cold start's "warmed up" part)."""
    found = [float(w["seconds"]) for p in pods or () for w in p.warmup.values() if isinstance(w.get("seconds"), int | float)]
    return max(found) if found else None


def merge_patch(old: Obj, new: Obj) -> Obj:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: a key gone from a map is sent
    as null at every depth (a merge patch of a map keeps the keys it does not name, so a label that
    left status.routing.labels would otherwise stay); lists are replaced whole."""
    out: Obj = {k: None for k in old if k not in new}
    for k, v in new.items():
        before = old.get(k)
        out[k] = merge_patch(before, v) if isinstance(v, dict) and isinstance(before, dict) else v
    return out


def failing_event(status: Obj, previous: Obj) -> tuple[Event, ...]:
    """A Warning when a server container starts failing, or fails for another reason (not at every
    restart of the same crash loop)."""
    now, was = status.get("lastFailureInfo"), previous.get("lastFailureInfo") or {}
    if not now or (now.get("reason"), now.get("message"), now.get("pod")) == (was.get("reason"), was.get("message"),
                                                                             was.get("pod")):
        return ()
    return (Event("Warning", "ContainerFailing", failure_text(now)),)


def _degraded(st: Obj) -> Obj:
    return {c.get("type"): c for c in st.get("conditions") or []}.get("Degraded") or {}


def storage_event(status: Obj, previous: Obj) -> tuple[Event, ...]:
    """A Warning when pods start failing to list the model's object storage, or fail for another
    reason (not at every reconcile while they do)."""
    now, was = _degraded(status), _degraded(previous)
    if now.get("reason") == STORAGE_UNAVAILABLE and (was.get("reason"), was.get("message")) != (
            STORAGE_UNAVAILABLE, now.get("message")):
        return (Event("Warning", STORAGE_UNAVAILABLE, str(now.get("message", ""))),)
    return ()


def token_event(status: Obj, previous: Obj) -> tuple[Event, ...]:
    """A Warning when pods start refusing the operator's admin token (not at every reconcile while they do)."""
    now, was = _degraded(status), _degraded(previous)
    if now.get("reason") == admintoken.REJECTED and was.get("reason") != admintoken.REJECTED:
        return (Event("Warning", admintoken.REJECTED, str(now.get("message", ""))),)
    return ()


def failed_version_event(status: Obj, previous: Obj) -> tuple[Event, ...]:
    """A Warning naming the version that failed to load (a warmup request that failed, say), once
    per message: the Degraded condition says it too."""
    def degraded(st: Obj) -> Obj:
        return {c.get("type"): c for c in st.get("conditions") or []}.get("Degraded") or {}

    now, was = degraded(status), degraded(previous)
    if now.get("reason") == "VersionFailed" and (was.get("reason"), was.get("message")) != ("VersionFailed", now.get("message")):
        return (Event("Warning", "VersionFailed", str(now.get("message", ""))),)
    return ()


def next_look(spec: api.ModelDeploymentSpec | None, status: Obj, now: float, resync: float, recheck: float,
              traffic_moving: bool) -> float:
    """Seconds until the ModelDeployment is reconciled again: the periodic re-check (`resync`), or
    sooner when something is due: labels or weights still moving (`recheck`), the autoscaler's next
    evaluation, a rollout's next check (or `recheck` while it loads the new version or promotes), the
    token Secret's next create while pods refuse the operator's token."""
    due = [resync, recheck] if traffic_moving else [resync]
    if _degraded(status).get("reason") == admintoken.REJECTED:
        due.append(admintoken.RETRY_SECONDS)
    if spec is not None:
        due += [d for d in (autoscale.next_evaluation(spec), rollout.next_look(spec, status, now, recheck))
                if d is not None]
    return min(due)
