"""Every REST and gRPC API of a real model-server, with TF Serving's own client stubs."""

from __future__ import annotations

import base64
import subprocess

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)


@pytest.fixture(scope="module")
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.target) as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


@pytest.fixture(scope="module")
def model_stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.target) as ch:
        yield model_service_pb2_grpc.ModelServiceStub(ch)


# ---- the "done when" examples --------------------------------------------------------


def test_curl_example_exact(server) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        ["curl", "-s", "-d", '{"instances": [1.0, 2.0, 5.0]}', "-X", "POST",
         f"{server.url}/v1/models/half_plus_two:predict"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout
    assert out == '{"predictions": [2.5, 3.0, 4.5]}'


def test_tf_serving_docs_grpc_client(stub) -> None:  # type: ignore[no-untyped-def]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "serving_default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
    result = stub.Predict(request, 10.0)
    np.testing.assert_allclose(tf.make_ndarray(result.outputs["y"]), [2.5, 3.0, 4.5])
    assert result.model_spec.name == "half_plus_two"
    assert result.model_spec.version.value == 1
    assert result.model_spec.signature_name == "serving_default"


# ---- REST --------------------------------------------------------------------------------------


def post(server, path: str, body: object) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(server.url + path, json=body, timeout=30)


def test_rest_columnar_and_tf1(server) -> None:  # type: ignore[no-untyped-def]
    r = post(server, "/v1/models/half_plus_two_tf1:predict", {"inputs": {"x": [1.0, 3.0]}})
    assert r.status_code == 200 and r.json() == {"outputs": [2.5, 3.5]}
    r = post(server, "/v1/models/half_plus_two/versions/1:predict", {"inputs": [0.0]})
    assert r.json() == {"outputs": [2.0]}


def test_rest_versions_and_labels(server) -> None:  # type: ignore[no-untyped-def]
    body = {"instances": [2.0]}
    assert post(server, "/v1/models/two_versions:predict", body).json() == {"predictions": [5.0]}  # latest = v2
    assert post(server, "/v1/models/two_versions/versions/1:predict", body).json() == {"predictions": [3.0]}
    assert post(server, "/v1/models/two_versions/labels/stable:predict", body).json() == {"predictions": [3.0]}
    assert post(server, "/v1/models/two_versions/labels/canary:predict", body).json() == {"predictions": [5.0]}


def test_rest_bytes_model_b64(server) -> None:  # type: ignore[no-untyped-def]
    r = post(server, "/v1/models/bytes_model:predict",
             {"instances": [{"b64": base64.b64encode(b"\x00\xffbin").decode()}, "text"]})
    assert r.status_code == 200
    assert r.json() == {"predictions": [
        {"data_bytes": {"b64": base64.b64encode(b"\x00\xffbin").decode()}, "length": 5},
        {"data_bytes": {"b64": base64.b64encode(b"text").decode()}, "length": 4},
    ]}
    r = post(server, "/v1/models/bytes_model:predict", {"inputs": {"data": ["a", "bc"]}})
    assert r.json() == {"outputs": {"data_bytes": [{"b64": "YQ=="}, {"b64": "YmM="}], "length": [1, 2]}}


def test_rest_classify_regress(server) -> None:  # type: ignore[no-untyped-def]
    ex = {"examples": [{"x": 1.0}, {"x": 3.0}]}
    r = post(server, "/v1/models/half_plus_two_tf1:classify", {"signature_name": "classify_x_to_y", **ex})
    assert r.status_code == 200 and r.json() == {"results": [[["", 2.5]], [["", 3.5]]]}
    r = post(server, "/v1/models/half_plus_two_tf1:regress", {"signature_name": "regress_x_to_y", **ex})
    assert r.json() == {"results": [2.5, 3.5]}
    r = post(server, "/v1/models/half_plus_two:regress",
             {"signature_name": "regress", "context": {"x": 4.0}, "examples": [{}, {"x": 0.0}]})
    assert r.json() == {"results": [4.0, 2.0]}  # context merged; the example's own feature wins


def test_rest_status_and_metadata(server) -> None:  # type: ignore[no-untyped-def]
    r = requests.get(server.url + "/v1/models/two_versions", timeout=10)
    assert r.json() == {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for v in (2, 1)]}
    r = requests.get(server.url + "/v1/models/two_versions/labels/stable", timeout=10)
    assert [s["version"] for s in r.json()["model_version_status"]] == ["1"]
    r = requests.get(server.url + "/v1/models/half_plus_two_tf1/metadata", timeout=10)
    meta = r.json()
    assert meta["model_spec"] == {"name": "half_plus_two_tf1", "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert sigs["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    assert sigs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"


def test_health(server) -> None:  # type: ignore[no-untyped-def]
    assert requests.get(server.url + "/v1/health/live", timeout=10).status_code == 200
    assert requests.get(server.url + "/v1/health/ready", timeout=10).json() == {"status": "ready"}


# ---- gRPC --------------------------------------------------------------------------------------


def _examples(values: list[float]) -> list[example_pb2.Example]:
    out = []
    for v in values:
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(v)
        out.append(ex)
    return out


def test_grpc_predict_labels_versions_filter(stub) -> None:  # type: ignore[no-untyped-def]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "two_versions"
    req.model_spec.version_label = "stable"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto([2.0], dtype=tf.float32))
    res = stub.Predict(req)
    assert res.model_spec.version.value == 1 and tf.make_ndarray(res.outputs["y"]).tolist() == [3.0]
    req.model_spec.version.value = 2
    assert tf.make_ndarray(stub.Predict(req).outputs["y"]).tolist() == [5.0]
    breq = predict_pb2.PredictRequest()
    breq.model_spec.name = "bytes_model"
    breq.inputs["data"].CopyFrom(tf.make_tensor_proto([b"abc"]))
    breq.output_filter.append("length")
    res = stub.Predict(breq)
    assert list(res.outputs) == ["length"] and tf.make_ndarray(res.outputs["length"]).tolist() == [3]


@pytest.mark.parametrize(("model", "csig", "rsig"), [
    ("half_plus_two_tf1", "classify_x_to_y", "regress_x_to_y"),
    ("half_plus_two", "classify", "regress"),
])
def test_grpc_classify_regress_multi(stub, model: str, csig: str, rsig: str) -> None:  # type: ignore[no-untyped-def]
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name, creq.model_spec.signature_name = model, csig
    creq.input.example_list.examples.extend(_examples([1.0, 3.0]))
    res = stub.Classify(creq)
    assert [c.classes[0].score for c in res.result.classifications] == [2.5, 3.5]
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name, rreq.model_spec.signature_name = model, rsig
    rreq.input.example_list_with_context.context.features.feature["x"].float_list.value.append(10.0)
    rreq.input.example_list_with_context.examples.add()
    assert [r.value for r in stub.Regress(rreq).result.regressions] == [7.0]
    mreq = inference_pb2.MultiInferenceRequest()
    for sig, method in ((csig, "tensorflow/serving/classify"), (rsig, "tensorflow/serving/regress")):
        task = mreq.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = model, sig, method
    mreq.input.example_list.examples.extend(_examples([0.0]))
    mres = stub.MultiInference(mreq)
    assert mres.results[0].classification_result.classifications[0].classes[0].score == 2.0
    assert mres.results[1].regression_result.regressions[0].value == 2.0


def test_grpc_metadata_signature_def_map(stub) -> None:  # type: ignore[no-untyped-def]
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "half_plus_two"
    req.metadata_field.append("signature_def")
    res = stub.GetModelMetadata(req)
    sdm = get_model_metadata_pb2.SignatureDefMap()
    assert res.metadata["signature_def"].Unpack(sdm)
    # the SavedModel's whole map, TF2's initializer included, as TF Serving reports it
    assert set(sdm.signature_def) == {"serving_default", "classify", "regress", "__saved_model_init_op"}
    assert sdm.signature_def["serving_default"].outputs["y"].dtype == tf.float32.as_datatype_enum
    assert res.model_spec.version.value == 1


def test_grpc_model_status(model_stub) -> None:  # type: ignore[no-untyped-def]
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "two_versions"
    res = model_stub.GetModelStatus(req)
    assert [(s.version, s.state) for s in res.model_version_status] == [(2, 30), (1, 30)]
    req.model_spec.version.value = 7
    with pytest.raises(grpc.RpcError) as err:
        model_stub.GetModelStatus(req)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Could not find version 7 of model two_versions" in err.value.details()
