"""The Open Inference Protocol (KServe v2) on a real model-server, driven by the protocol's own
clients (tritonclient, HTTP and gRPC) and by hand where the spec's wire forms are the point: health
and metadata, infer with JSON and binary data, BYTES, FP16 and BF16, versions and labels, the
signature parameter, errors, Triton's config and statistics extensions, grpc.health.v1, batches
shared with TF Serving's API, metrics per protocol, TF Serving's own testdata models; and that our
inference.proto is wire-compatible with tritonclient's."""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import demomodels as demo
import grpc
import ml_dtypes
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from server_support import REPO
from tritonclient.utils import InferenceServerException

TESTDATA = REPO.parent / "shared" / "tfserving-testdata"


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel with FP16, BF16 and UINT8 inputs (y = 2x, c = b + 1, n = u + 1 as INT64, flag = x > 0)."""
    import tensorflow as tf

    class Typed(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float16, name="x"),
                                      tf.TensorSpec([None], tf.bfloat16, name="b"),
                                      tf.TensorSpec([None], tf.uint8, name="u")])
        def f(self, x, b, u):  # type: ignore[no-untyped-def]
            return {"y": x * 2, "c": b + 1, "n": tf.cast(u, tf.int64) + 1, "flag": x > 0}

    base = tmp_path_factory.mktemp("typed") / "typed"
    m = Typed()
    tf.saved_model.save(m, str(base / "1"), signatures={"serving_default": m.f})
    return base


@pytest.fixture(scope="module")
def server(start_server, models_dir: Path, typed_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("v2")
    names = [demo.HALF_PLUS_TWO, demo.HALF_PLUS_TWO_TF1, demo.TWO_VERSIONS, demo.BYTES_MODEL]
    (d / "models.config").write_text(demo.model_config_text(
        [(n, str(models_dir / n)) for n in names] + [("typed", str(typed_model))],
        labels={demo.TWO_VERSIONS: {"stable": 1, "canary": 2}}, policies={demo.TWO_VERSIONS: "all {}"}))
    (d / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    return start_server([f"--model_config_file={d / 'models.config'}", "--file_system_poll_wait_seconds=0",
                         f"--monitoring_config_file={d / 'monitoring.config'}"])


@pytest.fixture(scope="module")
def http(server):  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.rest_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpcc(server):  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.target)
    yield client
    client.close()


def infer_input(mod, name: str, arr: np.ndarray, datatype: str, binary: bool = True):  # type: ignore[no-untyped-def]
    i = mod.InferInput(name, list(arr.shape), datatype)
    if mod is httpclient:
        i.set_data_from_numpy(arr, binary_data=binary)
    else:
        i.set_data_from_numpy(arr)
    return i


def post(server, path: str, body: object, **kw) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(server.url + path, data=body if isinstance(body, bytes) else json.dumps(body), timeout=30, **kw)


# ---- health and metadata ---------------------------------------------------------------------------


def test_health_and_server_metadata(server, http, grpcc) -> None:  # type: ignore[no-untyped-def]
    for c in (http, grpcc):
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready("half_plus_two") and c.is_model_ready("two_versions", "1")
        assert c.is_model_ready("two_versions", "canary")
    assert requests.get(server.url + "/v2/health/ready", timeout=10).json() == {"ready": True}
    meta = http.get_server_metadata()
    assert meta["name"] == "model-server" and "binary_tensor_data" in meta["extensions"]
    assert grpcc.get_server_metadata(as_json=True)["extensions"] == meta["extensions"]
    with grpc.insecure_channel(server.target) as ch:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="bytes_model")).status == \
            health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_metadata_and_config(http, grpcc) -> None:  # type: ignore[no-untyped-def]
    expected = {"name": "half_plus_two", "versions": ["1"], "platform": "tensorflow_savedmodel",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]}
    assert http.get_model_metadata("half_plus_two") == expected
    as_proto_json = json.loads(json.dumps(expected).replace("[-1]", '["-1"]'))  # protobuf's JSON: int64 as text
    assert grpcc.get_model_metadata("half_plus_two", as_json=True) == as_proto_json
    assert http.get_model_metadata("two_versions")["versions"] == ["1", "2"]
    typed = http.get_model_metadata("typed")
    assert {t["name"]: t["datatype"] for t in typed["inputs"] + typed["outputs"]} == {
        "x": "FP16", "b": "BF16", "u": "UINT8", "y": "FP16", "c": "BF16", "n": "INT64", "flag": "BOOL"}
    config = grpcc.get_model_config("bytes_model", as_json=True)["config"]
    assert config["input"] == [{"name": "data", "data_type": "TYPE_STRING", "dims": ["-1"]}]
    assert http.get_model_config("bytes_model")["input"] == [{"name": "data", "data_type": "TYPE_STRING", "dims": [-1]}]


# ---- infer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_infer_over_http_json_and_binary(http, binary: bool) -> None:  # type: ignore[no-untyped-def]
    x = infer_input(httpclient, "x", np.array([1.0, 2.0, 5.0], np.float32), "FP32", binary)
    result = http.infer("half_plus_two", [x], request_id="r-1",
                        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)])
    assert result.as_numpy("y").tolist() == [2.5, 3.0, 4.5]
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("half_plus_two", "1", "r-1")
    assert ("parameters" in response["outputs"][0]) == binary


def test_infer_over_grpc_raw_and_typed_contents(server, grpcc) -> None:  # type: ignore[no-untyped-def]
    x = infer_input(grpcclient, "x", np.array([1.0, 2.0, 5.0], np.float32), "FP32")
    result = grpcclient.InferResult(grpcc.infer("half_plus_two", [x], request_id="7").get_response())
    assert result.as_numpy("y").tolist() == [2.5, 3.0, 4.5]
    assert result.get_response().id == "7"
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    # typed contents, which tritonclient never sends
    req = service_pb2.ModelInferRequest(model_name="half_plus_two")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2])
    t.contents.fp32_contents.extend([0.0, 4.0])
    with grpc.insecure_channel(server.target) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)
    assert np.frombuffer(resp.raw_output_contents[0], np.float32).tolist() == [2.0, 4.0]


@pytest.mark.parametrize("client", ["http-binary", "http-json", "grpc"])
def test_bytes_in_and_out(http, grpcc, client: str) -> None:  # type: ignore[no-untyped-def]
    mod, c = (grpcclient, grpcc) if client == "grpc" else (httpclient, http)
    values = [b"a\x00b", b"", "\u00e9t\u00e9".encode()] if client != "http-json" else [b"ab", b"", "\u00e9".encode()]
    data = infer_input(mod, "data", np.array(values, dtype=object), "BYTES", binary=client == "http-binary")
    result = c.infer("bytes_model", [data])
    assert result.as_numpy("data_bytes").tolist() == values
    assert result.as_numpy("length").tolist() == [len(v) for v in values]


@pytest.mark.parametrize("client", ["http", "grpc"])
def test_fp16_bf16_uint8_and_bool(http, grpcc, client: str) -> None:  # type: ignore[no-untyped-def]
    mod, c = (grpcclient, grpcc) if client == "grpc" else (httpclient, http)
    x = np.array([0.5, -1.0, 3.0], np.float16)
    b = infer_input(mod, "b", np.array([1.0, 2.0, 3.0], ml_dtypes.bfloat16), "BF16")
    inputs = [infer_input(mod, "x", x, "FP16"), b, infer_input(mod, "u", np.array([0, 7, 255], np.uint8), "UINT8")]
    result = c.infer("typed", inputs)
    assert result.as_numpy("y").dtype == np.float16 and result.as_numpy("y").tolist() == [1.0, -2.0, 6.0]
    assert result.as_numpy("c").astype(np.float32).tolist() == [2.0, 3.0, 4.0]
    assert result.as_numpy("n").tolist() == [1, 8, 256]
    assert result.as_numpy("flag").tolist() == [True, False, True]


def test_the_specs_json_example_and_nested_data(server) -> None:  # type: ignore[no-untyped-def]
    body = {"id": "42", "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 5.0]}],
            "outputs": [{"name": "y"}]}
    r = post(server, "/v2/models/half_plus_two/infer", body)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"model_name": "half_plus_two", "model_version": "1", "id": "42",
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [3], "data": [2.5, 3.0, 4.5]}]}
    nested = {"inputs": [{"name": "u", "shape": [3], "datatype": "UINT8", "data": [[1], [2, 3]]},
                         {"name": "x", "shape": [3], "datatype": "FP16", "data": [1, 2, 3]},
                         {"name": "b", "shape": [3], "datatype": "BF16", "data": [1, 2, 3]}],
              "outputs": [{"name": "flag"}]}
    assert post(server, "/v2/models/typed/infer", nested).json()["outputs"] == [
        {"name": "flag", "datatype": "BOOL", "shape": [3], "data": [True, True, True]}]


def test_the_binary_data_extension_by_hand(server) -> None:  # type: ignore[no-untyped-def]
    """The spec's binary form: JSON header, then each input's bytes in order; BYTES elements as a
    4-byte little-endian length and the bytes; an output asked as binary comes after the JSON."""
    strings = [b"hello", b"\xff\x00"]
    raw = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    head = json.dumps({"inputs": [{"name": "data", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "length", "parameters": {"binary_data": True}}, {"name": "data_bytes"}]}
                      ).encode()
    r = post(server, "/v2/models/bytes_model/infer", head + raw,
             headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    answer = json.loads(r.content[:n])
    assert answer["outputs"] == [
        {"name": "length", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {"name": "data_bytes", "datatype": "BYTES", "shape": [2], "data": ["hello", "\ufffd\u0000"]}]
    assert np.frombuffer(r.content[n:], np.int32).tolist() == [5, 2]


# ---- versions, labels, signatures, routing -------------------------------------------------------


def test_versions_and_labels(server, http, grpcc) -> None:  # type: ignore[no-untyped-def]
    for c, mod in ((http, httpclient), (grpcc, grpcclient)):
        x = infer_input(mod, "x", np.array([1.0], np.float32), "FP32")
        assert c.infer("two_versions", [x], model_version="1").as_numpy("y").tolist() == [2.5]
        assert c.infer("two_versions", [x], model_version="2").as_numpy("y").tolist() == [4.0]
        assert c.infer("two_versions", [x], model_version="stable").as_numpy("y").tolist() == [2.5]
        answer = c.infer("two_versions", [x])  # no version: the latest, as TF Serving
        assert answer.as_numpy("y").tolist() == [4.0]
    r = post(server, "/v2/models/two_versions/versions/canary/infer",
             {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert r.json()["model_version"] == "2" and r.headers["X-Model-Version"] == "2"


def test_unversioned_requests_follow_the_split_and_the_route_key(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A routing table splitting two_versions 50/50 between stable (1) and canary (2): an
    unversioned v2 request is split as a TF Serving one is; one route key, one version, on either
    port (the same key over REST and gRPC: the same label)."""
    (tmp_path / "models.config").write_text(demo.model_config_text(
        [(demo.TWO_VERSIONS, str(models_dir / demo.TWO_VERSIONS))], policies={demo.TWO_VERSIONS: "all {}"}))
    (tmp_path / "routing.json").write_text(json.dumps({"generation": 1, "models": {demo.TWO_VERSIONS: {
        "labels": {"stable": 1, "canary": 2}, "weights": {"stable": 50, "canary": 50}}}}))
    srv = start_server([f"--model_config_file={tmp_path / 'models.config'}",
                        f"--routing_config_file={tmp_path / 'routing.json'}"])
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [2.0]}]}
    url = srv.url + "/v2/models/two_versions/infer"
    seen = set()
    with requests.Session() as s:
        for _ in range(200):
            r = s.post(url, json=body, timeout=30)
            answer = r.json()
            assert answer["outputs"][0]["data"] == {"1": [3.0], "2": [5.0]}[answer["model_version"]]
            seen.add((answer["model_version"], r.headers["X-Model-Label"]))
        assert seen == {("1", "stable"), ("2", "canary")}
        keyed = {s.post(url, json=body, headers={"X-Model-Route-Key": "user-7"}, timeout=30).headers["X-Model-Label"]
                 for _ in range(50)}
    assert len(keyed) == 1
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    req = service_pb2.ModelInferRequest(model_name="two_versions")
    req.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(2.0)
    with grpc.insecure_channel(srv.target) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        over_grpc = set()
        for _ in range(50):
            resp, call = stub.ModelInfer.with_call(req, metadata=(("x-model-route-key", "user-7"),), timeout=30)
            over_grpc.add((resp.model_version, dict(call.trailing_metadata())["x-model-label"]))
    assert len(over_grpc) == 1 and next(iter(over_grpc))[1] == next(iter(keyed))


def test_a_request_parameter_names_the_signature(server, grpcc) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    ex = tf.train.Example(features=tf.train.Features(feature={"x": tf.train.Feature(
        float_list=tf.train.FloatList(value=[3.0]))})).SerializeToString()
    inputs = [infer_input(grpcclient, "inputs", np.array([ex], dtype=object), "BYTES")]
    answer = grpcc.infer("half_plus_two", inputs, parameters={"signature_name": "regress"})
    assert answer.as_numpy("outputs").reshape(-1).tolist() == [3.5]
    r = post(server, "/v2/models/half_plus_two/infer", {"parameters": {"signature_name": "nope"}, "inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert r.status_code == 400 and "nope" in r.json()["error"]


# ---- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v2/models/nope/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}, 404,
     "nope"),
    ("/v2/models/half_plus_two/infer", {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1]}]},
     400, "1 data elements, but its shape has 2"),
    ("/v2/models/half_plus_two/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}]},
     400, "unknown datatype"),
    ("/v2/models/half_plus_two/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [1]}]},
     400, "Expects arg[x] to be float"),
    ("/v2/models/half_plus_two/infer", {"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1]}]},
     400, "input tensor alias not found"),
    ("/v2/models/half_plus_two/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                                        "outputs": [{"name": "q"}]}, 400, "output tensor alias not found"),
    ("/v2/models/half_plus_two/infer", b"{", 400, "JSON"),
    ("/v2/models/half_plus_two/versions/9/infer", {"inputs": []}, 400, "inputs must be a non-empty list"),
    ("/v2/models/half_plus_two/versions/9/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                               "data": [1]}]}, 404, "9"),
    ("/v2/models/half_plus_two/nonsense", {}, 404, "Malformed request"),
])
def test_errors_over_http(server, path: str, body: object, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_errors_over_the_clients(http, grpcc) -> None:  # type: ignore[no-untyped-def]
    for c, mod in ((http, httpclient), (grpcc, grpcclient)):
        with pytest.raises(InferenceServerException) as err:
            c.infer("nope", [infer_input(mod, "x", np.array([1.0], np.float32), "FP32")])
        assert err.value.status() in ("404", "StatusCode.NOT_FOUND")
        with pytest.raises(InferenceServerException) as err:
            c.infer("half_plus_two", [infer_input(mod, "x", np.array([1], np.int64), "INT64")])
        assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
        assert not c.is_model_ready("two_versions", "7")


def test_binary_sizes_that_overrun_the_body_are_400(server) -> None:  # type: ignore[no-untyped-def]
    head = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    for extra, length in ((b"\x00" * 4, len(head)), (b"\x00" * 12, len(head)), (b"\x00" * 8, len(head) + 100)):
        r = post(server, "/v2/models/half_plus_two/infer", head + extra,
                 headers={"Inference-Header-Content-Length": str(length)})
        assert r.status_code == 400, r.text


# ---- Triton's statistics, metrics, shared batches -------------------------------------------------


def test_statistics_count_every_protocol(server, http, grpcc) -> None:  # type: ignore[no-untyped-def]
    def count() -> int:
        return int(http.get_inference_statistics("half_plus_two")["model_stats"][0]["execution_count"])

    before = count()
    requests.post(server.url + "/v1/models/half_plus_two:predict", json={"instances": [1.0]}, timeout=30)
    grpcc.infer("half_plus_two", [infer_input(grpcclient, "x", np.array([1.0], np.float32), "FP32")])
    assert count() == before + 2
    stats = grpcc.get_inference_statistics("half_plus_two", as_json=True)["model_stats"][0]
    assert stats["name"] == "half_plus_two" and int(stats["inference_stats"]["success"]["count"]) >= 2


def test_metrics_carry_the_protocol(server, http, grpcc) -> None:  # type: ignore[no-untyped-def]
    http.infer("half_plus_two", [infer_input(httpclient, "x", np.array([1.0], np.float32), "FP32")])
    grpcc.infer("half_plus_two", [infer_input(grpcclient, "x", np.array([1.0], np.float32), "FP32")])
    for protocol in ("v2_rest", "v2_grpc"):
        assert server.metric("modelserver_requests_total", path="/metrics", protocol=protocol, api="predict",
                             model="half_plus_two", code="OK") >= 1, protocol
    assert server.metric(":tensorflow:serving:request_latency_count", path="/metrics", model_name="half_plus_two",
                         entrypoint="GRPC") >= 1


def test_v2_and_tf_serving_requests_share_batches(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One batch thread, held by bytes_model's read_file (it waits for a file); meanwhile a TF
    Serving predict and a v2 infer queue for half_plus_two; once the file appears, the thread
    takes them as one batch of two (max_batch_size 2; the 60 s timeout never passes)."""
    (tmp_path / "batching.config").write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 60000000 }\n"
                                              "num_batch_threads { value: 1 }\n")
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    srv = start_server([f"--model_config_file={models_dir / 'models.config'}", "--enable_batching",
                        f"--batching_parameters_file={tmp_path / 'batching.config'}",
                        f"--monitoring_config_file={tmp_path / 'monitoring.config'}"])
    gate = tmp_path / "gate"
    answers: dict[str, object] = {}

    def call(key: str, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=lambda: answers.__setitem__(key, fn()))
        t.start()
        return t

    held = call("gate", lambda: requests.post(srv.url + "/v1/models/bytes_model:predict", json={
        "signature_name": "read_file", "inputs": {"path": str(gate)}}, timeout=60).json())
    srv.wait_until(lambda: (tmp_path / "gate.started").exists(), "the batch thread held")
    v1 = call("v1", lambda: requests.post(srv.url + "/v1/models/half_plus_two:predict", json={"instances": [1.0]},
                                          timeout=60).json())
    client = grpcclient.InferenceServerClient(srv.target)
    x = infer_input(grpcclient, "x", np.array([2.0], np.float32), "FP32")
    v2 = call("v2", lambda: client.infer("half_plus_two", [x], client_timeout=60).as_numpy("y").tolist())
    srv.wait_until(lambda: srv.metric("modelserver_queue_depth", path="/metrics") == 2, "both requests queued")
    gate.write_text("open")
    for t in (held, v1, v2):
        t.join()
    client.close()
    assert answers["v1"] == {"predictions": [2.5]} and answers["v2"] == [3.0], answers
    assert srv.metric("modelserver_batch_size_count", path="/metrics", model="half_plus_two") == 1
    assert srv.metric("modelserver_batch_size_sum", path="/metrics", model="half_plus_two") == 2


def test_readiness_waits_for_every_model(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A configured model with no version yet: the server is not ready over v2 (4xx, as the
    protocol says), nor the model; the models that are loaded are."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "models.config").write_text(demo.model_config_text(
        [(demo.HALF_PLUS_TWO, str(models_dir / demo.HALF_PLUS_TWO)), ("later", str(tmp_path / "empty"))]))
    srv = start_server([f"--model_config_file={tmp_path / 'models.config'}"], ready=False)
    srv.wait_until(lambda: requests.get(srv.url + "/v2/models/half_plus_two/ready", timeout=5).status_code == 200,
                   "half_plus_two ready")
    assert requests.get(srv.url + "/v2/health/ready", timeout=5).status_code == 400
    assert requests.get(srv.url + "/v2/models/later/ready", timeout=5).json() == {"name": "later", "ready": False}
    with grpcclient.InferenceServerClient(srv.target) as c:
        assert not c.is_server_ready() and not c.is_model_ready("later") and c.is_model_ready("half_plus_two")


def test_v2_grpc_over_tls(start_server, models_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--ssl_config_file covers the v2 service on the gRPC port as it covers TF Serving's."""
    from test_server_tls import _cert, _key, _pem, _pem_key, ssl_config

    ca_key, server_key = _key(), _key()
    ca = _cert("test CA", ca_key, None)
    cfg = ssl_config(tmp_path / "ssl.config", _pem_key(server_key),
                     _pem(_cert("model-server", server_key, (ca, ca_key), True)))
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    srv = start_server([f"--model_config_file={models_dir / 'models.config'}", f"--ssl_config_file={cfg}"])
    x = infer_input(grpcclient, "x", np.array([2.0], np.float32), "FP32")
    with grpcclient.InferenceServerClient(srv.target, ssl=True, root_certificates=str(tmp_path / "ca.pem")) as c:
        assert c.is_server_ready() and c.infer("half_plus_two", [x]).as_numpy("y").tolist() == [3.0]
    with grpcclient.InferenceServerClient(srv.target) as c, pytest.raises(InferenceServerException):
        c.infer("half_plus_two", [x])  # plaintext is not spoken there


# ---- TF Serving's own testdata models -----------------------------------------------------------------


@pytest.mark.skipif(not TESTDATA.is_dir(), reason="../shared/tfserving-testdata is not here")
def test_tf_serving_testdata_models(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    for name in ("saved_model_half_plus_two_cpu", "saved_model_half_plus_three"):
        shutil.copytree(TESTDATA / name, tmp_path / name)
    (tmp_path / "models.config").write_text(demo.model_config_text(
        [("two", str(tmp_path / "saved_model_half_plus_two_cpu")),
         ("three", str(tmp_path / "saved_model_half_plus_three"))]))
    srv = start_server([f"--model_config_file={tmp_path / 'models.config'}"])
    with grpcclient.InferenceServerClient(srv.target) as c:
        meta = c.get_model_metadata("two", as_json=True)
        assert meta["versions"] == ["123"] and meta["inputs"][0]["datatype"] == "FP32"
        x = np.array([[1.0], [2.0]], np.float32)
        assert c.infer("two", [infer_input(grpcclient, "x", x, "FP32")]).as_numpy("y").tolist() == [[2.5], [3.0]]
        assert c.infer("three", [infer_input(grpcclient, "x", x, "FP32")]).as_numpy("y").tolist() == [[3.5], [4.0]]


# ---- perf_analyzer ------------------------------------------------------------------------------------


@pytest.mark.parametrize("http_port", [False, True], ids=["grpc", "http"])
def test_perf_analyzer_drives_model_server(server, http_port: bool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The bench's load tool, as it drives Triton (`--service-kind=triton`), over either port;
    `make test` installs it (bench/setup.sh --tools-only)."""
    import load
    from common import PERF_ANALYZER

    assert PERF_ANALYZER.exists(), "run `bash bench/setup.sh --tools-only`"
    settings = load.Settings(window_ms=500, max_trials=3, stability_pct=1000)
    point = load.perf_analyzer("model-server", server.rest_port if http_port else server.grpc_port, "half_plus_two",
                               2, settings, "triton", http=http_port, version="1", shape="x:1")
    assert point.throughput > 0 and 0 < point.p50_us <= point.p99_us, point


# ---- the .proto -------------------------------------------------------------------------------------


def test_our_messages_are_wire_compatible_with_tritonclients() -> None:
    """Every field of inference.proto has the number, type and cardinality of tritonclient's
    (Triton's grpc_service.proto and model_config.proto), and the enums the same values."""
    from modelserver.protocol.v2_api import inference_pb2 as ours
    from tritonclient.grpc import model_config_pb2, service_pb2

    def repeated(f) -> bool:  # type: ignore[no-untyped-def]  # protobuf 7 has only is_repeated, 5 only label
        return bool(f.is_repeated) if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED

    def check(mine, theirs) -> None:  # type: ignore[no-untyped-def]
        for f in mine.fields:
            t = theirs.fields_by_name[f.name]
            assert (f.number, f.type, repeated(f)) == (t.number, t.type, repeated(t)), (mine.full_name, f.name)
            if f.message_type is not None and not f.message_type.GetOptions().map_entry:
                check(f.message_type, t.message_type)

    for name, desc in ours.DESCRIPTOR.message_types_by_name.items():
        theirs = service_pb2.DESCRIPTOR.message_types_by_name.get(name) or \
            model_config_pb2.DESCRIPTOR.message_types_by_name[name]
        check(desc, theirs)
    data_type = model_config_pb2.DESCRIPTOR.enum_types_by_name["DataType"]
    for v in ours.DESCRIPTOR.enum_types_by_name["DataType"].values:
        assert data_type.values_by_name[v.name].number == v.number
