"""A ModelDeployment served from object storage, end to end (`make e2e`): on the local cluster, with
moto's S3 API on loopback (tests/server/object_stores.py). The pods read `s3://` themselves with the
keys of a Secret the ModelDeployment names (envFrom; the operator never reads it); a new version
is an upload plus a spec change, and is then labelled by a canary flip; status shows each
version's source and download.

A real cluster (E2E_KUBECONFIG) cannot reach a store on this machine's loopback: skipped there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import object_stores
import pytest
from e2e_support import MD_API, READY_TIMEOUT, Cluster, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e
MODEL = "clf"
ANSWERS = {1: [2.5, 3.0], 2: [4.0, 5.0]}  # half_plus_two 0.5x + 2 (version 1), x + 3 (version 2), on [1, 2]


def storage_md(name: str, ns: str, uri: str, secret: str, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "model": {"name": MODEL, "storage": {"uri": uri, "credentials": {"secretRef": {"name": secret}}},
                  "versions": [1]},
        "versionLabels": {"stable": 1},
        "resources": {"cpu": "100m", "memory": "512Mi"},
        "warmup": {"enabled": False},
    }
    body.update(spec)
    return {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns}, "spec": body}


def version(obj: dict | None, v: int) -> dict:
    return next((x for x in ((obj or {}).get("status") or {}).get("versions") or [] if x["version"] == v), {})


def answers(cluster: Cluster, ns: str, name: str, label: str, want: list[float]) -> bool:
    try:
        return cluster.predict(ns, name, MODEL, [1.0, 2.0], label=label) == want
    except Exception:  # noqa: BLE001 - not yet (a label the servers do not resolve yet: 400)
        return False


def test_a_model_from_s3_gets_a_new_version_and_a_canary_flip(cluster: Cluster, namespace: str,
                                                             operator: OperatorProcess, tmp_path: Path) -> None:
    if cluster.local is None:
        pytest.skip("a real cluster cannot reach the S3 server on this machine's loopback")
    import demomodels

    for v, (a, b) in {1: (0.5, 2.0), 2: (1.0, 3.0)}.items():
        demomodels.build_half_plus_two(tmp_path / "src" / str(v), a=a, b=b)
    with object_stores.running("s3", tmp_path / "s3") as store:
        store.upload_dir(tmp_path / "src" / "1", f"{MODEL}/1")
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-reader", "namespace": namespace},
                        "stringData": store.env})
        cluster.create(storage_md("s3md", namespace, store.uri(MODEL), "s3-reader"))

        def ready_with(v: int) -> dict | None:
            obj = cluster.md(namespace, "s3md")
            st = version(obj, v)
            ok = condition(obj or {}, "Ready").get("status") == "True" and st.get("state") == "Available"
            return st if ok and st.get("source") else None

        v1 = wait_for(lambda: ready_with(1), READY_TIMEOUT, "version 1 from s3:// Available with its source")
        assert v1["source"] == f"s3://{object_stores.BUCKET}/{MODEL}/1" and v1["download"]["bytes"] > 0
        assert cluster.predict(namespace, "s3md", MODEL, [1.0, 2.0], label="stable") == ANSWERS[1]

        # a new version: uploaded, then listed in the spec as the canary
        store.upload_dir(tmp_path / "src" / "2", f"{MODEL}/2", last="saved_model.pb")
        cluster.patch_spec(namespace, "s3md", {"model": {"versions": [1, 2]}, "versionLabels": {"stable": 1, "canary": 2}})
        v2 = wait_for(lambda: ready_with(2), READY_TIMEOUT, "version 2 Available with its source")
        assert v2["source"] == f"s3://{object_stores.BUCKET}/{MODEL}/2" and v2["download"]["seconds"] >= 0
        wait_for(lambda: answers(cluster, namespace, "s3md", "canary", ANSWERS[2]), 60, "canary answering version 2")
        assert cluster.predict(namespace, "s3md", MODEL, [1.0, 2.0], label="stable") == ANSWERS[1]

        # the flip: stable moves to the new version
        cluster.patch_spec(namespace, "s3md", {"versionLabels": {"stable": 2, "canary": 2}})
        wait_for(lambda: answers(cluster, namespace, "s3md", "stable", ANSWERS[2]), 60, "stable answering version 2")
        deployment = cluster.get("apps/v1", "Deployment", namespace, "s3md") or {}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-reader"}}]  # referenced, not copied


def test_refused_credentials_are_a_condition_and_an_event_not_a_crash_loop(
        cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    if cluster.local is None:
        pytest.skip("a real cluster cannot reach the S3 server on this machine's loopback")
    import demomodels

    demomodels.build_half_plus_two(tmp_path / "src" / "1")
    with object_stores.running("s3", tmp_path / "s3") as store:
        store.upload_dir(tmp_path / "src" / "1", f"{MODEL}/1")
        wrong = store.wrong_credentials()
        cluster.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-wrong", "namespace": namespace},
                        "stringData": wrong})
        cluster.create(storage_md("denied", namespace, store.uri(MODEL), "s3-wrong"))

        def degraded() -> dict | None:
            c = condition(cluster.md(namespace, "denied") or {}, "Degraded")
            return c if c.get("reason") == "StorageUnavailable" else None

        c = wait_for(degraded, READY_TIMEOUT, "Degraded=StorageUnavailable")
        assert "access denied (HTTP 403 InvalidAccessKeyId)" in c["message"]
        assert wrong["AWS_SECRET_ACCESS_KEY"] not in c["message"]
        wait_for(lambda: ("Warning", "StorageUnavailable") in cluster.events(namespace, "denied"), 60,
                 "a StorageUnavailable Warning Event")
        (pod,) = cluster.pods(namespace, "denied")
        statuses = pod["status"].get("containerStatuses") or []
        assert statuses and all(s.get("restartCount", 0) == 0 and not s.get("ready") for s in statuses)
        assert condition(cluster.md(namespace, "denied") or {}, "Ready").get("status") == "False"
