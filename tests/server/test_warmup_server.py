"""Warmup in a real model-server, on a model whose first call is slow (a lazy initialisation of
about a second inside the graph): with a warmup file the version turns AVAILABLE, and the server
ready, only after the replay ran, so the first request is fast; the same model without a file
pays the initialisation on its first request. The model counts its initialisations and calls,
so the gate is shown by counts, and the speed-up by a generous timing factor. A failing warmup
fails the load with a clear status while the server goes on serving."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from server_support import model_server

INIT_ROUNDS = 400  # 512x512 matmuls: about half a second or more on the 2-core test machines


def build_lazy_model(export_dir: Path) -> Path:
    """serving_default: y = 2x (float32 [None]); its first call runs a slow initialisation
    (counted in `inits`); every call is counted in `calls`; signature `stats` returns both."""
    import tensorflow as tf

    class Lazy(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.initialized = tf.Variable(False)
            self.inits = tf.Variable(0, dtype=tf.int64)
            self.calls = tf.Variable(0, dtype=tf.int64)
            self.w = tf.Variable(tf.zeros([512, 512]))

        def _init(self):  # type: ignore[no-untyped-def]
            m0 = tf.random.stateless_normal([512, 512], seed=[1, 2]) / 23.0
            _, m = tf.while_loop(lambda i, m: i < INIT_ROUNDS,
                                 lambda i, m: (i + 1, tf.nn.l2_normalize(tf.matmul(m, m), axis=1)),
                                 (tf.constant(0), m0))
            self.w.assign(m)
            self.inits.assign_add(1)
            self.initialized.assign(True)
            return tf.constant(0.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):  # type: ignore[no-untyped-def]
            tf.cond(self.initialized, lambda: tf.constant(0.0), self._init)
            self.calls.assign_add(1)
            return {"y": x * 2.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="unused")])
        def stats(self, unused):  # type: ignore[no-untyped-def]
            return {"inits": tf.reshape(self.inits.read_value(), [1]),
                    "calls": tf.reshape(self.calls.read_value(), [1])}

    m = Lazy()
    tf.saved_model.save(m, str(export_dir), signatures={"serving_default": m.predict, "stats": m.stats})
    return export_dir


@pytest.fixture(scope="module")
def lazy_models(tmp_path_factory) -> Path:
    import demomodels as demo
    from modelserver.warmup import records

    root = tmp_path_factory.mktemp("lazy_models")
    build_lazy_model(root / "warm" / "1")
    shutil.copytree(root / "warm", root / "cold")
    log = records.predict_log({"x": np.array([1.0, 2.0], np.float32)})
    records.write_records(records.warmup_file(root / "warm" / "1"), [log])
    shutil.copytree(root / "cold", root / "broken")
    cheap = records.predict_log({"unused": np.array([0.0], np.float32)}, signature_name="stats")
    bad = records.predict_log({"no_such_input": np.array([1.0], np.float32)})
    records.write_records(records.warmup_file(root / "broken" / "1"), [cheap, bad])
    (root / "models.config").write_text(demo.model_config_text([(n, str(root / n)) for n in ("warm", "cold")]))
    (root / "broken.config").write_text(demo.model_config_text([(n, str(root / n)) for n in ("cold", "broken")]))
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return root


def _stats(server, model: str) -> tuple[int, int]:
    r = requests.post(f"{server.url}/v1/models/{model}:predict",
                      json={"signature_name": "stats", "inputs": {"unused": [0.0]}}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    return int(out["inits"][0]), int(out["calls"][0])


def _timed_predict(server, model: str) -> float:
    t0 = time.perf_counter()
    r = requests.post(f"{server.url}/v1/models/{model}:predict", json={"instances": [1.0, 3.0]}, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and r.json() == {"predictions": [2.0, 6.0]}, r.text
    return elapsed


def test_ready_only_after_warmup_and_first_request_is_fast(lazy_models, tmp_path):
    args = [f"--model_config_file={lazy_models / 'models.config'}", "--num_request_iterations_for_warmup=3",
            f"--monitoring_config_file={lazy_models / 'monitoring.config'}", "--file_system_poll_wait_seconds=0"]
    with model_server(args, tmp_path / "server.log", wait_ready=False) as server:
        # while warming up, `warm` is not AVAILABLE and the server is not ready
        seen_loading = False
        server.wait_until(lambda: server.model_state("warm") or server.ready(), "a version status")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not server.ready():
            states = [v["state"] for v in server.model_state("warm")]
            seen_loading = seen_loading or states == ["LOADING"]
            time.sleep(0.02)
        assert server.ready()
        # at readiness the replay had run: one initialisation, 3 iterations of the record
        assert _stats(server, "warm") == (1, 3)
        assert _stats(server, "cold") == (0, 0)  # no file: nothing ran before readiness
        assert seen_loading, "the warming version should be seen LOADING before it is AVAILABLE"

        warm_first = _timed_predict(server, "warm")
        cold_first = _timed_predict(server, "cold")
        steady = sorted(_timed_predict(server, m) for m in ("warm", "cold") * 5)[5]
        assert _stats(server, "warm") == (1, 4 + 5)
        assert _stats(server, "cold") == (1, 1 + 5)  # cold paid its initialisation on request 1
        # generous factors: the cold first call carries a ~1 s initialisation
        print(f"first request: warm {warm_first * 1e3:.1f} ms, cold {cold_first * 1e3:.1f} ms; "
              f"steady {steady * 1e3:.1f} ms")
        assert cold_first > 5 * steady, (cold_first, steady)
        assert warm_first < cold_first / 3, (warm_first, cold_first)
        assert warm_first < 10 * steady + 0.1, (warm_first, steady)  # near steady state

        metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
        assert ':tensorflow:serving:model_warmup_latency_count{model_path="' in metrics
        assert f'{lazy_models / "warm" / "1"}' in metrics
        assert 'modelserver_model_warmup_duration_seconds_count{model="warm",version="1"} 1.0' in metrics


def test_failing_warmup_fails_the_load_with_a_clear_status(lazy_models, tmp_path):
    args = [f"--model_config_file={lazy_models / 'broken.config'}", "--max_num_load_retries=0",
            "--file_system_poll_wait_seconds=0"]
    with model_server(args, tmp_path / "server.log", wait_ready=False) as server:
        status = server.wait_until(
            lambda: [v for v in server.model_state("broken") if v["state"] == "END"], "the broken load to end")
        assert status[0]["status"]["error_code"] == "INVALID_ARGUMENT"
        msg = status[0]["status"]["error_message"]
        assert "Warmup request 1 (predict_log)" in msg and "no_such_input" in msg
        server.wait_until(lambda: [v for v in server.model_state("cold") if v["state"] == "AVAILABLE"], "cold")
        assert not server.ready()  # a configured model has no available version
        # the rest of the server serves (the request's own timeout bounds its time: assert the answer)
        r = requests.post(f"{server.url}/v1/models/cold:predict", json={"instances": [1.0, 3.0]}, timeout=60)
        assert r.status_code == 200 and r.json() == {"predictions": [2.0, 6.0]}, r.text
        r = requests.post(f"{server.url}/v1/models/broken:predict", json={"instances": [1.0]}, timeout=10)
        assert r.status_code == 404


def test_warmup_disabled_skips_the_replay(lazy_models, tmp_path):
    args = [f"--model_config_file={lazy_models / 'models.config'}", "--enable_model_warmup=false",
            "--file_system_poll_wait_seconds=0"]
    with model_server(args, tmp_path / "server.log") as server:
        assert _stats(server, "warm") == (0, 0)
