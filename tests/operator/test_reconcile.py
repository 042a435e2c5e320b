"""One reconcile (observe → plan → execute → report) against a recording stand-in for the API
(operator_support.RecordingKube): which calls it makes, what it writes, which Events it posts; and
against the local API server (localcluster.fakeapi) through the real client, where a second run,
and a restarted operator's first, change nothing. The real operator process against the local API
server is test_operator.py's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from localcluster.fakeapi import FakeKubeAPI
from modeldeploy.clients.kube import Kube
from modeldeploy.controller import reconcile
from modeldeploy.controller.context import OperatorContext, Settings
from modeldeploy.controller.workqueue import Retry
from modeldeploy.decisions import plan, render
from operator_support import GROUP, PLURAL, RecordingKube, make_namespace, md
from support import wait_for

UID = "9d0c7b2a-3e4f-4a5b-8c6d-7e8f9a0b1c2d"


def add_md(kube: RecordingKube, ctx: OperatorContext, name: str = "m", **spec: Any) -> dict:
    body = {"apiVersion": "serving.modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "ml", "uid": UID, "generation": 1, "resourceVersion": "1"},
            "spec": {"model": {"storage": {"pvc": {"claimName": "models"}}}, **spec}}
    kube.objects[("ModelDeployment", name)] = body
    ctx.cache.seen(body)
    return body


@pytest.fixture
def kube() -> RecordingKube:
    return RecordingKube()


@pytest.fixture
def ctx(kube: RecordingKube) -> OperatorContext:
    return OperatorContext(kube=kube, reconcile=reconcile.reconcile,  # type: ignore[arg-type]
                          settings=Settings(model_status_url="", workers=1))


def test_first_run_creates_everything_then_a_second_run_writes_nothing(kube: RecordingKube, ctx: OperatorContext) -> None:
    add_md(kube, ctx)
    assert 0 < reconcile.reconcile(ctx, "ml", "m") <= 66  # the periodic re-check, ±10%
    # each child created (a POST), then applied once (our field manager owns its fields as applied);
    # the token Secret only created
    assert [c for c in kube.calls if c[0] != "post_event"] == [
        ("get", "PersistentVolumeClaim"), ("patch_finalizers", "ModelDeployment"), ("create", "Secret"),
        ("create", "ConfigMap"), ("apply", "ConfigMap"), ("create", "Deployment"), ("apply", "Deployment"),
        ("create", "Service"), ("apply", "Service"), ("create", "Service"), ("apply", "Service"),
        ("create", "PodDisruptionBudget"), ("apply", "PodDisruptionBudget"), ("patch_status", "ModelDeployment")]
    assert [e[1] for e in kube.events] == ["Created"] * 6 + ["Reconciled"]
    md = ctx.cache.get("ModelDeployment", "ml", "m")
    assert md is not None and md["metadata"]["finalizers"] == [plan.FINALIZER] and md["status"]["observedGeneration"] == 1
    # the answers went into the cache, the claim was just found: the next run has nothing to ask or do
    kube.calls.clear()
    reconcile.reconcile(ctx, "ml", "m")
    assert kube.calls == []


def test_runs_against_the_local_api_server_change_nothing_once_done(fake: FakeKubeAPI, tmp_path: Path) -> None:
    """Through the real client, once a first run is done and its status caught up: another run
    (the cache fed with what the watches deliver) and a restarted operator's first (a new context
    holding the API server's listing) change no child: the restarted one creates the token Secret
    again (409: it is there, and the same), and writes nothing else. A restarted operator that has
    seen only some children yet never overwrites the others: its creates find them (409), and it
    waits (ChildNotOwned) until its watches show them as its own; then it converges, and every
    child's resourceVersion stays as it was."""
    from kubernetes import config

    make_namespace(fake, "ml")
    fake.add_object(md("m", "ml"))
    client = Kube(config.new_client_from_config(config_file=str(fake.write_kubeconfig(tmp_path / "kubeconfig"))))
    refs = [fake.resource_for(api_version, kind) for api_version, kind, _ in render.child_refs("m")]

    def objects() -> list[dict]:
        return [o for r in {(r.group, r.plural) for r in refs} | {(GROUP, PLURAL)}
                for o in fake.list_objects(*r, "ml") if o["metadata"]["name"].startswith("m")]

    def versions() -> dict[tuple[str, str], str]:
        return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"] for o in objects()}

    def context() -> OperatorContext:
        return OperatorContext(kube=client, reconcile=reconcile.reconcile,
                               settings=Settings(model_status_url="", workers=1))

    def run(ctx: OperatorContext, kinds: tuple[str, ...] = ()) -> None:
        for o in objects():  # what the watches deliver (of `kinds` only, when given)
            if not kinds or o["kind"] in kinds:
                ctx.cache.seen(o)
        reconcile.reconcile(ctx, "ml", "m")

    first = context()
    run(first)
    assert {k for k, _ in versions()} >= {"ModelDeployment", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    secret = fake.get("", "secrets", "ml", "m-admin-token")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["name"] == "m"
    # the Deployment stand-in reports its pods ready shortly after (as a controller would), and the
    # next run writes that into the ModelDeployment's status: then there is nothing left to do
    wait_for(lambda: (fake.get("apps", "deployments", "ml", "m") or {}).get("status"), "the Deployment's status")
    run(first)
    before = versions()
    mark = len(fake.audit())
    for ctx in (first, context()):  # another run; a restarted operator's first
        run(ctx)
        time.sleep(0.3)  # the stand-in would have answered a Deployment write by now
        assert versions() == before
    writes = [(a.verb, a.resource, a.code) for a in fake.audit()[mark:] if a.verb not in ("get", "list", "watch")]
    assert writes == [("create", "secrets", 409)], writes
    assert fake.get("", "secrets", "ml", "m-admin-token") == secret
    # a restarted operator whose watches have delivered only the ModelDeployment so far
    mark = len(fake.audit())
    restarted = context()
    run(restarted, kinds=("ModelDeployment",))
    status = fake.get(GROUP, PLURAL, "ml", "m")["status"]  # type: ignore[index]
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Degraded"] == "ChildNotOwned"
    run(restarted)  # the watches have delivered every child: its own, so it converges
    time.sleep(0.3)
    assert {k: v for k, v in versions().items() if k[0] != "ModelDeployment"} == {
        k: v for k, v in before.items() if k[0] != "ModelDeployment"}
    status = fake.get(GROUP, PLURAL, "ml", "m")["status"]  # type: ignore[index]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Degraded"] == "False"
    child_writes = {(a.verb, a.resource, a.code) for a in fake.audit()[mark:]
                    if a.verb not in ("get", "list", "watch") and a.resource not in ("events", PLURAL)}
    assert child_writes == {("create", "secrets", 409), ("create", "configmaps", 409)}, child_writes


def test_a_child_edited_by_hand_is_restored_with_one_event(kube: RecordingKube, ctx: OperatorContext) -> None:
    add_md(kube, ctx)
    reconcile.reconcile(ctx, "ml", "m")
    dep = kube.objects[("Deployment", "m")]
    edited = {**dep, "spec": {**dep["spec"], "replicas": 7}, "metadata": {**dep["metadata"], "resourceVersion": "500"}}
    kube.objects[("Deployment", "m")] = edited
    assert ctx.cache.seen(edited)  # news (not our own write)
    kube.events.clear()
    reconcile.reconcile(ctx, "ml", "m")
    assert kube.objects[("Deployment", "m")]["spec"]["replicas"] == 1
    assert [e[1] for e in kube.events] == ["DriftCorrected"]


def test_problems_apply_nothing_and_are_warned(kube: RecordingKube, ctx: OperatorContext) -> None:
    kube.claims.clear()
    add_md(kube, ctx)
    reconcile.reconcile(ctx, "ml", "m")
    assert not [c for c in kube.calls if c[0] == "apply"]
    assert kube.events == [("Warning", "StorageNotFound", 'PersistentVolumeClaim "models" not found in namespace "ml"; '
                            "create it or fix spec.model.storage.pvc.claimName")]
    assert ctx.cache.get("ModelDeployment", "ml", "m")["status"]["conditions"][0]["reason"] == "StorageNotFound"  # type: ignore[index]


def test_a_missing_claim_is_asked_for_at_every_run_until_it_appears(kube: RecordingKube, ctx: OperatorContext) -> None:
    kube.claims.clear()
    add_md(kube, ctx)
    reconcile.reconcile(ctx, "ml", "m")
    reconcile.reconcile(ctx, "ml", "m")
    assert kube.calls.count(("get", "PersistentVolumeClaim")) == 2 and ("apply", "Deployment") not in kube.calls
    kube.claims.add("models")
    reconcile.reconcile(ctx, "ml", "m")
    assert ("apply", "Deployment") in kube.calls
    assert ctx.cache.get("ModelDeployment", "ml", "m")["status"]["conditions"][0]["reason"] != "StorageNotFound"  # type: ignore[index]


def test_a_refused_child_is_apply_failed(ctx: OperatorContext) -> None:
    kube = RecordingKube(reject=("Service",))
    ctx.kube = kube  # type: ignore[assignment]
    add_md(kube, ctx)
    reconcile.reconcile(ctx, "ml", "m")
    assert [e[1] for e in kube.events] == ["Created", "Created", "Created", "ApplyFailed"]  # Secret, ConfigMap, Deployment
    assert ("apply", "PodDisruptionBudget") not in kube.calls  # stops at the first refusal


def test_transient_errors_raise_retry(kube: RecordingKube, ctx: OperatorContext) -> None:
    add_md(kube, ctx)

    def conflict(obj: dict) -> dict:
        raise kube.KubeError(409, "Conflict", "the object has been modified")

    kube.apply = conflict  # type: ignore[method-assign]
    with pytest.raises(Retry) as exc:
        reconcile.reconcile(ctx, "ml", "m")
    assert exc.value.delay == 0.5


def test_deletion_releases_the_finalizer_and_writes_nothing_else(kube: RecordingKube, ctx: OperatorContext) -> None:
    add_md(kube, ctx)
    reconcile.reconcile(ctx, "ml", "m")
    md = ctx.cache.get("ModelDeployment", "ml", "m")
    assert md is not None
    deleting = {**md, "metadata": {**md["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "900"}}
    kube.objects[("ModelDeployment", "m")] = deleting
    ctx.cache.seen(deleting)
    kube.calls.clear()
    assert reconcile.reconcile(ctx, "ml", "m") is None
    assert kube.calls == [("patch_finalizers", "ModelDeployment")]
    assert kube.objects[("ModelDeployment", "m")]["metadata"]["finalizers"] == []
    assert reconcile.reconcile(ctx, "ml", "gone") is None  # not in the cache: nothing to do


def test_an_object_the_operator_did_not_create_is_never_taken_over(fake: FakeKubeAPI, tmp_path: Path) -> None:
    """A Service named as the ModelDeployment's, made by someone else (no label, no ownerReference,
    so not in the cache): the operator's create finds it (409), nothing of it changes, status says
    which object and what to do; once it is deleted, the operator creates its own."""
    from kubernetes import config

    make_namespace(fake, "ml")
    fake.add_object(md("m", "ml"))
    theirs = fake.add_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m", "namespace": "ml"},
                              "spec": {"ports": [{"name": "web", "port": 80}], "selector": {"app": "web"}}})
    client = Kube(config.new_client_from_config(config_file=str(fake.write_kubeconfig(tmp_path / "kubeconfig"))))
    ctx = OperatorContext(kube=client, reconcile=reconcile.reconcile, settings=Settings(model_status_url="", workers=1))

    def run() -> dict:
        ctx.cache.seen(fake.get(GROUP, PLURAL, "ml", "m"))  # type: ignore[arg-type]
        reconcile.reconcile(ctx, "ml", "m")
        return {c["type"]: c for c in fake.get(GROUP, PLURAL, "ml", "m")["status"]["conditions"]}  # type: ignore[index]

    degraded = run()["Degraded"]
    assert degraded["reason"] == "ChildNotOwned" and degraded["message"].startswith("Service m already exists in namespace ml")
    assert fake.get("", "services", "ml", "m") == theirs  # not a field changed, no ownerReference added
    assert ("patch", "services") not in {(a.verb, a.resource) for a in fake.audit()}
    assert any(e["reason"] == "ChildNotOwned" for e in fake.list_objects("", "events", "ml"))
    fake.delete(fake.resource_for("v1", "Service"), "ml", "m")
    assert run()["Degraded"]["status"] == "False"
    ours = fake.get("", "services", "ml", "m")
    assert ours is not None and ours["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
