"""The operator's rendered server config against the real model-server.

The ConfigMap files and container args the operator renders start a real `model-server` on loopback
with real SavedModels: the readiness, liveness and metrics paths of the rendered probes and scrape
annotations answer, both versions and their labels are served, a label flip written to
models.config reaches the running server without a restart, and the running operator reports the
server's own per-version states in the ModelDeployment's status, and a token Secret edited by hand
(its pods refuse the operator's derived token) until it is deleted and created again.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from localcluster.fakeapi import FakeKubeAPI
from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import servers
from modeldeploy.decisions import render, serverconfig
from modeldeploy.decisions.records import Endpoint, VersionReport
from operator_support import GROUP, PLURAL, ROOT, OperatorProcess, make_namespace, md
from server_support import ServerProcess
from support import condition, free_port, wait_for

OWNER = render.Owner("tv", "ml", "6f1c7d3e-8a7b-4b55-9d0e-1f2a3b4c5d6e")


def spec(labels: dict[str, int]) -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate({
        "model": {"name": "tv", "storage": {"hostPath": {"path": "/srv/models/tv"}}, "versions": [1, 2]},
        "versionLabels": labels,
        "batching": {"maxBatchSize": 8, "batchTimeoutMicros": 1000, "numBatchThreads": 1},
        "warmup": {"enabled": True},
    })


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    code = ("import sys; from pathlib import Path; from demomodels import build_half_plus_two as b; "
            "r = Path(sys.argv[1]); b(r / 'tv' / '1', a=0.5, b=2.0); b(r / 'tv' / '2', a=1.0, b=3.0)")
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, capture_output=True, cwd=ROOT,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=240)
    return root


def write_config(configmap: dict[str, Any], config_dir: Path, models: Path) -> None:
    """What the kubelet does with the ConfigMap volume, with the pod's /models mount mapped to `models`."""
    config_dir.mkdir(exist_ok=True)
    for name, text in configmap["data"].items():
        text = text.replace(f'"{serverconfig.MODELS_DIR}/', f'"{models}/')
        tmp = config_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(config_dir / name)  # atomic, as the kubelet's symlink swap


@pytest.fixture(scope="module")
def server(models: Path, start_server: Callable[..., ServerProcess],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real model-server (the shared start_server) with the rendered container's arguments, its
    config and token files where the rendered paths say, ready by the rendered readiness probe."""
    config_dir = tmp_path_factory.mktemp("config")
    children = {c["kind"]: c for c in render.render_all(spec({"stable": 1, "canary": 2}), OWNER)}
    write_config(children["ConfigMap"], config_dir, models)
    container = children["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    token_dir = tmp_path_factory.mktemp("admin")  # what the kubelet makes of the admin token Secret volume
    (token_dir / serverconfig.ADMIN_TOKEN_KEY).write_text("t0ken")
    admin = free_port()
    args = [a.replace(f"{serverconfig.CONFIG_DIR}/", f"{config_dir}/").replace(f"{serverconfig.ADMIN_TOKEN_DIR}/", f"{token_dir}/")
            for a in container["args"] if not a.startswith(("--port=", "--rest_api_port=", "--admin_port="))]
    srv = start_server([*args, f"--admin_port={admin}"], ready=False)
    probe = container["readinessProbe"]["httpGet"]["path"]
    srv.wait_until(lambda: requests.get(srv.url + probe, timeout=2).status_code == 200, "the readiness probe")
    return {"url": srv.url, "container": children["Deployment"], "config_dir": config_dir, "proc": srv.proc,
            "admin": f"http://127.0.0.1:{admin}", "admin_port": admin, "token_file": token_dir / serverconfig.ADMIN_TOKEN_KEY}


def test_probes_and_scrape_annotations_answer(server: dict[str, Any]) -> None:
    pod = server["container"]["spec"]["template"]
    c = pod["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert requests.get(server["url"] + c[probe]["httpGet"]["path"], timeout=5).status_code == 200, probe
    metrics = requests.get(server["url"] + pod["metadata"]["annotations"]["prometheus.io/path"], timeout=5)
    assert metrics.status_code == 200 and ":tensorflow:serving:" in metrics.text


def test_both_versions_and_labels_are_served(server: dict[str, Any]) -> None:
    reports = servers.fetch_status(server["url"], "tv")
    assert reports == {1: VersionReport("Available"), 2: VersionReport("Available")}
    # where each label points, as the operator asks (an unknown label resolves nowhere)
    reports = servers.fetch_status(server["url"], "tv", ["stable", "canary", "nope"])
    assert reports == {1: VersionReport("Available", labels=("stable",)),
                       2: VersionReport("Available", labels=("canary",))}
    pred = requests.post(server["url"] + "/v1/models/tv/labels/canary:predict", json={"instances": [1.0]}, timeout=10)
    assert pred.status_code == 200 and pred.json()["predictions"] == [pytest.approx(4.0)]  # version 2: x + 3


def test_label_flip_reaches_the_running_server_without_restart(server: dict[str, Any], models: Path) -> None:
    children = {c["kind"]: c for c in render.render_all(spec({"stable": 2, "canary": 2}), OWNER)}
    old_hash = server["container"]["spec"]["template"]["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]
    assert children["Deployment"]["spec"]["template"]["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION] == old_hash
    write_config(children["ConfigMap"], server["config_dir"], models)

    def stable_is_2() -> bool:
        r = requests.post(server["url"] + "/v1/models/tv/labels/stable:predict", json={"instances": [1.0]}, timeout=10)
        return r.status_code == 200 and r.json()["predictions"] == [pytest.approx(4.0)]

    # live within the poll interval the operator renders (--model_config_file_poll_wait_seconds),
    # plus 2 s for the poll's reload and this loop's own requests
    started = time.monotonic()
    wait_for(stable_is_2, timeout=30, what="label flip")
    flip_s = time.monotonic() - started
    assert server["proc"].poll() is None
    assert flip_s < spec({"stable": 2, "canary": 2}).server.config_poll_seconds + 2, flip_s


def test_operator_reports_the_servers_version_states(server: dict[str, Any], models: Path, fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> None:
    make_namespace(fake, "ml")
    op = OperatorProcess(kubeconfig, tmp_path / "op.log", ["--model-status-url", server["url"]]).start()
    try:
        # version 3 is configured but does not exist: ready pods serve 1 and 2, and status says so
        fake.add_object(md("tv", "ml", model={"name": "tv", "storage": {"pvc": {"claimName": "models"}}, "versions": [1, 2, 3]}))

        def states() -> dict[int, str] | None:
            obj = fake.get(GROUP, PLURAL, "ml", "tv") or {}
            versions = (obj.get("status") or {}).get("versions") or []
            got = {v["version"]: v["state"] for v in versions}
            return got if got.get(1) == "Available" else None

        assert wait_for(states, what="versions from the server") == {1: "Available", 2: "Available", 3: "Pending"}

        # a label the spec moved but the server does not route yet: Progressing (and kstatus' Reconciling) say so
        write_config(render.render_all(spec({"stable": 2, "canary": 2}), OWNER)[0], server["config_dir"], models)
        wait_for(lambda: servers.fetch_status(server["url"], "tv", ["stable"]) == {
            1: VersionReport("Available"), 2: VersionReport("Available", labels=("stable",))}, what="server at stable=2")
        obj = fake.get(GROUP, PLURAL, "ml", "tv")
        obj["spec"]["versionLabels"] = {"stable": 1, "canary": 2}
        fake.update(fake.resources[(GROUP, PLURAL)], "ml", "tv", obj)
        pending = wait_for(lambda: condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Progressing").get("reason") == "LabelsPending"
                           and condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Reconciling"), what="LabelsPending")
        assert pending["status"] == "True" and "stable→1" in pending["message"] and "canary" not in pending["message"]
        assert condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Ready")["status"] == "True"  # the pods serve meanwhile
        # the server catches up (here: the config file is written, as the kubelet would): the condition clears
        write_config(render.render_all(spec({"stable": 1, "canary": 2}), OWNER)[0], server["config_dir"], models)
        wait_for(lambda: condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Progressing").get("reason") == "RolloutComplete",
                 what="labels applied")
    finally:
        op.stop()


def test_a_token_secret_edited_by_hand_is_reported_and_recreated_once_deleted(
        server: dict[str, Any], fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> None:
    """The operator never reads the token Secret: it derives the token from its key. A Secret whose
    token someone changed makes the pods refuse the operator (401): status says so and how to fix
    it; once the Secret is deleted, the operator creates it again with its own token, and when the
    pod reads that file (the kubelet's refresh, done here by the test), the condition clears."""
    from modeldeploy.decisions import admintoken
    from operator_support import TOKEN_KEY

    make_namespace(fake, "ml")
    op = OperatorProcess(kubeconfig, tmp_path / "op.log").start()
    secrets_r = fake.resource_for("v1", "Secret")
    try:
        fake.add_object(md("tv", "ml", model={"name": "tv", "storage": {"pvc": {"claimName": "models"}}, "versions": [1, 2]}))
        secret = wait_for(lambda: fake.get("", "secrets", "ml", "tv-admin-token"), what="the token Secret")
        uid = fake.get(GROUP, PLURAL, "ml", "tv")["metadata"]["uid"]  # type: ignore[index]
        derived = admintoken.derive(TOKEN_KEY, "ml", "tv", uid)
        assert base64.b64decode(secret["data"]["token"]).decode() == derived
        # edited by hand (the pod mounts the edited token: the server's file says "t0ken")
        fake.update(secrets_r, "ml", "tv-admin-token", {**secret, "data": {"token": base64.b64encode(b"t0ken").decode()}})
        fake.add_object({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "tv-admin-x1", "namespace": "ml",
                         "labels": {"kubernetes.io/service-name": "tv-admin", "app.kubernetes.io/managed-by": "modeldeploy"}},
            "ports": [{"name": "admin", "port": server["admin_port"], "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": "tv-0", "namespace": "ml"}}]})
        degraded = wait_for(lambda: (c := condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Degraded")).get("reason")
                            == "AdminTokenRejected" and c, what="AdminTokenRejected")
        assert degraded["status"] == "True" and "kubectl -n ml delete secret tv-admin-token" in degraded["message"]
        assert fake.get("", "secrets", "ml", "tv-admin-token")["data"]["token"] == base64.b64encode(b"t0ken").decode()  # type: ignore[index]
        wait_for(lambda: any(e.get("reason") == "AdminTokenRejected" for e in fake.list_objects("", "events", "ml")),
                 what="the Warning Event")
        # the fix the message gives: delete the Secret; the operator creates it again with its token
        fake.delete(secrets_r, "ml", "tv-admin-token")
        again = wait_for(lambda: fake.get("", "secrets", "ml", "tv-admin-token"), what="the Secret re-created",
                         timeout=admintoken.RETRY_SECONDS + 20)
        assert base64.b64decode(again["data"]["token"]).decode() == derived
        server["token_file"].write_text(derived)  # the kubelet refreshes the pod's Secret volume
        wait_for(lambda: condition(fake.get(GROUP, PLURAL, "ml", "tv"), "Degraded").get("status") == "False",
                 what="the condition cleared", timeout=admintoken.RETRY_SECONDS + 20)
        assert {a.verb for a in fake.audit() if a.resource == "secrets" and a.userAgent.startswith("modeldeploy")} == {"create"}
    finally:
        op.stop()
        server["token_file"].write_text("t0ken")


# last in this module: its pushes raise the routing generation above the files the other tests write
def test_the_operators_pod_admin_calls_against_a_real_server(server: dict[str, Any]) -> None:
    """clients.servers (what the operator asks each ready pod, and its push) against the rendered server."""
    from modeldeploy.decisions import traffic

    ep = Endpoint("pod-0", server["admin"])
    (report,) = servers.fetch_reports([ep], "t0ken", "tv")
    assert report.versions == {1: "AVAILABLE", 2: "AVAILABLE"} and not report.unreachable
    (refused,) = servers.fetch_reports([ep], "wrong", "tv")
    assert "HTTP 401" in refused.unreachable and refused.token_refused
    table = traffic.Table(report.generation + 1, {"stable": 1, "canary": 2}, {"stable": 80, "canary": 20})
    (pushed,) = servers.push([ep], "t0ken", table.document("tv"))
    assert not pushed.error and pushed.generation == table.generation
    (after,) = servers.fetch_reports([ep], "t0ken", "tv")
    assert after.generation == table.generation and after.labels == {"stable": 1, "canary": 2}
    seen = {requests.post(server["url"] + "/v1/models/tv:predict", json={"instances": [1.0]}, timeout=10).headers["X-Model-Label"]
            for _ in range(60)}
    assert seen == {"stable", "canary"}
    (stale,) = servers.push([ep], "t0ken", traffic.Table(0, {"stable": 2}).document("tv"))
    assert "HTTP 409" in stale.error
