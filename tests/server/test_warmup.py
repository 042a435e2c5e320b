"""Warmup replay on a real SavedModel, in process: every log type, iterations, the 1000-record
limit, a missing file, failing and unsupported records, a corrupt file, and the file writer
(`model-server-warmup`, modelserver.warmup.write). The server-level gate (not ready until warmed up; a fast first
request) is in test_warmup_server.py."""

from __future__ import annotations

import json

import demomodels as demo
import grpc
import numpy as np
import pytest
from modelserver.core.errors import ServingError
from modelserver.warmup import records, replay, write


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup_models")
    path = demo.build_half_plus_two(root / "half_plus_two" / "1")
    from modelserver.core.servable import load_servable

    return path, load_servable("half_plus_two", 1, path)


def _example(x: float) -> bytes:
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(x)
    return ex


def all_kinds_of_logs() -> list:
    from tensorflow_serving.apis import prediction_log_pb2

    logs = [records.predict_log({"x": np.array([1.0, 2.0], np.float32)}, "half_plus_two")]
    c = prediction_log_pb2.PredictionLog()
    c.classify_log.request.model_spec.signature_name = "classify"
    c.classify_log.request.input.example_list.examples.append(_example(3.0))
    r = prediction_log_pb2.PredictionLog()
    r.regress_log.request.model_spec.signature_name = "regress"
    r.regress_log.request.input.example_list.examples.append(_example(4.0))
    m = prediction_log_pb2.PredictionLog()
    task = m.multi_inference_log.request.tasks.add()
    task.model_spec.name = "half_plus_two"
    task.model_spec.signature_name = "regress"
    task.method_name = "tensorflow/serving/regress"
    m.multi_inference_log.request.input.example_list.examples.append(_example(5.0))
    return logs + [c, r, m]


def counting_replayers(calls: list[str]) -> dict:
    real = replay.default_replayers()

    def wrap(kind, fn):
        def call(servable, request):
            calls.append(kind)
            return fn(servable, request)

        return call

    return {k: wrap(k, fn) for k, fn in real.items()}


def test_replays_every_log_type_the_requested_number_of_times(half_plus_two, tmp_path):
    path, servable = half_plus_two
    vdir = tmp_path / "v"
    records.write_records(records.warmup_file(vdir), all_kinds_of_logs())
    calls: list[str] = []
    result = replay.run_warmup(servable, vdir, iterations=3, replayers=counting_replayers(calls))
    assert (result.records, result.requests) == (4, 12)
    assert result.seconds > 0
    assert calls == ["predict_log"] * 3 + ["classify_log"] * 3 + ["regress_log"] * 3 + ["multi_inference_log"] * 3


def test_missing_file_is_fine(half_plus_two, tmp_path):
    _, servable = half_plus_two
    assert replay.run_warmup(servable, tmp_path).records == 0


def test_more_than_1000_records_is_invalid_argument(half_plus_two, tmp_path):
    _, servable = half_plus_two
    log = records.predict_log({"x": np.array([1.0], np.float32)})
    records.write_records(records.warmup_file(tmp_path), [log] * 1001)
    with pytest.raises(ServingError) as e:
        replay.run_warmup(servable, tmp_path)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the maximum (1000)" in e.value.message
    records.write_records(records.warmup_file(tmp_path), [log] * 1000)
    assert replay.run_warmup(servable, tmp_path).records == 1000


def test_failing_record_fails_with_a_status_naming_it(half_plus_two, tmp_path):
    _, servable = half_plus_two
    good = records.predict_log({"x": np.array([1.0], np.float32)})
    bad = records.predict_log({"nope": np.array([1.0], np.float32)})
    records.write_records(records.warmup_file(tmp_path), [good, bad])
    with pytest.raises(ServingError) as e:
        replay.run_warmup(servable, tmp_path)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Warmup request 1 (predict_log)" in e.value.message and "nope" in e.value.message


def test_unsupported_log_type(half_plus_two, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    _, servable = half_plus_two
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.request.fetch.append("y")
    records.write_records(records.warmup_file(tmp_path), [log])
    with pytest.raises(ServingError) as e:
        replay.run_warmup(servable, tmp_path)
    assert e.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert "session_run_log" in e.value.message


def test_corrupt_file_is_data_loss(half_plus_two, tmp_path):
    _, servable = half_plus_two
    f = records.warmup_file(tmp_path)
    records.write_records(f, [records.predict_log({"x": np.array([1.0], np.float32)})])
    data = bytearray(f.read_bytes())
    data[-6] ^= 0xFF  # break the payload CRC
    f.write_bytes(bytes(data))
    with pytest.raises(ServingError) as e:
        replay.run_warmup(servable, tmp_path)
    assert e.value.code == grpc.StatusCode.DATA_LOSS


def test_writer_command_from_json_sample_and_from_the_signature(half_plus_two, tmp_path, capsys):
    import shutil

    path, servable = half_plus_two
    vdir = tmp_path / "1"
    shutil.copytree(path, vdir)
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"instances": [1.0, 2.0, 5.0]}))
    assert write.main([str(vdir), "--sample", str(sample)]) == 0
    logs = records.parse_logs(records.read_records(records.warmup_file(vdir)), vdir)
    assert len(logs) == 1
    from modelserver.core.tensors import to_ndarray

    np.testing.assert_array_equal(to_ndarray("x", logs[0].predict_log.request.inputs["x"]), [1.0, 2.0, 5.0])
    assert write.main([str(vdir), "--batch_sizes", "1,4"]) == 0
    logs = records.parse_logs(records.read_records(records.warmup_file(vdir)), vdir)
    assert [len(to_ndarray("x", lg.predict_log.request.inputs["x"])) for lg in logs] == [1, 4]
    assert replay.run_warmup(servable, vdir).requests == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": {"nope": [1.0]}}))
    assert write.main([str(vdir), "--sample", str(bad)]) == 1
    assert "unknown input 'nope'" in capsys.readouterr().err
    # the installed console script, `model-server-warmup` (the command the docs show)
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "model-server-warmup"
    done = subprocess.run([str(script), str(vdir), "--batch_sizes", "2", "--out", str(tmp_path / "w.tfrecord")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = records.parse_logs(records.read_records(tmp_path / "w.tfrecord"), vdir)
    assert [len(to_ndarray("x", lg.predict_log.request.inputs["x"])) for lg in logs] == [2]
