"""Front-end workers (`--frontend_workers=2`) in a real model-server: requests on either worker
get the single process's answers (tensors small and large, strings, metadata, status, REST, gRPC
and v2), batches form across workers, one consistent set of metrics for the pod, a routing push
is seen by every worker when it returns, a worker that dies is restarted while the other serves
on, and the workers go when the model process does. Which worker holds a connection is read from
/proc (the sockets each worker process owns), so nothing here depends on how the kernel happens
to spread connections. The drain on SIGTERM, version swaps and config reloads run across workers
in test_server_lifecycle.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from server_support import ServerProcess, free_port, predict_request, wait_for
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

TOKEN = "workers-token"
CALLS = "modelserver_frontend_worker_model_calls_total"


def worker_pids(srv: ServerProcess) -> dict[str, int]:
    """{worker index: pid} from the pod's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{srv.url}/monitoring/prometheus/metrics", timeout=10).text
    return {s.labels["worker"]: int(s.value) for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "modelserver_frontend_worker_pid"}


def _established(pid: int, port: int) -> int:
    """TCP connections to `port` that process `pid` holds open (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01" and cols[9] in inodes:
                    n += 1
    return n


def on_each_worker(srv: ServerProcess, port: int, connect: Callable[[], Any], tries: int = 64) -> dict[str, Any]:
    """Opens connections with `connect()` (which must return once connected) until every worker
    holds one: {worker index: connection}. The others are closed."""
    return on_each_worker_pids(srv, worker_pids(srv), port, connect, tries)


def on_each_worker_pids(srv: ServerProcess, workers: dict[str, int] | list[int], port: int, connect: Callable[[], Any],
                        tries: int = 64) -> dict[str, Any]:
    pids = workers if isinstance(workers, dict) else {str(i): p for i, p in enumerate(workers)}
    found: dict[str, Any] = {}
    spare = []
    for _ in range(tries):
        before = {w: _established(p, port) for w, p in pids.items()}
        conn = connect()
        after = wait_for(lambda: [w for w, p in pids.items() if _established(p, port) > before[w]],  # noqa: B023
                         what="the new connection")
        if after[0] not in found:
            found[after[0]] = conn
        else:
            spare.append(conn)
        if len(found) == len(pids):
            break
    for conn in spare:
        conn.close()
    assert len(found) == len(pids), f"{tries} connections all went to workers {sorted(found)}"
    return found


def grpc_channel(target: str) -> Callable[[], grpc.Channel]:
    def connect() -> grpc.Channel:
        ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(ch).result(timeout=30)
        return ch
    return connect


def rest_session(url: str) -> Callable[[], requests.Session]:
    def connect() -> requests.Session:
        s = requests.Session()
        assert s.get(f"{url}/v1/health/live", timeout=10).status_code == 200  # the connection stays open
        return s
    return connect


def predict_y(ch: grpc.Channel, x: Any, model: str = "half_plus_two", **spec: Any) -> np.ndarray:
    res = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(predict_request(model, {"x": x}, **spec), timeout=30)
    return tf.make_ndarray(res.outputs["y"])


@pytest.fixture(scope="module")
def served(start_server, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("workers")
    (d / "models.config").write_text(
        "model_config_list {\n"
        f' config {{ name: "half_plus_two" base_path: "{models_dir / "half_plus_two"}" model_platform: "tensorflow" }}\n'
        f' config {{ name: "bytes_model" base_path: "{models_dir / "bytes_model"}" model_platform: "tensorflow" }}\n'
        f' config {{ name: "half_plus_two_tf1" base_path: "{models_dir / "half_plus_two_tf1"}" model_platform: "tensorflow" }}\n'
        f' config {{ name: "two_versions" base_path: "{models_dir / "two_versions"}" model_platform: "tensorflow"'
        ' model_version_policy { all {} } version_labels { key: "stable" value: 1 }'
        ' version_labels { key: "canary" value: 2 } }\n}\n')
    (d / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    (d / "token").write_text(TOKEN + "\n")
    admin = free_port()
    srv = start_server([f"--model_config_file={d / 'models.config'}", f"--monitoring_config_file={d / 'monitoring.config'}",
                        f"--admin_port={admin}", f"--admin_token_file={d / 'token'}", "--frontend_workers=2",
                        f"--trace_file={d / 'traces.jsonl'}"])
    srv.trace_file = d / "traces.jsonl"
    srv.admin_url = f"http://127.0.0.1:{admin}/v1/admin/routing"
    channels = on_each_worker(srv, srv.grpc_port, grpc_channel(srv.target))
    sessions = on_each_worker(srv, srv.rest_port, rest_session(srv.url))
    yield srv, channels, sessions
    for c in [*channels.values(), *sessions.values()]:
        c.close()


def test_every_worker_answers_as_one_process(served) -> None:  # type: ignore[no-untyped-def]
    srv, channels, sessions = served
    big = np.arange(5000, dtype=np.float32)  # 20 kB: in shared memory both ways
    for ch in channels.values():
        assert predict_y(ch, [1.0, 2.0]).tolist() == [2.5, 3.0]
        np.testing.assert_array_equal(predict_y(ch, big), big * 0.5 + 2)
        assert predict_y(ch, [2.0], model="two_versions", label="canary").tolist() == [5.0]
        assert predict_y(ch, [2.0], model="two_versions", version=1).tolist() == [3.0]
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        res = stub.Predict(predict_request("bytes_model", {"data": np.array([b"a\x00b", b"cd"], dtype=object)}),
                           timeout=30)
        assert tf.make_ndarray(res.outputs["data_bytes"]).tolist() == [b"a\x00b", b"cd"]
        assert tf.make_ndarray(res.outputs["length"]).tolist() == [3, 2]
        meta = get_model_metadata_pb2.GetModelMetadataRequest()
        meta.model_spec.name = "half_plus_two"
        meta.metadata_field.append("signature_def")
        md = stub.GetModelMetadata(meta, timeout=30)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        md.metadata["signature_def"].Unpack(sigs)
        assert "serving_default" in sigs.signature_def
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = "two_versions"
        st = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(status, timeout=30)
        assert sorted(v.version for v in st.model_version_status) == [1, 2]
        with pytest.raises(grpc.RpcError) as err:
            predict_y(ch, [1.0], model="nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            predict_y(ch, [1.0], model="two_versions", version=7)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for s in sessions.values():
        r = s.post(f"{srv.url}/v1/models/half_plus_two:predict", json={"instances": [1.0, 5.0]}, timeout=30)
        assert r.json() == {"predictions": [2.5, 4.5]}
        r = s.post(f"{srv.url}/v1/models/two_versions/labels/stable:predict", json={"instances": [2.0]}, timeout=30)
        assert r.json() == {"predictions": [3.0]}
        r = s.post(f"{srv.url}/v2/models/half_plus_two/infer", timeout=30,
                   json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [0.0, 2.0]}]})
        assert r.json()["outputs"][0]["data"] == [2.0, 3.0]
        assert s.get(f"{srv.url}/v1/health/ready", timeout=10).status_code == 200


def test_the_pod_has_one_set_of_metrics(served) -> None:  # type: ignore[no-untyped-def]
    srv, channels, _ = served
    before = srv.metric(":tensorflow:serving:request_count_total", model_name="two_versions")
    calls = {w: srv.metric(CALLS, worker=w) for w in channels}
    for ch in channels.values():
        for _ in range(5):
            predict_y(ch, [1.0], model="two_versions")
    for _ in range(4):  # each scrape on a new connection, so on either worker: the same totals
        assert srv.metric(":tensorflow:serving:request_count_total", model_name="two_versions") == before + 10
        assert srv.metric("modelserver_frontend_workers") == 2
    for w in channels:
        assert srv.metric(CALLS, worker=w) == calls[w] + 5


def test_both_workers_append_whole_lines_to_one_trace_file(served) -> None:  # type: ignore[no-untyped-def]
    srv, channels, _ = served

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for line in srv.trace_file.read_text().splitlines()]  # each line whole JSON

    def ours() -> int:  # (no other test here uses this model)
        return sum(1 for r in records() if r["model"] == "half_plus_two_tf1")

    for ch in channels.values():
        for _ in range(200):
            predict_y(ch, [1.0], model="half_plus_two_tf1")
    wait_for(lambda: ours() >= 400, what="400 trace lines of both workers")
    assert ours() == 400


def test_a_routing_push_is_on_every_worker_when_it_returns(served) -> None:  # type: ignore[no-untyped-def]
    srv, channels, _ = served
    headers = {"Authorization": f"Bearer {TOKEN}"}
    gen = requests.get(srv.admin_url, headers=headers, timeout=10).json()["generation"]
    for step, (stable, answer) in enumerate([(2, 5.0), (1, 3.0), (2, 5.0)], start=1):
        doc = {"generation": gen + step, "models": {"two_versions": {"labels": {"stable": stable, "canary": 2}}}}
        assert requests.put(srv.admin_url, json=doc, headers=headers, timeout=30).status_code == 200
        for ch in channels.values():  # no wait: the push answered once every worker had it
            assert predict_y(ch, [2.0], model="two_versions", label="stable").tolist() == [answer]


def test_a_worker_that_dies_is_restarted_and_the_other_serves_on(served, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv, channels, _ = served
    pids = worker_pids(srv)
    victim, survivor = sorted(channels)
    failures: list[str] = []
    served_ok = [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                assert predict_y(channels[survivor], [1.0]).tolist() == [2.5]
                served_ok[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.append(repr(exc))

    # a request in the model (bytes_model's read_file waits for its file) from the victim's connection
    path = tmp_path / "held.data"
    held: dict[str, Any] = {}

    def in_flight() -> None:
        req = predict_request("bytes_model", {"path": np.array(str(path).encode(), dtype=object)}, signature="read_file")
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channels[victim]).Predict(req, timeout=60)
            held["code"] = "OK"
        except grpc.RpcError as exc:
            held["code"] = exc.code()

    threads = [threading.Thread(target=hammer), threading.Thread(target=in_flight)]
    for t in threads:
        t.start()
    wait_for(lambda: Path(f"{path}.started").exists(), what="the request in the model")
    wait_for(lambda: served_ok[0] >= 20, what="requests on the other worker")
    os.kill(pids[victim], signal.SIGKILL)
    threads[1].join(30)
    assert held.get("code") == grpc.StatusCode.UNAVAILABLE  # failed at once, cleanly: its connection is gone
    wait_for(lambda: srv.metric("modelserver_frontend_worker_exits_total", worker=victim) == 1, what="the exit counted")
    wait_for(lambda: worker_pids(srv).get(victim) not in (None, 0, pids[victim]), what="the worker restarted")
    path.write_bytes(b"late")  # the model call finishes; its answer has nowhere to go
    wait_for(lambda: served_ok[0] >= 60, what="more requests on the other worker")
    stop.set()
    threads[0].join(30)
    assert failures == []
    new = on_each_worker(srv, srv.grpc_port, grpc_channel(srv.target))  # the new worker serves
    for ch in new.values():
        assert predict_y(ch, [3.0]).tolist() == [3.5]
        ch.close()
    channels[victim] = grpc_channel(srv.target)()  # for the tests after this one
    assert srv.proc.poll() is None and "Traceback" not in srv.output()


@pytest.fixture(scope="module")
def batching(start_server, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two workers, one batch thread (which bytes_model's read_file can hold: it waits for a file),
    batches of up to 4 rows and a 60 s window that the tests never reach."""
    d = tmp_path_factory.mktemp("batching")
    (d / "batching.txt").write_text("max_batch_size { value: 4 } batch_timeout_micros { value: 60000000 } "
                                    "num_batch_threads { value: 1 }\n")
    (d / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }\n')
    (d / "models.config").write_text(
        "model_config_list {\n"
        f' config {{ name: "half_plus_two" base_path: "{models_dir / "half_plus_two"}" model_platform: "tensorflow" }}\n'
        f' config {{ name: "bytes_model" base_path: "{models_dir / "bytes_model"}" model_platform: "tensorflow" }}\n}}\n')
    srv = start_server([f"--model_config_file={d / 'models.config'}", "--enable_batching",
                        f"--batching_parameters_file={d / 'batching.txt'}",
                        f"--monitoring_config_file={d / 'monitoring.config'}", "--frontend_workers=2",
                        "--inline_call_max_us=0"])  # every batch on the thread, however cheap the model
    channels = on_each_worker(srv, srv.grpc_port, grpc_channel(srv.target))
    yield srv, channels
    for ch in channels.values():
        ch.close()


class HeldBatchThread:
    """Holds the one batch thread with bytes_model's read_file until `release()`."""

    def __init__(self, ch: grpc.Channel, gate: Path) -> None:
        self.gate = gate
        req = predict_request("bytes_model", {"path": np.array(str(gate).encode(), dtype=object)}, signature="read_file")
        self.call = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict.future(req, timeout=60)
        wait_for(lambda: Path(f"{gate}.started").exists(), what="the batch thread held")

    def release(self) -> None:
        self.gate.write_text("open")
        self.call.result()


def batch_sizes(srv: ServerProcess) -> dict[str, float]:
    return {le: srv.metric("modelserver_batch_size_bucket", model="half_plus_two", le=le) for le in ("1.0", "2.0", "4.0")}


def test_batches_form_across_workers(batching, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Four one-row requests, two through each worker, queued while the batch thread is held, run
    as one batch of four: the model process's one batcher took them all."""
    srv, channels = batching
    before = batch_sizes(srv)
    held = HeldBatchThread(channels["0"], tmp_path / "gate")
    stub = {w: prediction_service_pb2_grpc.PredictionServiceStub(ch) for w, ch in channels.items()}
    calls = [stub[w].Predict.future(predict_request("half_plus_two", {"x": np.array([float(i)], np.float32)}), timeout=60)
             for i, w in enumerate(["0", "1", "0", "1"])]
    wait_for(lambda: srv.metric("modelserver_queue_depth") == 4, what="four requests queued")
    held.release()
    assert sorted(float(tf.make_ndarray(c.result().outputs["y"])[0]) for c in calls) == [2.0, 2.5, 3.0, 3.5]
    after = batch_sizes(srv)
    assert {le: after[le] - before[le] for le in after} == {"1.0": 0, "2.0": 0, "4.0": 1}  # one batch of 4


def test_a_request_whose_client_leaves_never_runs(batching, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A queued request cancelled by its client is cancelled in the model process too: the batch
    that runs once the thread is free holds only the request that is still wanted."""
    srv, channels = batching
    before = batch_sizes(srv)
    cancels = srv.metric("modelserver_frontend_worker_cancelled_calls_total")
    held = HeldBatchThread(channels["0"], tmp_path / "gate")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channels["1"])
    gone = stub.Predict.future(predict_request("half_plus_two", {"x": np.array([1.0], np.float32)}), timeout=60)
    wait_for(lambda: srv.metric("modelserver_queue_depth") == 1, what="the request queued")
    gone.cancel()
    wait_for(lambda: srv.metric("modelserver_frontend_worker_cancelled_calls_total") == cancels + 1,
             what="the model process told")
    assert srv.metric("modelserver_queue_depth") == 0  # no longer waiting to run
    wanted = stub.Predict.future(predict_request("half_plus_two", {"x": np.array([4.0], np.float32)}), timeout=60)
    wait_for(lambda: srv.metric("modelserver_queue_depth") == 1, what="the second request queued")
    held.release()
    assert tf.make_ndarray(wanted.result().outputs["y"]).tolist() == [4.0]
    after = batch_sizes(srv)
    assert {le: after[le] - before[le] for le in after} == {"1.0": 1, "2.0": 1, "4.0": 1}  # one batch of 1 row


def test_the_workers_go_when_the_model_process_does(models_dir: Path, tmp_path: Path) -> None:
    srv = ServerProcess(["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
                         "--frontend_workers=2"], tmp_path / "server.log")
    try:
        srv.wait_ready()
        out = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in out]
        assert len(workers) == 2
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(10)

        def gone() -> bool:
            return not any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in workers)

        wait_for(gone, what="the workers to exit")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{srv.url}/v1/health/ready", timeout=5)
    finally:
        srv.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_the_worker_count(tmp_path: Path) -> None:
    from modelserver.workers.cores import auto_workers, cpu_quota, frontend_worker_count, usable_cpus

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cpu_quota(tmp_path) == 2.5
    assert usable_cpus(tmp_path) == min(len(os.sched_getaffinity(0)), 3)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    assert [auto_workers(n) for n in (1, 2, 3, 4, 8, 64)] == [1, 1, 2, 3, 7, 16]
    assert frontend_worker_count("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--frontend_workers"):
            frontend_worker_count(bad)
    assert json.dumps(frontend_worker_count("auto", tmp_path)).isdigit()


def test_readiness_is_the_model_process_on_every_worker(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No version yet: every worker answers not ready (and the model's status says why); once a
    version has loaded and warmed up in the model process, every worker is ready."""
    import shutil

    base = tmp_path / "m"
    base.mkdir()
    srv = start_server([f"--model_base_path={base}", "--model_name=m", "--file_system_poll_wait_seconds=1",
                        "--frontend_workers=2"], ready=False)
    srv.wait_until(lambda: "2 front-end worker(s) up" in srv.output(), "both workers bound")
    sessions = on_each_worker_pids(srv, worker_pids_of(srv), srv.rest_port, rest_session(srv.url))
    for s in sessions.values():
        r = s.get(f"{srv.url}/v1/health/ready", timeout=10)
        assert r.status_code == 503 and r.json()["models_not_ready"] == ["m"]
    shutil.copytree(models_dir / "half_plus_two" / "1", tmp_path / "staging")
    os.rename(tmp_path / "staging", base / "1")
    for s in sessions.values():
        wait_for(lambda: s.get(f"{srv.url}/v1/health/ready", timeout=10).status_code == 200,  # noqa: B023
                 what="ready on this worker")
        assert s.post(f"{srv.url}/v1/models/m:predict", json={"instances": [2.0]}, timeout=30).json() == {"predictions": [3.0]}
        s.close()


def worker_pids_of(srv: ServerProcess) -> list[int]:
    """The worker processes (children of the model process), from /proc: before metrics or readiness."""
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_a_port_in_use_is_a_start_up_error(models_dir: Path) -> None:
    """Workers bind with SO_REUSEPORT; a port another server holds must still be refused, not shared."""
    import socket

    from server_support import MODEL_SERVER, REPO

    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a listener that would share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*MODEL_SERVER, "--bind_address=127.0.0.1", f"--port={port}", f"--rest_api_port={free_port()}",
                            "--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
                            "--frontend_workers=2"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 1 and f"cannot bind gRPC 127.0.0.1:{port}" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
