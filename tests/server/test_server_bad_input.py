"""Bad input against a real model-server: the right status and a message naming the problem, never
a 500 or a crash, and the server keeps serving everyone else (including a fuzz-style barrage)."""

from __future__ import annotations

import json
import random

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

PREDICT = "/v1/models/half_plus_two:predict"


@pytest.fixture(scope="module")
def small_server(start_server, models_dir):  # type: ignore[no-untyped-def]
    """A server with a 64 KiB REST body limit and a 1 MiB gRPC message limit."""
    return start_server([
        f"--model_config_file={models_dir / 'models.config'}",
        "--rest_api_max_request_bytes=65536",
        "--grpc_channel_arguments=grpc.max_receive_message_length=1048576",
    ])


@pytest.fixture(scope="module")
def stub(small_server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(small_server.target) as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


REST_CASES = [
    # (path, raw body, status, words in the error)
    (PREDICT, "{not json", 400, "JSON"),
    (PREDICT, "[1, 2]", 400, "object"),
    (PREDICT, '{"instances": [1.0], "inputs": [1.0]}', 400, "exactly one"),
    (PREDICT, "{}", 400, "instances"),
    (PREDICT, '{"instances": []}', 400, "non-empty"),
    (PREDICT, '{"instances": ["a", "b"]}', 400, "float"),
    (PREDICT, '{"instances": [[1.0, 2.0], [3.0]]}', 400, "ragged"),
    # shapes are fed as sent (TF Serving's rule): only TensorFlow rejects one, with its own message
    ("/v1/models/half_plus_two_tf1:predict", '{"signature_name": "classify_x_to_y", "instances": [["a", "b"]]}',
     400, "Expected serialized to be a scalar or vector, got shape: [1,2]"),
    (PREDICT, '{"inputs": {"y": [1.0]}}', 400, "alias not found"),
    (PREDICT, '{"instances": [{"y": 1.0}]}', 400, "alias not found"),
    (PREDICT, '{"instances": [null]}', 400, "float"),
    (PREDICT, '{"instances": [true]}', 400, "boolean"),
    (PREDICT, '{"signature_name": "nope", "instances": [1.0]}', 400, "nope"),
    (PREDICT, '{"signature_name": 3, "instances": [1.0]}', 400, "signature_name"),
    ("/v1/models/nope:predict", '{"instances": [1.0]}', 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/half_plus_two/versions/9:predict", '{"instances": [1.0]}', 404,
     "Servable not found for request: Specific(half_plus_two, 9)"),
    ("/v1/models/two_versions/labels/gold:predict", '{"instances": [1.0]}', 400,
     "Unrecognized servable version label: gold"),
    ("/v1/models/bytes_model:predict", '{"instances": [{"b64": "!!!"}]}', 400, "base64"),
    ("/v1/models/bytes_model:predict", '{"instances": [1]}', 400, "strings"),
    ("/v1/models/half_plus_two:classify", '{"examples": [{"x": 1.0}]}', 400, "classification signature"),
    ("/v1/models/half_plus_two_tf1:regress", '{"signature_name": "regress_x_to_y", "examples": []}', 400, "examples"),
    ("/v1/models/half_plus_two_tf1:regress",
     '{"signature_name": "regress_x_to_y", "examples": [{"x": [[1]]}]}', 400, "Feature"),
    ("/v1/models/half_plus_two_tf1:regress",
     '{"signature_name": "regress_x_to_y", "examples": [{"y": 1.0}]}', 400, "x"),
    ("/v1/models/half_plus_two:explain", '{"instances": [1.0]}', 400, "Malformed request: POST"),
    ("/v1/models/half_plus_two/versions/99999999999999999999:predict", '{"instances": [1.0]}', 400,
     "Failed to convert version: 99999999999999999999 to numeric."),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), REST_CASES)
def test_rest_bad_input(small_server, path: str, body: str, status: int, words: str) -> None:  # type: ignore[no-untyped-def]
    r = requests.post(small_server.url + path, data=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words.lower() in err.lower(), err


def test_rest_oversized_body_is_413(small_server) -> None:  # type: ignore[no-untyped-def]
    r = requests.post(small_server.url + PREDICT, data=b'{"instances": [' + b"1.0," * 40000 + b"1.0]}", timeout=30)
    assert r.status_code == 413
    assert "larger than 65536" in r.json()["error"]


def test_rest_unknown_model_status(small_server) -> None:  # type: ignore[no-untyped-def]
    r = requests.get(small_server.url + "/v1/models/nope", timeout=10)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = requests.get(small_server.url + "/v1/models/half_plus_two/versions/5/metadata", timeout=10)
    assert r.status_code == 404
    r = requests.get(small_server.url + "/v1/models/half_plus_two/versions/abc", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "Malformed request: GET /v1/models/half_plus_two/versions/abc"
    r = requests.put(small_server.url + PREDICT, data=b"{}", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == f"Malformed request: PUT {PREDICT}"


def _predict(inputs: dict[str, tensor_pb2.TensorProto], name: str = "half_plus_two", sig: str = "") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.model_spec.signature_name = sig
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(v)
    return req


def _tp(values: object, dtype: tf.DType) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(values, dtype=dtype)


GRPC_CASES = [
    (_predict({"x": _tp([1], tf.int32)}), grpc.StatusCode.INVALID_ARGUMENT, "to be float"),
    (_predict({"inputs": _tp([["a", "b"]], tf.string)}, name="half_plus_two_tf1", sig="classify_x_to_y"),
     grpc.StatusCode.INVALID_ARGUMENT, "Expected serialized to be a scalar or vector"),
    (_predict({}), grpc.StatusCode.INVALID_ARGUMENT, "Missing input"),
    (_predict({"x": _tp([1.0], tf.float32), "z": _tp([1.0], tf.float32)}), grpc.StatusCode.INVALID_ARGUMENT,
     "alias not found"),
    (_predict({"x": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00\x00",
                                           tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                               dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]))}),
     grpc.StatusCode.INVALID_ARGUMENT, "tensor_content"),
    (_predict({"x": tensor_pb2.TensorProto()}), grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
    *[(_predict({"x": tensor_pb2.TensorProto(dtype=dt, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))}), grpc.StatusCode.INVALID_ARGUMENT,
       "Unsupported tensor dtype") for dt in (types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT, 999)],
    (_predict({"x": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0],
                                           tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                               dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1 << 40)]))}),
     grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    (_predict({"x": _tp([1.0], tf.float32)}, name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec"),
    (_predict({"x": _tp([1.0], tf.float32)}, name="nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
    (_predict({"x": _tp([1.0], tf.float32)}, sig="bad"), grpc.StatusCode.INVALID_ARGUMENT, "bad"),
    (_predict({"data": _tp(["x"], tf.string)}, name="bytes_model", sig="read_file"),
     grpc.StatusCode.INVALID_ARGUMENT, "alias not found"),
    (_predict({"path": _tp("/proc/nonexistent/file", tf.string)}, name="bytes_model", sig="read_file"),
     grpc.StatusCode.INVALID_ARGUMENT, "/proc/nonexistent"),
]


@pytest.mark.parametrize(("request_", "code", "words"), GRPC_CASES)
def test_grpc_bad_predict(stub, request_, code, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(request_, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert words.lower() in err.value.details().lower(), err.value.details()


def test_grpc_other_bad_requests(stub) -> None:  # type: ignore[no-untyped-def]
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name, creq.model_spec.signature_name = "half_plus_two_tf1", "classify_x_to_y"
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(creq)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details()
    mreq = inference_pb2.MultiInferenceRequest()
    for name in ("half_plus_two", "two_versions"):
        t = mreq.tasks.add()
        t.model_spec.name, t.method_name = name, "tensorflow/serving/regress"
    with pytest.raises(grpc.RpcError) as err:
        stub.MultiInference(mreq)
    assert "same model name" in err.value.details()
    mreq = get_model_metadata_pb2.GetModelMetadataRequest()
    mreq.model_spec.name = "half_plus_two"
    mreq.metadata_field.append("graph")
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(mreq)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_message_size_limit(stub) -> None:  # type: ignore[no-untyped-def]
    big = _predict({"x": _tp(np.zeros(400_000, np.float32), tf.float32)})
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(big, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _mutations(rng: random.Random) -> list[bytes]:
    """Malformed REST bodies: truncations, byte flips, wrong types in every position."""
    valid = json.dumps({"instances": [1.0, 2.0]}).encode()
    values: list[object] = [None, True, -1, 1e309, "x", [], {}, [[]], [None], {"b64": 1}, [[1.0], 2.0], "\u0000"]
    out = [valid[:i] for i in range(0, len(valid), 3)]
    for _ in range(60):
        b = bytearray(valid)
        b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    for v in values:
        out.append(json.dumps({"instances": v}).encode())
        out.append(json.dumps({"inputs": {"x": v}}).encode())
        out.append(json.dumps({"instances": [v, 1.0]}).encode())
        out.append(json.dumps({"signature_name": v, "instances": [1.0]}).encode())
    out += [b"", b"\xff\xfe", b"null", b"1", b'"s"', b'{"instances": NaN}', b"{" * 5000,
            b'{"instances": ' + b"[" * 100_000 + b"1.0" + b"]" * 100_000 + b"}",
            b'{"instances": [' + b"[" * 900 + b"1.0" + b"]" * 900 + b"]}"]
    return out


def test_fuzz_rest_and_grpc_then_healthy(small_server, stub) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1234)
    statuses = []
    with requests.Session() as s:
        for body in _mutations(rng):
            for path in (PREDICT, "/v1/models/half_plus_two_tf1:regress", "/v1/models/bytes_model:predict"):
                r = s.post(small_server.url + path, data=body, timeout=30)
                statuses.append(r.status_code)
                assert r.status_code < 500, (path, body[:80], r.status_code, r.text)
                if r.status_code != 200:
                    assert "error" in r.json()
    assert statuses.count(200) < len(statuses)  # most are rejected
    good = _predict({"x": _tp([1.0], tf.float32)}).SerializeToString()
    with grpc.insecure_channel(small_server.target) as ch:
        call = ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for _ in range(150):
            b = bytearray(good)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            try:
                call(bytes(b), timeout=30)
            except grpc.RpcError as err:
                assert err.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                          grpc.StatusCode.UNAVAILABLE), err.details()
    # still healthy and serving
    assert requests.get(small_server.url + "/v1/health/ready", timeout=10).status_code == 200
    r = requests.post(small_server.url + PREDICT, json={"instances": [1.0, 2.0, 5.0]}, timeout=30)
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert tf.make_ndarray(stub.Predict(_predict({"x": _tp([0.0], tf.float32)})).outputs["y"]).tolist() == [2.0]
    assert small_server.proc.poll() is None
