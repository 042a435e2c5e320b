"""Warmup requests that the server makes itself (`--warmup_config_file`): generated from each
version's signatures (zero or random, batch sizes, strings) or read from REST API bodies;
`model-server-warmup` writing the same requests into a file read back with tf.data; a real server
reporting per version what it replayed; and a model whose first call compiles (XLA), whose first
request after Ready is as fast as the later ones only with generated warmup."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from modelserver.config.model_config import ConfigError
from modelserver.core.servable import Signature, TensorSpec
from modelserver.warmup.sources import WarmupPlan, generate, input_shape, parse_plan
from server_support import free_port, model_server, wait_for


def _sig(**inputs: tuple[Any, tuple[int | None, ...] | None]) -> Signature:
    specs = {k: TensorSpec(k, np.dtype(dt), 0, np.dtype(dt).name, shape) for k, (dt, shape) in inputs.items()}
    return Signature("s", "tensorflow/serving/predict", specs, {}, lambda x: x)


@pytest.mark.parametrize(("doc", "words"), [
    ({"source": "nope"}, "source must be one of"),
    ({"source": "generated", "batchSizes": []}, "batchSizes"),
    ({"source": "generated", "batchSizes": [0]}, "batchSizes"),
    ({"source": "generated", "count": 1001}, "count"),
    ({"source": "generated", "data": "ones"}, "data must be one of"),
    ({"source": "generated", "signatures": [""]}, "signatures"),
    ({"source": "requests"}, "requestsFile"),
    ({"source": "model", "extra": 1}, "unknown field"),
])
def test_bad_plans_are_rejected(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_plan(doc)


def test_generated_requests_have_the_signatures_dtypes_and_shapes() -> None:
    assert input_shape((None, 3, None), 8) == (8, 3, 1) and input_shape(None, 4) == (4,) and input_shape((), 4) == ()
    sigs = {"a": _sig(x=(np.float32, (None, 2)), n=(np.int64, (None,)), s=(object, (None,)), flag=(np.bool_, ())),
            "b": _sig(y=(np.float32, None))}
    plan = parse_plan({"source": "generated", "batchSizes": [1, 8], "count": 2, "data": "random", "seed": 3})
    gen = generate(plan, sigs)
    assert not gen.strict and [s for s, _ in gen.requests] == ["a"] * 4 + ["b"] * 4
    first = gen.requests[2][1]  # signature a, batch 8
    assert first["x"].shape == (8, 2) and first["x"].dtype == np.float32 and first["x"].any()
    assert first["n"].dtype == np.int64 and first["n"].shape == (8,)
    assert first["s"].tolist() == [b""] * 8 and first["flag"].shape == ()
    zero = generate(WarmupPlan("generated", ("b",), (3,), 1, "zero"), sigs)
    assert zero.strict and zero.requests[0][1]["y"].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="not in the model: c"):
        generate(WarmupPlan("generated", ("c",)), sigs)


def test_model_server_warmup_writes_generated_and_rest_requests(models_dir: Path, tmp_path: Path) -> None:
    import shutil

    import tensorflow as tf
    from modelserver.core.tensors import to_ndarray
    from modelserver.warmup import write
    from tensorflow_serving.apis import prediction_log_pb2

    def read(path: Path) -> list[Any]:
        out = []
        for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(rec)
            out.append(log.predict_log.request)
        return out

    vdir = tmp_path / "bytes" / "1"
    shutil.copytree(models_dir / "bytes_model" / "1", vdir)
    out = tmp_path / "w1"
    assert write.main([str(vdir), "--data", "zero", "--batch_sizes", "1,3",
                       "--count", "2", "--out", str(out)]) == 0
    reqs = read(out)
    assert [(r.model_spec.signature_name, to_ndarray("data", r.inputs["data"]).tolist()) for r in reqs] == [
        ("serving_default", [b""]), ("serving_default", [b""]), ("serving_default", [b"", b"", b""]),
        ("serving_default", [b"", b"", b""])]
    hdir = tmp_path / "h" / "1"
    shutil.copytree(models_dir / "half_plus_two" / "1", hdir)
    body = tmp_path / "bodies.json"
    body.write_text(json.dumps([{"instances": [1.0, 2.0]}, {"signature_name": "serving_default", "inputs": [3.0]}]))
    assert write.main([str(hdir), "--sample", str(body), "--out", str(tmp_path / "w2")]) == 0
    assert [to_ndarray("x", r.inputs["x"]).tolist() for r in read(tmp_path / "w2")] == [[1.0, 2.0], [3.0]]
    assert write.main([str(hdir), "--data", "random", "--batch_sizes", "4", "--out", str(tmp_path / "w3")]) == 0
    (req,) = read(tmp_path / "w3")
    x = to_ndarray("x", req.inputs["x"])
    assert x.shape == (4,) and x.dtype == np.float32


# ---- in a real server ----------------------------------------------------------------------------


def _admin(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "token").write_text("t")
    port = free_port()
    return [f"--admin_port={port}", f"--admin_token_file={tmp_path / 'token'}"], f"http://127.0.0.1:{port}/v1/admin/models"


def _versions(url: str, model: str) -> dict[str, Any]:
    return requests.get(url, headers={"Authorization": "Bearer t"}, timeout=30).json()["models"][model]["versions"]


def test_server_generates_warmup_and_reports_it_per_version(models_dir: Path, tmp_path: Path) -> None:
    plan = tmp_path / "warmup.json"
    plan.write_text(json.dumps({"source": "generated", "batchSizes": [1, 4], "data": "zero"}))
    admin, url = _admin(tmp_path)
    args = ["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
            f"--warmup_config_file={plan}", "--num_request_iterations_for_warmup=2", *admin]
    with model_server(args, tmp_path / "server.log"):
        report = _versions(url, "half_plus_two")["1"]
    assert report["state"] == "AVAILABLE"
    w = report["warmup"]
    # classify and regress parse tf.Examples with a required feature: empty examples are refused,
    # so those two signatures are skipped (nobody named them); serving_default is warmed
    assert (w["source"], w["records"], w["requests"]) == ("generated", 2, 4)
    assert set(w["skipped"]) == {"classify", "regress"} and w["seconds"] > 0


def test_named_signatures_must_warm_or_the_version_fails(models_dir: Path, tmp_path: Path) -> None:
    plan = tmp_path / "warmup.json"
    plan.write_text(json.dumps({"source": "generated", "signatures": ["serving_default", "classify"]}))
    args = ["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
            f"--warmup_config_file={plan}", "--max_num_load_retries=0"]
    with model_server(args, tmp_path / "server.log", wait_ready=False) as srv:
        srv.wait_until(lambda: (srv.model_state("half_plus_two") or [{}])[0].get("state") == "END", "the failed load")
        status = srv.model_state("half_plus_two")[0]["status"]
        assert "Warmup request 1 (generated, signature classify, inputs inputs[1]) failed" in status["error_message"]
        assert not srv.ready()


def test_server_replays_rest_bodies_from_a_requests_file(models_dir: Path, tmp_path: Path) -> None:
    bodies = tmp_path / "requests.json"
    bodies.write_text(json.dumps([{"instances": [1.0]}, {"signature_name": "regress", "inputs": [b"".hex()]}]))
    plan = tmp_path / "warmup.json"
    plan.write_text(json.dumps({"source": "requests", "requestsFile": str(bodies)}))
    args = ["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
            f"--warmup_config_file={plan}", "--max_num_load_retries=0"]
    with model_server(args, tmp_path / "server.log", wait_ready=False) as srv:  # the 2nd body is bad data
        srv.wait_until(lambda: (srv.model_state("half_plus_two") or [{}])[0].get("state") == "END", "the failed load")
        assert "Warmup request 1 (requests, signature regress" in srv.model_state("half_plus_two")[0]["status"]["error_message"]
    bodies.write_text(json.dumps([{"instances": [1.0]}, {"inputs": {"x": [2.0, 3.0]}}]))
    admin, url = _admin(tmp_path)
    with model_server([*args, *admin], tmp_path / "server2.log"):
        w = _versions(url, "half_plus_two")["1"]["warmup"]
    assert (w["source"], w["records"], w["requests"], w["skipped"]) == ("requests", 2, 2, {})


def build_jit_model(export_dir: Path) -> Path:
    """serving_default compiled with XLA (jit_compile=True): its first call per input shape
    compiles, about a second on the test machines, against a millisecond warm."""
    import tensorflow as tf

    class Jit(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([64, 64], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")], jit_compile=True)
        def f(self, x):  # type: ignore[no-untyped-def]
            y = x
            for _ in range(30):
                y = tf.tanh(tf.matmul(y, self.w) + 0.1 * tf.sin(y))
            return {"y": y}

    m = Jit()
    tf.saved_model.save(m, str(export_dir), signatures={"serving_default": m.f})
    return export_dir


def _first_and_steady_compute_ms(args: list[str], trace: Path, log: Path) -> tuple[float, float]:
    """The first request's compute time after Ready and the p50 of the next 30 (the server's own
    request traces: no network or client noise)."""
    with model_server([*args, f"--trace_file={trace}", "--trace_sample_rate=1"], log) as srv:
        with requests.Session() as s:
            for _ in range(31):
                r = s.post(f"{srv.url}/v1/models/jit:predict", json={"instances": [[0.5] * 64]}, timeout=60)
                assert r.status_code == 200
        wait_for(lambda: trace.exists() and len(trace.read_text().splitlines()) >= 31, what="31 traces")
    recs = [json.loads(line) for line in trace.read_text().splitlines()][:31]
    ms = [(r["compute_end"] - r["compute_start"]) * 1000 for r in recs]
    return ms[0], statistics.median(ms[1:])


def test_generated_warmup_makes_the_first_request_as_fast_as_the_rest(tmp_path: Path) -> None:
    base = tmp_path / "jit"
    build_jit_model(base / "1")
    plan = tmp_path / "warmup.json"
    plan.write_text(json.dumps({"source": "generated", "batchSizes": [1], "count": 3}))
    args = ["--model_name=jit", f"--model_base_path={base}", "--file_system_poll_wait_seconds=0"]
    cold_first, cold_p50 = _first_and_steady_compute_ms(args, tmp_path / "cold.jsonl", tmp_path / "cold.log")
    warm_first, warm_p50 = _first_and_steady_compute_ms([*args, f"--warmup_config_file={plan}"],
                                                        tmp_path / "warm.jsonl", tmp_path / "warm.log")
    # 2x the steady p50, plus 5 ms of slack for a single sample on a busy 2-core machine; the cold
    # first request (an XLA compile, about a second) is far beyond that, so the test can fail
    assert warm_first <= 2 * warm_p50 + 5, (warm_first, warm_p50)
    assert cold_first > 2 * cold_p50 + 5, (cold_first, cold_p50)
