"""Batching in a real model-server: concurrent gRPC and REST requests on the real half_plus_two
and MLP SavedModels give the unbatched answers while being merged; a full queue answers 429 /
RESOURCE_EXHAUSTED at once; a deadline passing in the queue answers DEADLINE_EXCEEDED without
computing; a bad batching file stops the server at start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

import grpc
import numpy as np
import pytest
import requests
from server_support import model_server, predict_request, run_server_expecting_exit

BATCHING = """
max_batch_size { value: 32 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 32
"""


@pytest.fixture(scope="module")
def batching_server(demo_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("batching_server")
    (d / "batching.config").write_text(BATCHING)
    (d / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    args = [f"--model_config_file={demo_models / 'models.config'}", "--enable_batching",
            f"--batching_parameters_file={d / 'batching.config'}",
            f"--monitoring_config_file={d / 'monitoring.config'}",
            f"--trace_file={d / 'trace.jsonl'}", "--trace_sample_rate=1"]
    with model_server(args, d / "server.log") as server:
        server.trace_path = d / "trace.jsonl"
        yield server


async def _grpc_predict_all(target: str, reqs: list, timeout: float = 60.0) -> list:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return await asyncio.gather(*(stub.Predict(r, timeout=timeout) for r in reqs))


def test_concurrent_requests_are_merged_and_answers_equal_unbatched_runs(batching_server, demo_models):
    import tensorflow as tf
    from modelserver.core.servable import load_servable

    # half_plus_two: 64 concurrent single-row requests, exact answers
    xs = [np.array([float(i)], np.float32) for i in range(64)]
    resp = asyncio.run(_grpc_predict_all(batching_server.target,
                                         [predict_request("half_plus_two", {"x": x}) for x in xs]))
    for x, r in zip(xs, resp, strict=True):
        assert tf.make_ndarray(r.outputs["y"]).tolist() == (x * 0.5 + 2.0).tolist()
        assert r.model_spec.name == "half_plus_two" and r.model_spec.version.value == 1

    # MLP: 48 concurrent requests of 1 or 2 rows, compared with the model run unbatched in process
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 2, 784)).astype(np.float32) for i in range(48)]
    resp = asyncio.run(_grpc_predict_all(batching_server.target,
                                         [predict_request("mlp", {"x": x}) for x in inputs]))
    sig = load_servable("mlp", 1, demo_models / "mlp" / "1").signature("serving_default")
    for x, r in zip(inputs, resp, strict=True):
        got = tf.make_ndarray(r.outputs["probabilities"])
        want = sig.run({"x": x})["probabilities"]
        assert got.shape == want.shape
        # identical up to float rounding: BLAS blocks differ with the batch size (≈3e-7)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # REST goes through the same batcher
    r = requests.post(f"{batching_server.url}/v1/models/half_plus_two:predict",
                      json={"instances": [1.0, 2.0, 5.0]}, timeout=30)
    assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0, 4.5]}

    # requests were merged: fewer executed batches than requests, and padded to allowed sizes
    batches = batching_server.metric("modelserver_batch_size_count", model="half_plus_two")
    assert 1 <= batches < 64
    sizes = batching_server.metric("modelserver_batch_size_sum", model="half_plus_two")
    assert sizes % 8 == 0  # every executed batch had 8, 16 or 32 rows
    mlp_batches = batching_server.metric("modelserver_batch_size_count", model="mlp")
    assert 1 <= mlp_batches < 48


def test_requests_that_cannot_be_batched_still_work(batching_server):
    # classify takes serialized tf.Examples: a string batch, merged like any other input
    r = requests.post(f"{batching_server.url}/v1/models/half_plus_two:classify",
                      json={"signature_name": "classify", "examples": [{"x": 1.0}, {"x": 3.0}]}, timeout=30)
    assert r.status_code == 200, r.text
    # a bad input is still a clear 400, not a batching failure
    r = requests.post(f"{batching_server.url}/v1/models/half_plus_two:predict",
                      json={"instances": ["a"]}, timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def test_trace_file_has_batched_requests_and_trace_summary_reads_it(batching_server, capsys):
    from modeldeploy import cli

    r = requests.post(f"{batching_server.url}/v1/models/mlp:predict",
                      json={"instances": [[0.0] * 784]}, timeout=30)
    assert r.status_code == 200

    def traced() -> bool:
        text = batching_server.trace_path.read_text() if batching_server.trace_path.exists() else ""
        return any('"protocol":"rest"' in line and '"model":"mlp"' in line for line in text.splitlines())

    batching_server.wait_until(traced, "the trace file to be flushed", timeout=30)
    lines = batching_server.trace_path.read_text().splitlines()
    assert any('"queue_start":null' not in line and '"model":"half_plus_two"' in line for line in lines)
    assert cli.main(["trace-summary", str(batching_server.trace_path)]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]) for line in out.splitlines()[1:]}
    assert {("half_plus_two", "grpc"), ("mlp", "grpc"), ("mlp", "rest")} <= rows


def test_full_queue_and_queued_deadline(demo_models, tmp_path):
    """One batch thread held by a request blocked on a FIFO; behind it a queue with room for 2
    rows: the third request is refused at once (429), and a gRPC request whose deadline passes in
    the queue is answered DEADLINE_EXCEEDED by the server while the thread is still held, and is
    never computed: after the release, the MLP ran one row only, a later request's."""
    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 2 } max_enqueued_batches { value: 1 } num_batch_threads { value: 1 }\n"
        "batch_timeout_micros { value: 0 }\n")
    (tmp_path / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    args = [f"--model_config_file={demo_models / 'models.config'}", "--enable_batching",
            f"--batching_parameters_file={tmp_path / 'batching.config'}",
            f"--monitoring_config_file={tmp_path / 'monitoring.config'}", "--rest_api_timeout_in_ms=60000"]
    with model_server(args, tmp_path / "server.log") as server:
        holder_result: dict = {}

        def hold() -> None:  # read_file blocks until the FIFO gets a writer
            holder_result["r"] = requests.post(
                f"{server.url}/v1/models/bytes_model:predict",
                json={"signature_name": "read_file", "inputs": {"path": str(fifo)}}, timeout=60)

        holder = threading.Thread(target=hold)
        holder.start()
        server.wait_until(lambda: server.metric("modelserver_batch_threads_busy") == 1,
                          "the held request to occupy the batch thread", timeout=30)

        queued: list = []

        def send(i: float) -> None:
            queued.append(requests.post(f"{server.url}/v1/models/half_plus_two:predict",
                                        json={"instances": [i]}, timeout=60))

        senders = [threading.Thread(target=send, args=(float(i),)) for i in range(2)]
        for t in senders:
            t.start()
        server.wait_until(lambda: server.metric("modelserver_queue_depth", model="half_plus_two") == 2,
                          "two queued requests", timeout=30)
        r = requests.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [9.0]}, timeout=10)
        assert r.status_code == 429
        assert "queue" in r.json()["error"] and "full" in r.json()["error"]

        # the gRPC deadline passes while the request waits behind the held batch thread
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(predict_request("mlp", {"x": np.zeros((1, 784), np.float32)}), timeout=0.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the client's own timer raises that error on its own: the server's record says it answered
        # (rather than computed) the request, and did so while the batch thread was still held
        server.wait_until(lambda: server.metric("modelserver_requests_total", model="mlp",
                                                code="DEADLINE_EXCEEDED") == 1,
                          "the server's DEADLINE_EXCEEDED answer", timeout=30)
        assert server.metric("modelserver_batch_threads_busy") == 1

        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as w:  # release the batch thread
            w.write(b"released")
        holder.join(60)
        for t in senders:
            t.join(60)
        # (TensorFlow cannot seek a FIFO, so the held request itself ends in a 400: it only held)
        assert holder_result["r"].status_code < 500, holder_result["r"].text
        assert sorted(q.status_code for q in queued) == [200, 200]
        # the expired MLP request never reached the model: the next MLP request (same queue, behind
        # it) is answered, and the only MLP rows ever computed are its one row (batches are
        # recorded when they run, whatever becomes of their requests)
        x = np.ones((1, 784), np.float32)
        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answer = stub.Predict(predict_request("mlp", {"x": x}), timeout=60).outputs["probabilities"]
            assert [d.size for d in answer.tensor_shape.dim] == [1, 10]
        assert server.metric("modelserver_batch_size_count", model="mlp") == 1
        assert server.metric("modelserver_batch_size_sum", model="mlp") == 1
        assert server.ready()


@pytest.mark.parametrize(
    ("text", "message"),
    [("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4", "must equal max_batch_size"),
     ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
      "monotonically increasing"),
     ("max_batch_size: 8", "max_batch_size")],
)
def test_bad_batching_file_stops_the_server_at_start(tmp_path, text, message):
    (tmp_path / "batching.config").write_text(text)
    proc = run_server_expecting_exit(["--model_name=m", f"--model_base_path={tmp_path}", "--enable_batching",
                                      f"--batching_parameters_file={tmp_path / 'batching.config'}"])
    assert proc.returncode != 0
    assert message in proc.stderr
