"""Version polling, config reload (file and RPC), label rules, failed loads, SIGTERM drain and the
command line, each against real model-server processes; and a ModelServer in process whose start
fails on a port it cannot bind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from server_support import MODEL_SERVER, REPO, free_port, wait_for
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)


def states(server, model: str) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    r = requests.get(f"{server.url}/v1/models/{model}", timeout=10)
    if r.status_code != 200:
        return {}
    return {s["version"]: (s["state"], s["status"]["error_code"]) for s in r.json()["model_version_status"]}


def predict(server, model: str, x: float, suffix: str = "") -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(f"{server.url}/v1/models/{model}{suffix}:predict", json={"instances": [x]}, timeout=30)


class Hammer(threading.Thread):
    """Sends predictions non-stop and records every non-200 answer and every failed request
    (a refused or reset connection, a timeout): the thread never dies silently."""

    def __init__(self, server, model: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.server, self.model = server, model
        self.stop_flag = threading.Event()
        self.failures: list[str] = []
        self.count = 0

    def run(self) -> None:
        with requests.Session() as s:
            while not self.stop_flag.is_set():
                self.count += 1
                try:
                    r = s.post(f"{self.server.url}/v1/models/{self.model}:predict", json={"instances": [2.0]},
                               timeout=30)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    self.failures.append(r.text)


@pytest.mark.parametrize("workers", ["1", "2"])  # one process, and front-end workers (the model call crosses)
def test_version_polling_swap_without_failures(start_server, workers: str, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = tmp_path / "m"
    shutil.copytree(models_dir / "two_versions" / "1", base / "1")  # y = 0.5x + 2
    srv = start_server([f"--model_base_path={base}", "--model_name=m", "--file_system_poll_wait_seconds=1",
                        "--max_num_load_retries=1", "--load_retry_interval_micros=3000000",
                        f"--frontend_workers={workers}"])
    assert predict(srv, "m", 2.0).json() == {"predictions": [3.0]}
    hammer = Hammer(srv, "m")
    hammer.start()
    shutil.copytree(models_dir / "two_versions" / "2", tmp_path / "staging")  # y = x + 3
    os.rename(tmp_path / "staging", base / "2")
    wait_for(lambda: states(srv, "m") == {"2": ("AVAILABLE", "OK"), "1": ("END", "OK")}, what="v2 swap")
    assert predict(srv, "m", 2.0).json() == {"predictions": [5.0]}
    # a broken new version fails alone: its status says why, v2 keeps serving
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a saved model")
    wait_for(lambda: states(srv, "m").get("3", ("", ""))[0] == "END", what="v3 failure")
    st = states(srv, "m")
    assert st["2"] == ("AVAILABLE", "OK") and st["3"][1] != "OK"
    # fixed before its retry (--max_num_load_retries=1, 3 s apart): the retry loads it, v2 goes
    shutil.copytree(models_dir / "half_plus_two" / "1", tmp_path / "staging3")  # y = 0.5x + 2
    os.rename(base / "3", tmp_path / "broken3")
    os.rename(tmp_path / "staging3", base / "3")
    wait_for(lambda: states(srv, "m").get("3") == ("AVAILABLE", "OK"), what="v3 retried")
    wait_for(lambda: states(srv, "m").get("2") == ("END", "OK"), what="v2 unloaded")
    hammer.stop_flag.set()
    hammer.join(60)
    assert not hammer.is_alive() and hammer.count > 10 and hammer.failures == []
    assert predict(srv, "m", 2.0).json() == {"predictions": [3.0]}
    assert requests.get(srv.url + "/v1/health/ready", timeout=10).status_code == 200


def test_base_path_without_versions_is_named_in_the_log(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty" / "not_a_number").mkdir(parents=True)
    srv = start_server([f"--model_base_path={tmp_path / 'empty'}", "--model_name=empty"], ready=False)
    wait_for(lambda: "No versions of servable empty found under base path" in srv.output(), what="the warning")
    r = requests.get(srv.url + "/v1/health/ready", timeout=10)
    assert r.status_code == 503 and r.json()["models_not_ready"] == ["empty"]
    assert requests.get(srv.url + "/v1/models/empty", timeout=10).status_code == 404


def _config(models_dir: Path, *entries: str) -> str:
    parts = []
    for e in entries:
        name, _, rest = e.partition("|")
        parts.append(f'config {{ name: "{name}" base_path: "{models_dir / name}" model_platform: "tensorflow" {rest} }}')
    return "model_config_list { " + " ".join(parts) + " }\n"


def _reload(stub, text: str) -> None:  # type: ignore[no-untyped-def]
    req = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, req.config)
    stub.HandleReloadConfigRequest(req, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])  # one process, and front-end workers (the model call crosses)
def test_config_reload_by_file_and_rpc_with_label_rules(start_server, workers: str, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "models.config"
    cfg.write_text(_config(models_dir, "half_plus_two"))
    srv = start_server([f"--model_config_file={cfg}", "--model_config_file_poll_wait_seconds=1",
                        f"--frontend_workers={workers}"])
    assert predict(srv, "half_plus_two", 1.0).status_code == 200
    assert predict(srv, "two_versions", 1.0).status_code == 404
    # by file: add two_versions (all versions, labels), remove half_plus_two
    cfg.write_text(_config(models_dir, 'two_versions| model_version_policy { all {} } '
                                       'version_labels { key: "stable" value: 1 }'))
    wait_for(lambda: predict(srv, "two_versions", 2.0, "/labels/stable").status_code == 200, what="file reload")
    assert predict(srv, "two_versions", 2.0, "/labels/stable").json() == {"predictions": [3.0]}
    wait_for(lambda: predict(srv, "half_plus_two", 1.0).status_code == 404, what="model removed")
    with grpc.insecure_channel(srv.target) as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        # by RPC: move stable to 2, add canary
        _reload(stub, _config(models_dir, 'two_versions| model_version_policy { all {} } '
                                          'version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 1 }'))
        assert predict(srv, "two_versions", 2.0, "/labels/stable").json() == {"predictions": [5.0]}
        assert predict(srv, "two_versions", 2.0, "/labels/canary").json() == {"predictions": [3.0]}
        # a label may only point at an AVAILABLE version
        with pytest.raises(grpc.RpcError) as err:
            _reload(stub, _config(models_dir, 'two_versions| model_version_policy { all {} } '
                                              'version_labels { key: "stable" value: 7 }'))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 7 of model two_versions" in err.value.details()
        assert predict(srv, "two_versions", 2.0, "/labels/stable").json() == {"predictions": [5.0]}
        # policy change: only version 1; the latest request now goes to 1, version 2 unloads
        _reload(stub, _config(models_dir, 'two_versions| model_version_policy { specific { versions: 1 } } '
                                          'version_labels { key: "stable" value: 1 }'))
        assert predict(srv, "two_versions", 2.0).json() == {"predictions": [3.0]}
        assert states(srv, "two_versions")["2"] == ("END", "OK")
        with pytest.raises(grpc.RpcError) as err:
            _reload(stub, "custom_model_config { }")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_labels_for_unavailable_versions_flag(start_server, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(["--model_name=two_versions", f"--model_base_path={models_dir / 'two_versions'}",
                        "--allow_version_labels_for_unavailable_models"])
    with grpc.insecure_channel(srv.target) as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        _reload(stub, _config(models_dir, 'two_versions| version_labels { key: "next" value: 9 } '
                                          'version_labels { key: "stable" value: 2 }'))
        r = predict(srv, "two_versions", 2.0, "/labels/next")
        assert r.status_code == 404 and "Specific(two_versions, 9)" in r.json()["error"]
        # an existing label may not be moved to an unavailable version, even with the flag
        with pytest.raises(grpc.RpcError) as err:
            _reload(stub, _config(models_dir, 'two_versions| version_labels { key: "stable" value: 9 }'))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("workers", ["1", "2"])  # one process, and front-end workers (the model call crosses)
def test_sigterm_drains_in_flight_requests(start_server, workers: str, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(["--model_name=bytes_model", f"--model_base_path={models_dir / 'bytes_model'}",
                        f"--frontend_workers={workers}"])
    # the read_file signature writes <path>.started, then waits in the model until <path> exists
    fifo_rest, fifo_grpc = tmp_path / "rest.data", tmp_path / "grpc.data"
    results: dict[str, object] = {}

    def rest_call() -> None:
        r = requests.post(f"{srv.url}/v1/models/bytes_model:predict",
                          json={"signature_name": "read_file", "inputs": {"path": str(fifo_rest)}}, timeout=60)
        results["rest"] = (r.status_code, r.json(), r.headers.get("Connection", "").lower())

    def grpc_call() -> None:
        with grpc.insecure_channel(srv.target) as ch:
            req = predict_pb2.PredictRequest()
            req.model_spec.name, req.model_spec.signature_name = "bytes_model", "read_file"
            req.inputs["path"].CopyFrom(tf.make_tensor_proto(str(fifo_grpc)))
            res = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=60)
            results["grpc"] = tf.make_ndarray(res.outputs["content_bytes"])

    threads = [threading.Thread(target=rest_call), threading.Thread(target=grpc_call)]
    for t in threads:
        t.start()
    wait_for(lambda: Path(f"{fifo_rest}.started").exists(), what="REST request in the model")
    wait_for(lambda: Path(f"{fifo_grpc}.started").exists(), what="gRPC request in the model")
    srv.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            requests.get(srv.url + "/v1/health/live", timeout=2)
        except requests.ConnectionError:
            return True
        return False

    wait_for(refused, timeout=20, what="REST listener closed")
    assert srv.proc.poll() is None  # still finishing the in-flight requests
    for path, data in ((fifo_rest, b"rest-data"), (fifo_grpc, b"grpc-data")):
        Path(f"{path}.tmp").write_bytes(data)
        os.rename(f"{path}.tmp", path)  # appears whole
    for t in threads:
        t.join(60)
    # answered in full, and told not to reuse the connection (the client reconnects elsewhere)
    assert results["rest"] == (200, {"outputs": {"b64": "cmVzdC1kYXRh"}}, "close")
    assert results["grpc"] == b"grpc-data"
    assert srv.proc.wait(30) == 0


@pytest.mark.parametrize("workers", ["1", "2"])  # one process, and front-end workers (the model call crosses)
def test_sigterm_under_load_fails_no_request(start_server, workers: str, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Closed-loop gRPC and REST (keep-alive) clients keep calling through SIGTERM: every request the
    server took is answered OK (no gRPC CANCELLED, no reset HTTP connection); after the drain,
    requests fail only to connect (gRPC UNAVAILABLE, HTTP connection refused)."""
    srv = start_server(["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
                        f"--frontend_workers={workers}"])
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    outcomes: list[tuple[str, str]] = []  # (outcome, details); list.append is thread-safe
    done = threading.Event()
    with grpc.insecure_channel(srv.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def grpc_client() -> None:
            while not done.is_set():
                try:
                    res = stub.Predict(req, timeout=30)
                    ok = tf.make_ndarray(res.outputs["y"]).tolist() == [2.5, 3.0]
                    outcomes.append(("OK" if ok else "WRONG", ""))
                except grpc.RpcError as exc:
                    failed = exc.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower()
                    outcomes.append(("REFUSED" if failed else exc.code().name, exc.details() or ""))

        def rest_client() -> None:
            with requests.Session() as session:
                while not done.is_set():
                    try:
                        r = session.post(f"{srv.url}/v1/models/half_plus_two:predict",
                                         json={"instances": [1.0, 2.0]}, timeout=30)
                        ok = r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
                        outcomes.append(("OK" if ok else f"HTTP {r.status_code}", r.text))
                    except requests.ConnectionError as exc:
                        refused = "refused" in str(exc).lower()
                        outcomes.append(("REFUSED" if refused else "CONNECTION ERROR", str(exc)[:200]))

        threads = [threading.Thread(target=f) for f in [grpc_client] * 8 + [rest_client] * 8]
        for t in threads:
            t.start()
        wait_for(lambda: len(outcomes) >= 200, what="requests under load")
        at_sigterm = len(outcomes)
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(60)
        time.sleep(0.3)  # a few requests to the stopped server
        done.set()
        for t in threads:
            t.join(30)
    assert rc == 0
    failed = [o for o in outcomes if o[0] != "OK"]
    assert all(kind == "REFUSED" for kind, _ in failed), sorted(set(failed))[:5]
    assert len(outcomes) - len(failed) > at_sigterm  # requests taken during the drain were answered
    assert failed  # the clients did go on past the drain


async def test_a_port_that_cannot_be_bound_unwinds_what_was_started(tmp_path: Path) -> None:
    """start() binds gRPC, then fails on a busy REST port: StartError naming the port, and the
    gRPC port it had bound is free again (a plain bind succeeds)."""
    from modelserver.config.flags import parse_args
    from modelserver.config.model_config import single_model_config
    from modelserver.server import ModelServer, StartError

    grpc_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        flags = parse_args([f"--port={grpc_port}", f"--rest_api_port={busy.getsockname()[1]}",
                            "--bind_address=127.0.0.1", "--model_name=m", f"--model_base_path={tmp_path}"])
        server = ModelServer(flags, single_model_config("m", str(tmp_path)))
        with pytest.raises(StartError, match=f"cannot bind the REST port 127.0.0.1:{busy.getsockname()[1]}"):
            await server.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", grpc_port))


# ---- the command line ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODEL_SERVER, *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_unknown_flag_prints_usage_and_exits_1() -> None:
    r = run_cli("--port=1", "--no_such_flag=3")
    assert r.returncode == 1
    assert "usage: model-server" in r.stderr and "--no_such_flag" in r.stderr and "--rest_api_port" in r.stderr


def test_bad_model_config_file_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.config"
    bad.write_text("model_config_list { config { name: 'a' base_path: '/x' model_version_policy { latest { } } }")
    r = run_cli(f"--model_config_file={bad}", "--port=0")
    assert r.returncode == 1 and "Error parsing text-format tensorflow.serving.ModelServerConfig" in r.stderr
    dup = tmp_path / "dup.config"
    dup.write_text("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }")
    r = run_cli(f"--model_config_file={dup}", "--port=0")
    assert r.returncode == 1 and "more than once" in r.stderr
    r = run_cli("--model_name=a", "--port=0")
    assert r.returncode == 1 and "--model_base_path" in r.stderr


def test_unimplemented_flags_warning_and_timeouts(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    srv = start_server(["--model_name=bytes_model", f"--model_base_path={models_dir / 'bytes_model'}",
                        f"--monitoring_config_file={tmp_path / 'monitoring.config'}",
                        "--rest_api_num_threads=4", "--use_alts_credentials=false", "--ssl_config_file", "",
                        "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
                        "--rest_api_timeout_in_ms=3000", f"--grpc_socket_path={tmp_path / 'grpc.sock'}"])
    r = requests.post(f"{srv.url}/v1/models/bytes_model:predict", json={"instances": ["ab"]}, timeout=30)
    assert r.json() == {"predictions": [{"data_bytes": {"b64": "YWI="}, "length": 2}]}
    out = srv.output()
    assert "--rest_api_num_threads is accepted for compatibility but has no effect" in out
    assert "--use_alts_credentials is accepted" in out and "--ssl_config_file is accepted" not in out
    # a request that outlives --rest_api_timeout_in_ms gets 504 (the model waits for a file; 3 s, so
    # that the normal request above stays under it on a loaded machine)
    target = tmp_path / "never.data"
    r = requests.post(f"{srv.url}/v1/models/bytes_model:predict",
                      json={"signature_name": "read_file", "inputs": {"path": str(target)}}, timeout=30)
    assert r.status_code == 504 and "timed out" in r.json()["error"]
    # a gRPC deadline that passes while the model runs: DEADLINE_EXCEEDED, the server goes on
    with grpc.insecure_channel(srv.target) as ch:
        req = predict_pb2.PredictRequest()
        req.model_spec.name, req.model_spec.signature_name = "bytes_model", "read_file"
        req.inputs["path"].CopyFrom(tf.make_tensor_proto(str(target)))
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # (the client's own timer raises that by itself): the server answered it DEADLINE_EXCEEDED too,
    # and without waiting for the model call, which is still blocked
    srv.wait_until(lambda: srv.metric("modelserver_requests_total", protocol="grpc", model="bytes_model",
                                      code="DEADLINE_EXCEEDED") == 1, "the server's DEADLINE_EXCEEDED answer", 30)
    assert not target.exists()
    target.write_bytes(b"release")  # lets both model calls finish
    with grpc.insecure_channel(f"unix:{tmp_path / 'grpc.sock'}") as ch:  # --grpc_socket_path
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "bytes_model"
        req.inputs["data"].CopyFrom(tf.make_tensor_proto([b"sock"]))
        res = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=30)
        assert tf.make_ndarray(res.outputs["length"]).tolist() == [4]
    r = requests.post(f"{srv.url}/v1/models/bytes_model:predict", json={"instances": ["x"]}, timeout=30)
    assert r.status_code == 200


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_file_label_on_a_loading_version_moves_once_it_is_available(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The operator writes versions and labels in one models.config: a label on a version that is
    still loading fails that poll, and the same file is applied again until the label moves."""
    base = tmp_path / "m"
    shutil.copytree(models_dir / "two_versions" / "1", base / "1")  # y = 0.5x + 2
    cfg = tmp_path / "models.config"

    def config(labels: str) -> str:
        return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" '
                f'model_version_policy {{ specific {{ versions: 1 versions: 2 }} }} {labels} }} }}\n')

    cfg.write_text(config('version_labels { key: "stable" value: 1 }'))
    srv = start_server([f"--model_config_file={cfg}", "--model_config_file_poll_wait_seconds=1",
                        "--file_system_poll_wait_seconds=1"])
    cfg.write_text(config('version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 }'))
    wait_for(lambda: "not fully applied" in srv.output(), what="the refused label move")
    assert predict(srv, "m", 2.0, "/labels/canary").status_code in (400, 404)
    shutil.copytree(models_dir / "two_versions" / "2", tmp_path / "staging")  # y = x + 3
    os.rename(tmp_path / "staging", base / "2")
    wait_for(lambda: predict(srv, "m", 2.0, "/labels/canary").status_code == 200, timeout=60, what="canary moved")
    assert predict(srv, "m", 2.0, "/labels/canary").json() == {"predictions": [5.0]}
    assert predict(srv, "m", 2.0, "/labels/stable").json() == {"predictions": [3.0]}
