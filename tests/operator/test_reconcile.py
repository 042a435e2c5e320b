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
    assert [c for c in kube.calls if c[0] != "post_event"] == [
        ("get", "PersistentVolumeClaim"), ("patch_finalizers", "ModelDeployment"), ("apply", "Secret"),
        ("apply", "ConfigMap"), ("apply", "Deployment"), ("apply", "Service"), ("apply", "Service"),
        ("apply", "PodDisruptionBudget"), ("patch_status", "ModelDeployment")]
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
    holding the API server's listing) write nothing; a restarted operator that has seen only some
    children applies the others again, and the API server's server-side apply (not a stand-in's
    rule) finds nothing to change: every resourceVersion stays as it was."""
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
    assert {k for k, _ in versions()} >= {"ModelDeployment", "Secret", "ConfigMap", "Deployment", "Service",
                                          "PodDisruptionBudget"}
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
    assert [a for a in fake.audit()[mark:] if a.verb not in ("get", "list", "watch")] == []
    # a restarted operator whose watches have delivered only the ModelDeployment and the Secret (the
    # pods' token) so far applies the other children again: the same content, so the API server's
    # server-side apply changes nothing
    run(context(), kinds=("ModelDeployment", "Secret"))
    time.sleep(0.3)
    assert versions() == before
    writes = {(a.verb, a.resource) for a in fake.audit()[mark:]
              if a.verb not in ("get", "list", "watch") and a.resource != "events"}
    assert writes == {("patch", "configmaps"), ("patch", "deployments"), ("patch", "services"),
                      ("patch", "poddisruptionbudgets")}, writes


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
