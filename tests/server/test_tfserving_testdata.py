"""model-server on TF Serving's own test artifacts (../shared/tfserving-testdata: SavedModels in
zero-padded version directories, config files and the metadata JSON TF Serving answers), over
REST and gRPC with TF Serving's client stubs. Each model is copied into a temporary directory
before a server reads it; the README there lists what TF Serving answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from server_support import REPO, predict_request, run_server_expecting_exit
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
)

TESTDATA = REPO.parent / "shared" / "tfserving-testdata"
pytestmark = pytest.mark.skipif(not TESTDATA.is_dir(), reason="../shared/tfserving-testdata is not here")


def copy_model(name: str, dest: Path) -> Path:
    """A writable copy of a testdata model (its base path)."""
    out = dest / name
    shutil.copytree(TESTDATA / name, out)
    for p in [out, *out.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tfs")
    for name in ("saved_model_half_plus_two_cpu", "saved_model_half_plus_three", "saved_model_half_plus_two_tf2_cpu",
                 "saved_model_half_plus_two_2_versions", "saved_model_counter"):
        copy_model(name, root)
    return root


@pytest.fixture(scope="module")
def good_config(models: Path) -> Path:
    """TF Serving's good_model_config.txt with its placeholders filled in, plus the other models."""
    text = (TESTDATA / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}", str(models / "saved_model_half_plus_two_cpu"))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}", str(models / "saved_model_half_plus_three"))
    extra = "".join(f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "tensorflow"'
                    + (" model_version_policy { all {} }" if n.endswith("2_versions") else "") + " }\n"
                    for n in ("saved_model_half_plus_two_tf2_cpu", "saved_model_half_plus_two_2_versions",
                              "saved_model_counter"))
    text = text.rstrip().removesuffix("}") + extra + "}\n"
    path = models / "models.config"
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=["1", "2"], ids=["one-process", "frontend-workers"])
def server(start_server, good_config: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Every testdata model, with TF Serving's own batching and monitoring config files; as one
    process, and with front-end workers (every answer then crosses to the model process)."""
    return start_server([f"--model_config_file={good_config}", "--file_system_poll_wait_seconds=0",
                         "--enable_batching", f"--batching_parameters_file={TESTDATA / 'batching_config.txt'}",
                         f"--monitoring_config_file={TESTDATA / 'monitoring_config.txt'}",
                         f"--frontend_workers={request.param}"])


@pytest.fixture(scope="module")
def stub(server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.target) as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


def post(server, path: str, body: object) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.post(server.url + path, json=body, timeout=30)


# ---- 1. zero-padded version directories --------------------------------------------------------


def test_every_model_loads_from_its_zero_padded_directory(server) -> None:  # type: ignore[no-untyped-def]
    for name in ("half_plus_two", "half_plus_three", "saved_model_half_plus_two_tf2_cpu", "saved_model_counter"):
        assert server.model_state(name) == [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}], name
    states = server.model_state("saved_model_half_plus_two_2_versions")
    assert [(s["version"], s["state"]) for s in states] == [("124", "AVAILABLE"), ("123", "AVAILABLE")]
    assert post(server, "/v1/models/half_plus_two/versions/123:predict", {"instances": [[1.0]]}).json() == \
        {"predictions": [[2.5]]}


def test_two_directories_naming_one_version(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`0123` and `123` both name version 123: the canonical name wins, whatever the listing
    order, and the clash is logged. Here `123` holds half_plus_three, so its answer shows which."""
    base = tmp_path / "m"
    base.mkdir()
    shutil.copytree(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123", base / "0123")
    shutil.copytree(TESTDATA / "saved_model_half_plus_three" / "00000123", base / "123")
    srv = start_server(["--model_name=m", f"--model_base_path={base}"])
    assert post(srv, "/v1/models/m:predict", {"instances": [[1.0]]}).json() == {"predictions": [[3.5]]}
    assert "directories 123, 0123 under" in srv.output() and "all name version 123; serving 123" in srv.output()


# ---- 2. TF1 graph models load into a session --------------------------------------------------


def test_half_plus_three_which_tf_saved_model_load_cannot_load(server, stub) -> None:  # type: ignore[no-untyped-def]
    assert post(server, "/v1/models/half_plus_three:predict", {"instances": [[1.0], [5.0]]}).json() == \
        {"predictions": [[3.5], [5.5]]}
    out = stub.Predict(predict_request("half_plus_three", {"x": np.array([[4.0]], np.float32)}), timeout=30)
    assert tf.make_ndarray(out.outputs["y"]).tolist() == [[5.0]]
    meta = requests.get(f"{server.url}/v1/models/half_plus_three/metadata", timeout=30).json()
    assert set(meta["metadata"]["signature_def"]["signature_def"]) == {"serving_default", "tensorflow/serving/regress"}


def test_tf1_classify_regress_and_multi_inference_over_grpc(stub) -> None:  # type: ignore[no-untyped-def]
    def with_x(value: float) -> example_pb2.Example:
        ex = example_pb2.Example()
        ex.features.feature["x"].float_list.value.append(value)
        return ex

    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name, creq.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
    creq.input.example_list.examples.append(with_x(2.0))
    res = stub.Classify(creq, timeout=30)
    assert [(c.label, c.score) for c in res.result.classifications[0].classes] == [("", 3.0)]
    assert res.model_spec.version.value == 123
    mreq = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify_x_to_y", "classify"), ("regress_x_to_y", "regress"), ("regress_x_to_y2", "regress")):
        t = mreq.tasks.add()
        t.model_spec.name, t.model_spec.signature_name, t.method_name = "half_plus_two", sig, f"tensorflow/serving/{method}"
    mreq.input.example_list.examples.append(with_x(2.0))
    results = stub.MultiInference(mreq, timeout=30).results
    assert results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert results[1].regression_result.regressions[0].value == 3.0
    assert results[2].regression_result.regressions[0].value == 4.0  # y2 = 0.5x + 3


def test_tf2_model_and_both_versions(server) -> None:  # type: ignore[no-untyped-def]
    assert post(server, "/v1/models/saved_model_half_plus_two_tf2_cpu:predict", {"instances": [1.0, 2.0]}).json() \
        == {"predictions": [2.5, 3.0]}
    r = post(server, "/v1/models/saved_model_half_plus_two_tf2_cpu:regress",
             {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert r.json() == {"results": [3.0]}
    for v in (123, 124):
        assert post(server, f"/v1/models/saved_model_half_plus_two_2_versions/versions/{v}:predict",
                    {"instances": [[2.0]]}).json() == {"predictions": [[3.0]]}


def test_counter_model_keeps_its_state_across_requests(stub) -> None:  # type: ignore[no-untyped-def]
    def call(sig: str, **inputs: float) -> float:
        out = stub.Predict(predict_request("saved_model_counter", inputs, signature=sig), timeout=30)
        return float(tf.make_ndarray(out.outputs["output"]))

    assert call("reset_counter") == 0.0
    assert [call("incr_counter"), call("incr_counter")] == [1.0, 2.0]
    assert call("incr_counter_by", delta=np.float32(3.0)) == 5.0
    assert call("get_counter") == 5.0


# ---- 3. inputs are fed as sent -------------------------------------------------------------------


def test_inputs_fed_as_sent_over_rest_and_grpc(server, stub) -> None:  # type: ignore[no-untyped-def]
    # x is declared [-1,1]; TF Serving feeds a [3] tensor as it is
    assert post(server, "/v1/models/half_plus_two:predict", {"instances": [2.0, 3.0, 4.0]}).json() == \
        {"predictions": [3.0, 3.5, 4.0]}
    assert post(server, "/v1/models/half_plus_two:predict", {"inputs": [2.0, 3.0, 4.0]}).json() == \
        {"outputs": [3.0, 3.5, 4.0]}
    out = stub.Predict(predict_request("half_plus_two", {"x": np.array([2.0], np.float32)}), timeout=30)
    assert tf.make_ndarray(out.outputs["y"]).tolist() == [3.0]
    assert out.model_spec.version.value == 123


def test_tensorflow_decides_what_cannot_run(server, stub) -> None:  # type: ignore[no-untyped-def]
    """A tensor TensorFlow itself rejects is INVALID_ARGUMENT with TensorFlow's message; the
    checks TF Serving makes before (names, dtypes) stay."""
    r = post(server, "/v1/models/half_plus_two:predict",
             {"signature_name": "classify_x_to_y", "instances": [["a", "b"]]})
    assert r.status_code == 400 and "Expected serialized to be a" in r.json()["error"]  # ParseExample's words
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(predict_request("half_plus_two", {"x": np.array([1], np.int32)}), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "to be float" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(predict_request("half_plus_two", {"x2": np.array([1.0], np.float32)}), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alias not found" in err.value.details()
    assert server.ready()


# ---- 4. classify and regress over REST -----------------------------------------------------------


def test_rest_classify_and_regress_answer_results(server) -> None:  # type: ignore[no-untyped-def]
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert post(server, "/v1/models/half_plus_two:classify", body).json() == {"results": [[["", 3.0]]]}
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post(server, "/v1/models/half_plus_two:regress", body).json() == {"results": [3.0]}


# ---- 5. metadata JSON as TF Serving prints it ----------------------------------------------------


def test_metadata_json_equals_tf_servings(start_server, models: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(["--model_name=default", f"--model_base_path={models / 'saved_model_half_plus_two_cpu'}"])
    got = requests.get(f"{srv.url}/v1/models/default/metadata", timeout=30).json()
    assert got == json.loads((TESTDATA / "half_plus_two_model_metadata.json").read_text())


def test_metadata_json_of_the_two_versions_model(server) -> None:  # type: ignore[no-untyped-def]
    got = requests.get(f"{server.url}/v1/models/saved_model_half_plus_two_2_versions/versions/123/metadata",
                       timeout=30).json()
    assert got == json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())


# ---- 6. a bad model config file ------------------------------------------------------------------


def test_bad_model_config_file_exits_with_tf_servings_message() -> None:
    r = run_server_expecting_exit([f"--model_config_file={TESTDATA / 'bad_model_config.txt'}"])
    assert r.returncode != 0
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:" in r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "Error parsing text-format" in ln)
    assert "improperly" in line  # the parser's detail follows
    assert "Traceback" not in r.stderr


# ---- 7. the profiler on the gRPC port ------------------------------------------------------------


def _capture_while_loaded(server, target: str, logdir: Path, ms: int = 1000) -> None:  # type: ignore[no-untyped-def]
    import threading

    from tensorflow.python.profiler import profiler_client

    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            post(server, "/v1/models/half_plus_two:predict", {"instances": [[1.0]]})

    loader = threading.Thread(target=load)
    loader.start()
    try:
        profiler_client.trace(f"grpc://{target}", str(logdir), duration_ms=ms)
    finally:
        stop.set()
        loader.join(30)


def test_profiler_capture_on_the_grpc_port(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """TensorBoard's Capture Profile, pointed at the model server's gRPC address as with TF
    Serving, collects a trace of the requests that flowed meanwhile."""
    logdir = tmp_path / "profile"
    _capture_while_loaded(server, server.target, logdir)
    captured = list(logdir.glob("plugins/profile/*/*.xplane.pb"))
    assert len(captured) == 1 and captured[0].stat().st_size > 0
    from modelserver.observability.profiler import ProfilerService, has_events

    counts = ProfilerService().msgs["EventCountSpace"]  # XSpace's planes, lines and events (strings may be bytes)
    assert has_events(counts.FromString(captured[0].read_bytes()))
    # a second capture works too (the first released the process's profiler session)
    _capture_while_loaded(server, server.target, tmp_path / "again", ms=300)
    assert list((tmp_path / "again").glob("plugins/profile/*/*.xplane.pb"))


def test_profiler_off_with_enable_profiler_false(start_server, models: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(["--model_name=m", f"--model_base_path={models / 'saved_model_half_plus_two_cpu'}",
                        "--enable_profiler=false"])
    with pytest.raises((RuntimeError, tf.errors.OpError)):  # the client finds no profiler service
        tf.profiler.experimental.client.trace(f"grpc://{srv.target}", str(tmp_path / "p"), duration_ms=200)
    assert not list(tmp_path.glob("p/plugins/profile/*/*.xplane.pb"))
