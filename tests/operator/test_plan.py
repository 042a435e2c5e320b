"""The pure decisions of a reconcile (plan.py), table by table: what to do with each child and the
finalizer, and what status and Events to report, from plain observed data."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from modeldeploy.decisions import plan, render
from modeldeploy.decisions.plan import Event, Observed, Outcome
from modeldeploy.decisions.status import Problem

DEFAULTS = render.Defaults()
UID = "4b1a9e0e-1c55-4a8e-9d77-0c3a7d2b9f10"


def body(name: str = "m", generation: int = 1, status: dict | None = None, finalizers: list[str] | None = None,
         deleting: bool = False, **spec: Any) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": UID, "generation": generation, "resourceVersion": "7"}
    if finalizers is not None:
        meta["finalizers"] = finalizers
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec_body = {"model": {"storage": {"pvc": {"claimName": "models"}}}, **spec}
    out = {"apiVersion": "serving.modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": meta, "spec": spec_body}
    if status is not None:
        out["status"] = status
    return out


def observed(b: dict, children: dict | None = None, claim_found: bool | None = True, secret_due: bool | None = None,
             **more: Any) -> Observed:
    """What a reconcile saw; the token Secret's create is due on a first run (no children given)."""
    parsed = plan.parse_spec(b)
    return Observed(b, None if isinstance(parsed, Problem) else parsed, plan.assess(b, parsed, claim_found), children or {},
                    token="t0ken", secret_due=children is None if secret_due is None else secret_due, **more)


def live_children(b: dict, ready: int = 1) -> dict[tuple[str, str], dict]:
    """The children as the API server holds them after our apply (plus fields the server adds), as
    the cache has them: the token Secret is not there (the operator never reads it)."""
    out = {}
    rendered = [a.desired for a in plan.plan(observed(b), DEFAULTS).children if a.desired["kind"] != "Secret"]
    for c in rendered:
        live = copy.deepcopy(c)
        live["metadata"].update(resourceVersion="10", uid="child-uid", creationTimestamp="2026-01-01T00:00:00Z")
        if c["kind"] == "Deployment":
            live["metadata"]["generation"] = 1
            live["status"] = {"observedGeneration": 1, "replicas": 1, "readyReplicas": ready, "updatedReplicas": 1}
        out[(c["kind"], c["metadata"]["name"])] = live
    return out


def verbs(p: plan.Plan) -> dict[str, str]:
    """By kind; the headless admin Service as "AdminService"."""
    return {("AdminService" if a.desired["metadata"]["name"].endswith("-admin") else a.desired["kind"]): a.verb
            for a in p.children}


# -- plan: the children and the finalizer --
def test_a_new_model_deployment_gets_the_finalizer_and_every_child_created() -> None:
    p = plan.plan(observed(body()), DEFAULTS)
    assert p.finalizer == "add"
    assert [a.desired["kind"] for a in p.children] == ["Secret", "ConfigMap", "Deployment", "Service", "Service",
                                                       "PodDisruptionBudget"]
    assert verbs(p) == dict.fromkeys(("Secret", "ConfigMap", "Deployment", "Service", "AdminService",
                                      "PodDisruptionBudget"), "create")
    assert [a.event for a in p.children][2] == Event("Normal", "Created", "created Deployment m")
    assert p.config_hash == render.config_hash_of([a.desired for a in p.children])


def test_children_in_sync_are_kept_and_nothing_is_written() -> None:
    b = body(finalizers=[plan.FINALIZER])
    p = plan.plan(observed(b, live_children(b)), DEFAULTS)
    assert p.finalizer is None and not p.writes and set(verbs(p).values()) == {"keep"}


@pytest.mark.parametrize(("kind", "edit", "drift"), [
    ("Deployment", lambda d: d["spec"].update(replicas=7), True),  # edited by hand: restore, say so
    ("ConfigMap", lambda c: c["data"].update({"models.config": "garbage"}), True),
    ("Service", lambda s: s["metadata"]["annotations"].update({render.RENDERED_HASH_ANNOTATION: "older"}), False),  # an older rendering
])
def test_a_changed_child_is_updated_and_only_drift_earns_an_event(kind: str, edit: Any, drift: bool) -> None:
    b = body(finalizers=[plan.FINALIZER])
    children = live_children(b)
    edit(children[(kind, f"m{'-config' if kind == 'ConfigMap' else ''}")])
    p = plan.plan(observed(b, children), DEFAULTS)
    assert verbs(p)[kind] == "update" and [a.desired["kind"] for a in p.writes] == [kind]
    event = p.writes[0].event
    assert (event is not None and event.reason == "DriftCorrected") == drift
    assert event is None or event.only_if_changed  # posted only if the apply really changed the child


def test_a_spec_change_updates_what_it_renders() -> None:
    b = body(finalizers=[plan.FINALIZER])
    children = live_children(b)
    changed = body(generation=2, finalizers=[plan.FINALIZER], replicas=3, versionLabels={})
    p = plan.plan(observed(changed, children), DEFAULTS)
    assert verbs(p)["Deployment"] == "update" and p.writes[0].event is None


@pytest.mark.parametrize(("b", "claim_found", "reason"), [
    (body(rollout={"steps": [50, 10]}), True, "InvalidSpec"),
    (body(server={"extraArgs": ["--port=1"]}), True, "InvalidSpec"),
    (body(name="a.b"), True, "InvalidSpec"),
    (body(), False, "StorageNotFound"),
])
def test_a_problem_applies_nothing(b: dict, claim_found: bool, reason: str) -> None:
    o = observed(b, claim_found=claim_found)
    assert o.problem is not None and o.problem.reason == reason
    p = plan.plan(o, DEFAULTS)
    assert p.children == () and p.finalizer == "add" and p.config_hash is None


@pytest.mark.parametrize(("finalizers", "expected"), [([plan.FINALIZER, "other/x"], "remove"), (["other/x"], None), ([], None)])
def test_a_deleting_model_deployment_only_releases_its_finalizer(finalizers: list[str], expected: str | None) -> None:
    b = body(finalizers=finalizers, deleting=True)
    o = Observed(b, None, None)
    p = plan.plan(o, DEFAULTS)
    assert p.finalizer == expected and p.children == ()
    assert plan.report(o, p, Outcome(), "T") == plan.Report(None, (), None)


# -- report: status and the summary event --
def test_a_new_generation_is_reported_once() -> None:
    b = body(finalizers=[plan.FINALIZER])
    o = observed(b, live_children(b))
    p = plan.plan(o, DEFAULTS)
    first = plan.report(o, p, Outcome(), "T1")
    assert first.status is not None and first.status["observedGeneration"] == 1 and first.problem is None
    assert first.events == (Event("Normal", "Reconciled", f"applied generation 1 (config hash {p.config_hash})"),)
    # once the status is written, the same observation reports nothing new
    again = body(finalizers=[plan.FINALIZER], status=first.status)
    o2 = observed(again, live_children(again))
    assert plan.report(o2, plan.plan(o2, DEFAULTS), Outcome(), "T2") == plan.Report(None, (), None)


def test_a_problem_is_warned_once_and_status_keeps_describing_the_old_pods() -> None:
    good = body(finalizers=[plan.FINALIZER])
    o = observed(good, live_children(good))
    status = plan.report(o, plan.plan(o, DEFAULTS), Outcome(), "T1").status
    broken = body(generation=2, finalizers=[plan.FINALIZER], status=status, rollout={"steps": [50, 10]})
    o2 = observed(broken, live_children(good))
    r = plan.report(o2, plan.plan(o2, DEFAULTS), Outcome(), "T2")
    assert r.problem is not None and r.events == (Event("Warning", "InvalidSpec", r.problem.message),)
    assert r.status is not None and r.status["observedGeneration"] == 2 and r.status["readyReplicas"] == 1
    assert r.status["configHash"] == status["configHash"]  # what the running pods have
    warned = body(generation=2, finalizers=[plan.FINALIZER], status={**status, **r.status}, rollout={"steps": [50, 10]})
    o3 = observed(warned, live_children(good))
    assert plan.report(o3, plan.plan(o3, DEFAULTS), Outcome(), "T3").events == ()


def test_a_refused_apply_is_reported_as_apply_failed() -> None:
    b = body(finalizers=[plan.FINALIZER])
    o = observed(b)
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome({}, Problem("ApplyFailed", "the API server rejected a child: no")), "T")
    assert r.problem == Problem("ApplyFailed", "the API server rejected a child: no")
    assert [e.reason for e in r.events] == ["ApplyFailed"]
    assert r.status is not None and {c["type"]: c["reason"] for c in r.status["conditions"]}["Ready"] == "ApplyFailed"


def test_status_counts_the_deployment_as_the_apply_left_it() -> None:
    b = body(finalizers=[plan.FINALIZER])
    children = live_children(b, ready=1)
    o = observed(b, children)
    applied = copy.deepcopy(children[("Deployment", "m")])
    applied["metadata"]["generation"] = 2  # a new spec the Deployment controller has not seen yet
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome({("Deployment", "m"): applied}), "T")
    assert r.status is not None and {c["type"]: c["status"] for c in r.status["conditions"]}["Progressing"] == "True"


@pytest.mark.parametrize(("configmap", "reason", "words"), [
    (None, "WarmupRequestsNotFound", 'ConfigMap "w" not found'),
    ({"data": {}}, "WarmupRequestsNotFound", 'has no key "k"'),
    ({"data": {"k": "{not json"}}, "InvalidWarmupRequests", "not JSON"),
    ({"data": {"k": '[{"instances": [1], "inputs": [1]}]'}}, "InvalidWarmupRequests", "exactly one of"),
    ({"data": {"k": '[{"instances": [1.0]}, {"signature_name": "s", "inputs": {"x": [2.0]}}]'}}, None, ""),
])
def test_warmup_requests_from_a_configmap_are_checked_before_anything_is_applied(
        configmap: dict | None, reason: str | None, words: str) -> None:
    from modeldeploy.api import v1alpha1 as api

    ref = api.ConfigMapKey(name="w", key="k")
    problem = plan.warmup_requests_problem(ref, "ml", configmap)
    assert (problem.reason if problem else None) == reason and (words in problem.message if problem else True)
    b = body(warmup={"requests": {"name": "w", "key": "k"}})
    parsed = plan.parse_spec(b)
    assert plan.warmup_requests_ref(parsed) == ref
    if problem is not None:
        assert plan.plan(Observed(b, parsed, plan.assess(b, parsed, True, problem)), DEFAULTS).children == ()


def test_status_patches_remove_keys_that_left_nested_maps() -> None:
    """A merge patch keeps the keys of a map it does not name: a label or weight that left the
    table must be sent as null, at every depth."""
    old = {"routing": {"labels": {"stable": 1, "candidate": 2}, "weights": {"stable": 0, "candidate": 100}},
           "versionLabels": {"stable": 1, "canary": 2}, "gone": 1, "versions": [{"version": 1}]}
    new = {"routing": {"labels": {"stable": 2}, "weights": {"stable": 100}}, "versionLabels": {"stable": 2},
           "versions": [{"version": 2}]}
    patch = plan.merge_patch(old, new)
    assert patch == {"gone": None, "routing": {"labels": {"stable": 2, "candidate": None},
                                               "weights": {"stable": 100, "candidate": None}},
                     "versionLabels": {"stable": 2, "canary": None}, "versions": [{"version": 2}]}
    def apply(target: dict, p: dict) -> dict:
        out = dict(target)
        for k, v in p.items():
            if v is None:
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = apply(out[k], v)
            else:
                out[k] = v
        return out

    assert apply(old, patch) == new


def test_a_child_deleted_after_its_generation_was_applied_is_drift_not_a_creation() -> None:
    """Issue: deleting a child (the PDB) gave the Event `Created`. A child missing once this generation
    was applied is re-created with `DriftCorrected`; one missing on the first run is `Created`."""
    first = plan.plan(observed(body(finalizers=[plan.FINALIZER])), DEFAULTS)
    assert {a.event.reason for a in first.writes if a.event} == {"Created"}
    b = body(finalizers=[plan.FINALIZER], status={"observedGeneration": 1, "configHash": first.config_hash})
    children = live_children(b)
    del children[("PodDisruptionBudget", "m")]
    p = plan.plan(observed(b, children), DEFAULTS)
    assert [(a.desired["kind"], a.verb, a.event.reason if a.event else None) for a in p.writes] == [
        ("PodDisruptionBudget", "create", "DriftCorrected")]
    b["metadata"]["generation"] = 2  # a new generation: whatever is missing is new
    again = {a.desired["kind"]: a.event.reason for a in plan.plan(observed(b, children), DEFAULTS).writes if a.event}
    assert again["PodDisruptionBudget"] == "Created"


# -- never a takeover: only children with our ownerReference are updated --
def test_the_token_secret_is_created_with_the_derived_token_and_a_409_is_fine() -> None:
    p = plan.plan(observed(body()), DEFAULTS)
    (secret,) = [a for a in p.children if a.desired["kind"] == "Secret"]
    assert secret.verb == "create" and secret.exists_ok and secret.desired["stringData"] == {"token": "t0ken"}
    assert secret.desired["metadata"]["ownerReferences"][0]["uid"] == UID
    assert not any(a.exists_ok for a in p.children if a.desired["kind"] != "Secret")
    # not due: nothing to do (the operator cannot see the Secret, it only creates it again now and then)
    b = body(finalizers=[plan.FINALIZER])
    later = plan.plan(observed(b, live_children(b), secret_due=False), DEFAULTS)
    assert not later.writes


@pytest.mark.parametrize(("owner_ref", "words"), [
    (None, "was not created by this ModelDeployment"),  # made by someone, labelled as ours
    ({"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "x"}, "was not created by this ModelDeployment"),
    ({"apiVersion": "serving.modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "name": "m", "uid": "old-uid"},
     "belongs to an earlier ModelDeployment of this name (uid old-uid)"),
])
def test_a_child_without_our_owner_reference_is_never_written(owner_ref: dict | None, words: str) -> None:
    b = body(finalizers=[plan.FINALIZER])
    children = live_children(b)
    svc = children[("Service", "m")]
    svc["metadata"]["ownerReferences"] = [owner_ref] if owner_ref else []
    svc["spec"]["ports"] = []  # and different: still nothing is written
    o = observed(b, children)
    p = plan.plan(o, DEFAULTS)
    assert p.children == () and p.problem is not None and p.problem.reason == "ChildNotOwned"
    assert p.problem.message.startswith("Service m ") and words in p.problem.message
    r = plan.report(o, p, Outcome(), "T")
    assert r.problem == p.problem and [e.reason for e in r.events] == ["ChildNotOwned"]
    assert r.status is not None and {c["type"]: c["reason"] for c in r.status["conditions"]}["Degraded"] == "ChildNotOwned"


def test_pods_refusing_the_token_are_reported_once_and_looked_at_again_soon() -> None:
    from modeldeploy.decisions import admintoken
    from modeldeploy.decisions.records import Endpoint

    b = body(finalizers=[plan.FINALIZER])
    endpoints = (Endpoint("m-1", "http://10.0.0.1:8502"), Endpoint("m-2", "http://10.0.0.2:8502"))
    o = observed(b, live_children(b), endpoints=endpoints, token_refused=("m-2",))
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome(), "T1")
    assert r.problem is None and r.status is not None
    degraded = {c["type"]: c for c in r.status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AdminTokenRejected"
    assert "1 of 2 ready pods refuse" in degraded["message"] and "kubectl -n ml delete secret m-admin-token" in degraded["message"]
    assert [e.reason for e in r.events if e.type == "Warning"] == ["AdminTokenRejected"]
    spec = o.spec
    assert plan.next_look(spec, r.status, 0, 60, 1, False) == admintoken.RETRY_SECONDS
    again = body(finalizers=[plan.FINALIZER], status=r.status)
    o2 = observed(again, live_children(again), endpoints=endpoints, token_refused=("m-2",))
    assert not [e for e in plan.report(o2, plan.plan(o2, DEFAULTS), Outcome(), "T2").events if e.type == "Warning"]
    # accepted again: the condition clears
    o3 = observed(again, live_children(again), endpoints=endpoints)
    cleared = plan.report(o3, plan.plan(o3, DEFAULTS), Outcome(), "T3").status
    assert cleared is not None and {c["type"]: c["status"] for c in cleared["conditions"]}["Degraded"] == "False"
    assert plan.next_look(spec, {**r.status, **cleared}, 0, 60, 1, False) == 60


@pytest.mark.parametrize(("managers", "verb"), [
    (None, "keep"),  # a server that reports no managedFields
    ([{"manager": "modeldeploy", "operation": "Apply"}, {"manager": "kubectl", "operation": "Update"}], "keep"),
    ([{"manager": "modeldeploy", "operation": "Update"}], "update"),  # created, but the apply after it failed
    ([{"manager": "modeldeploy", "operation": "Apply", "subresource": "status"}], "update"),
])
def test_a_child_our_apply_does_not_manage_yet_is_applied(managers: list | None, verb: str) -> None:
    b = body(finalizers=[plan.FINALIZER])
    children = live_children(b)
    if managers is not None:
        children[("Service", "m")]["metadata"]["managedFields"] = managers
    assert verbs(plan.plan(observed(b, children), DEFAULTS))["Service"] == verb


def test_the_create_entry_is_dropped_once_our_apply_manages_the_fields() -> None:
    from modeldeploy.clients.kube import without_create_entry

    status = {"manager": "modeldeploy", "operation": "Update", "subresource": "status", "fieldsV1": {}}
    create = {"manager": "modeldeploy", "operation": "Update", "apiVersion": "v1", "fieldsV1": {"f:spec": {}}}
    applied = {"manager": "modeldeploy", "operation": "Apply", "apiVersion": "v1", "fieldsV1": {"f:spec": {}}}
    other = {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {}}
    assert without_create_entry({"metadata": {"managedFields": [create, applied, other, status]}}) == [applied, other, status]
    assert without_create_entry({"metadata": {"managedFields": [create, other]}}) is None  # not applied yet: keep it
    assert without_create_entry({"metadata": {"managedFields": [applied, other]}}) is None  # nothing to drop
    assert without_create_entry({"metadata": {}}) is None


def test_versions_from_object_storage_say_where_from_and_an_unlistable_store_is_reported_once() -> None:
    """The pods' admin reports (as model-server answers GET /v1/admin/models for a storage.uri
    model) give each version's source and download; a pod that cannot list the store makes
    Degraded=StorageUnavailable with one Warning, and the condition clears when it lists again."""
    from modeldeploy.clients.servers import parse_report
    from modeldeploy.decisions.records import Endpoint

    def answer(error: str = "") -> dict:
        return {"ready": True, "routingGeneration": 1, "models": {"m": {
            "versions": {"3": {"state": "AVAILABLE", "error": "", "warmup": None, "source": "s3://models/m/3",
                               "download": {"seconds": 2.5, "bytes": 1048576, "cached": False}}},
            "labels": {}, "storage": {"uri": "s3://models/m", "error": error, "code": "UNAVAILABLE" if error else "OK",
                                      "pending": {}}}}}

    unreachable = "s3://models/m: store unreachable (error sending request)"
    b = body(finalizers=[plan.FINALIZER], model={"storage": {"uri": "s3://models/m"}})
    endpoints = (Endpoint("m-1", "http://10.0.0.1:8502"), Endpoint("m-2", "http://10.0.0.2:8502"))
    slow = answer()
    slow["models"]["m"]["versions"]["3"]["download"] = {"seconds": 4.0, "bytes": 1048576, "cached": False}
    pods = (parse_report("m-1", "m", answer()), parse_report("m-2", "m", slow))
    o = observed(b, live_children(b), endpoints=endpoints, pods=pods)
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome(), "T1")
    assert r.status is not None and r.status["versions"] == [{"version": 3, "state": "Available", "source": "s3://models/m/3",
                                                              "download": {"seconds": 4.0, "bytes": 1048576, "cached": False}}]
    api_status = plan.api.ModelDeploymentStatus.model_validate(r.status)  # the CRD's status schema takes it
    assert api_status.versions is not None and api_status.versions[0].download is not None
    assert not [e for e in r.events if e.type == "Warning"]

    pods = (parse_report("m-1", "m", answer(unreachable)), parse_report("m-2", "m", answer(unreachable)))
    o = observed(b, live_children(b), endpoints=endpoints, pods=pods)
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome(), "T2")
    degraded = {c["type"]: c for c in r.status["conditions"]}["Degraded"]  # type: ignore[index]
    assert (degraded["status"], degraded["reason"]) == ("True", "StorageUnavailable")
    assert degraded["message"] == f"pod m-1: {unreachable}"
    assert [(e.type, e.reason) for e in r.events if e.type == "Warning"] == [("Warning", "StorageUnavailable")]
    assert r.status["versions"][0]["state"] == "Available"  # type: ignore[index]  # what is loaded keeps serving
    again = body(finalizers=[plan.FINALIZER], status=r.status, model={"storage": {"uri": "s3://models/m"}})
    o2 = observed(again, live_children(again), endpoints=endpoints, pods=pods)
    assert not [e for e in plan.report(o2, plan.plan(o2, DEFAULTS), Outcome(), "T3").events if e.type == "Warning"]
    o3 = observed(again, live_children(again), endpoints=endpoints, pods=(parse_report("m-1", "m", answer()),))
    cleared = plan.report(o3, plan.plan(o3, DEFAULTS), Outcome(), "T4").status
    assert cleared is not None and {c["type"]: c["status"] for c in cleared["conditions"]}["Degraded"] == "False"


def test_pods_that_cannot_load_their_first_version_say_why_the_store_fails() -> None:
    """A server whose store cannot be listed stays up and not ready (no crash loop): what its admin
    port says (asked of the EndpointSlices' not-ready endpoints) is the condition and the Event."""
    from modeldeploy.clients.servers import ready_endpoints, unready_endpoints

    slices = [{"ports": [{"name": "admin", "port": 8502}], "endpoints": [
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "m-1"}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}, "targetRef": {"name": "m-2"}},
        {"addresses": [], "conditions": {"ready": False}, "targetRef": {"name": "m-3"}}]}]
    assert [e.pod for e in ready_endpoints(slices)] == ["m-1"]
    assert [(e.pod, e.url) for e in unready_endpoints(slices)] == [("m-2", "http://10.0.0.2:8502")]
    denied = "pod m-2: s3://models/m: access denied (HTTP 403 InvalidAccessKeyId)"
    b = body(finalizers=[plan.FINALIZER], model={"storage": {"uri": "s3://models/m"}})
    o = observed(b, live_children(b, ready=0), store_errors=(denied,))
    r = plan.report(o, plan.plan(o, DEFAULTS), Outcome(), "T1")
    conds = {c["type"]: c for c in r.status["conditions"]}  # type: ignore[index]
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"], conds["Degraded"]["message"]) == (
        "True", "StorageUnavailable", denied)
    assert conds["Ready"]["status"] == "False"
    assert [(e.type, e.reason, e.message) for e in r.events if e.type == "Warning"] == [
        ("Warning", "StorageUnavailable", denied)]
