"""The traffic split in a real model-server: the routing file, pushes to the admin port (and its
token), which version answered (REST headers, gRPC model_spec and trailing metadata), the split's
accuracy over real requests, and label flips, weight changes, a promotion and a rollback under
load from 8 clients (REST and gRPC) that lose no request and get every answer from a version that
a table in force allowed."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from server_support import free_port, predict_request, wait_for
from tensorflow_serving.apis import prediction_service_pb2_grpc

TOKEN = "s3cret-token"
MODEL = "two_versions"  # demo: version 1 answers 0.5x+2, version 2 answers x+3


def table(gen: int, labels: dict[str, int], weights: dict[str, int] | None = None) -> dict[str, Any]:
    return {"generation": gen, "models": {MODEL: {"labels": labels, "weights": weights or {}}}}


@pytest.fixture(scope="module")
def routed(start_server, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("routed")
    (d / "models.config").write_text(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{models_dir / MODEL}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    (d / "routing.json").write_text(json.dumps(table(1, {"stable": 1}, {"stable": 100})))
    (d / "token").write_text(TOKEN + "\n")
    admin = free_port()
    srv = start_server([f"--model_config_file={d / 'models.config'}", f"--routing_config_file={d / 'routing.json'}",
                        "--model_config_file_poll_wait_seconds=1", f"--admin_port={admin}",
                        f"--admin_token_file={d / 'token'}"])
    srv.admin_url = f"http://127.0.0.1:{admin}/v1/admin/routing"
    srv.dir = d
    return srv


def push(srv, doc: dict[str, Any], token: str = TOKEN) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.put(srv.admin_url, json=doc, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def in_force(srv) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return requests.get(srv.admin_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


def test_admin_port_needs_the_token_and_refuses_bad_tables(routed) -> None:  # type: ignore[no-untyped-def]
    assert requests.get(routed.admin_url, timeout=30).status_code == 401
    assert push(routed, table(2, {"stable": 1}), token="wrong").status_code == 401
    assert in_force(routed)["models"][MODEL]["labels"] == {"stable": 1}
    gen = in_force(routed)["generation"]
    r = push(routed, table(gen + 1, {"stable": 9}))
    assert r.status_code == 400 and "version 9" in r.json()["error"]  # TF Serving's label rule
    r = push(routed, {"generation": gen + 1, "models": {"nope": {"labels": {"a": 1}}}})
    assert r.status_code == 404
    r = push(routed, table(gen + 1, {"stable": 1}, {"canary": 5}))
    assert r.status_code == 400 and "canary" in r.json()["error"]
    assert push(routed, table(gen - 1, {"stable": 1})).status_code == 409  # older than the table in force
    assert in_force(routed)["generation"] == gen  # nothing of the refused tables applied


def test_which_version_answered_and_the_split_over_real_requests(routed) -> None:  # type: ignore[no-untyped-def]
    gen = in_force(routed)["generation"] + 1
    assert push(routed, table(gen, {"stable": 1, "canary": 2}, {"stable": 90, "canary": 10})).status_code == 200
    url = f"{routed.url}/v1/models/{MODEL}:predict"
    with requests.Session() as s:
        labels = []
        for _ in range(5000):
            r = s.post(url, json={"instances": [2.0]}, timeout=30)
            want = {"1": [3.0], "2": [5.0]}[r.headers["X-Model-Version"]]
            assert r.json() == {"predictions": want}
            labels.append(r.headers["X-Model-Label"])
        assert abs(labels.count("canary") / 5000 - 0.10) <= 0.02
        r = s.post(f"{routed.url}/v1/models/{MODEL}/labels/canary:predict", json={"instances": [2.0]}, timeout=30)
        assert r.headers["X-Model-Version"] == "2" and "X-Model-Label" not in r.headers  # named, not split
        spread = [s.post(url, json={"instances": [2.0]}, headers={"X-Model-Route-Key": f"user-{i}"},
                         timeout=30).headers["X-Model-Label"] for i in range(2000)]
        assert abs(spread.count("canary") / 2000 - 0.10) <= 0.03
    with grpc.insecure_channel(routed.target) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        seen = set()
        for _ in range(1000):
            resp, call = stub.Predict.with_call(predict_request(MODEL, {"x": np.array([2.0], np.float32)}),
                                                metadata=(("x-model-route-key", "user-7"),), timeout=30)
            seen.add((resp.model_spec.version.value, dict(call.trailing_metadata())["x-model-label"]))
        assert len(seen) == 1  # one key, one version


def test_the_routing_file_is_polled_and_never_undoes_a_newer_push(routed) -> None:  # type: ignore[no-untyped-def]
    gen = in_force(routed)["generation"]
    (routed.dir / "routing.json").write_text(json.dumps(table(gen + 1, {"stable": 2}, {"stable": 100})))
    wait_for(lambda: in_force(routed)["generation"] == gen + 1, what="the routing file's new table", timeout=30)
    assert requests.post(f"{routed.url}/v1/models/{MODEL}:predict", json={"instances": [2.0]},
                         timeout=30).headers["X-Model-Version"] == "2"
    assert push(routed, table(gen + 3, {"stable": 1}, {"stable": 100})).status_code == 200
    (routed.dir / "routing.json").write_text(json.dumps(table(gen + 2, {"stable": 2}, {"stable": 100})))
    wait_for(lambda: "routing config file not applied: routing table generation" in routed.output(),
             what="the stale file refused", timeout=30)
    assert in_force(routed)["generation"] == gen + 3


def test_flips_promotion_and_rollback_under_load_lose_no_request(routed) -> None:  # type: ignore[no-untyped-def]
    """8 clients (4 REST, 4 gRPC) send continuously while tables change; every request succeeds,
    and every answer comes from a version that a table in force during the request allowed."""
    base = in_force(routed)["generation"] + 1
    steps = [({"stable": 1}, {"stable": 100}),
             ({"stable": 1, "canary": 2}, {"stable": 90, "canary": 10}),  # canary at 10%
             ({"stable": 1, "canary": 2}, {"stable": 50, "canary": 50}),  # weight change
             ({"stable": 2, "canary": 1}, {"stable": 100}),  # promotion: a label flip
             ({"stable": 1}, {"stable": 100})]  # rollback
    allowed = [{labels[lbl] for lbl, w in weights.items() if w > 0} for labels, weights in steps]
    windows: list[tuple[float, float]] = []  # (before PUT, after PUT) per step
    answers: list[tuple[float, float, int]] = []  # (sent, answered, version)
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def rest_client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = s.post(f"{routed.url}/v1/models/{MODEL}:predict", json={"instances": [2.0]}, timeout=30)
                    ok = r.status_code == 200
                    version = int(r.headers.get("X-Model-Version", 0))
                    ok = ok and r.json() == {"predictions": [3.0 if version == 1 else 5.0]}
                except requests.RequestException as exc:
                    ok, version, r = False, 0, exc  # type: ignore[assignment]
                with lock:
                    (answers.append((t0, time.monotonic(), version)) if ok else errors.append(repr(r)))

    def grpc_client() -> None:
        with grpc.insecure_channel(routed.target) as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    out = stub.Predict(predict_request(MODEL, {"x": np.array([2.0], np.float32)}), timeout=30)
                    version = out.model_spec.version.value
                    ok = float(out.outputs["y"].float_val[0]) == (3.0 if version == 1 else 5.0)
                    err = "wrong answer"
                except grpc.RpcError as exc:
                    ok, version, err = False, 0, f"{exc.code()}: {exc.details()}"
                with lock:
                    (answers.append((t0, time.monotonic(), version)) if ok else errors.append(err))

    clients = [threading.Thread(target=f) for f in [rest_client] * 4 + [grpc_client] * 4]
    for c in clients:
        c.start()
    try:
        for i, (labels, weights) in enumerate(steps):
            with lock:
                seen = len(answers)
            wait_for(lambda seen=seen: len(answers) >= seen + 150, what="requests under the table in force")
            t0 = time.monotonic()
            r = push(routed, {"generation": base + i, "models": {MODEL: {"labels": labels, "weights": weights}}})
            windows.append((t0, time.monotonic()))
            assert r.status_code == 200, r.text
        with lock:
            seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 150, what="requests under the last table")
    finally:
        stop.set()
        for c in clients:
            c.join(60)
    assert not errors, errors[:5]

    def possible(sent: float, answered: float) -> set[int]:
        out: set[int] = set()
        for i, (start, _end) in enumerate(windows):
            next_end = windows[i + 1][1] if i + 1 < len(windows) else float("inf")
            if start <= answered and next_end >= sent:
                out |= allowed[i]
        return out

    with lock:
        done = [a for a in answers if a[0] >= windows[0][1]]  # sent once the first table was in force
    bad = [a for a in done if a[2] not in possible(a[0], a[1])]
    assert not bad, bad[:5]
    assert {a[2] for a in done} == {1, 2} and len(done) > 700
