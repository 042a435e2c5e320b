"""Metrics end to end: a real Debian `prometheus` scrapes a running model-server (with batching,
two versions behind labels, gRPC and REST traffic, errors) on loopback, and its HTTP API returns
TF Serving's series and the base-unit series that canary analysis and autoscaling query."""

from __future__ import annotations

import shutil
import subprocess
import time

import grpc
import numpy as np
import pytest
import requests
from server_support import free_port, model_server, predict_request

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian prometheus not installed (make setup)")

METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def traffic_server(demo_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics_server")
    (d / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    (d / "batching.config").write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 1000 }\n")
    args = [f"--model_config_file={demo_models / 'models.config'}", "--enable_batching",
            f"--batching_parameters_file={d / 'batching.config'}", f"--monitoring_config_file={d / 'monitoring.config'}",
            "--file_system_poll_wait_seconds=0"]
    with model_server(args, d / "server.log") as server:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            x = {"x": np.array([1.0, 2.0], np.float32)}
            for _ in range(5):
                stub.Predict(predict_request("two_versions", x, label="stable"), timeout=30)
            for _ in range(3):
                stub.Predict(predict_request("two_versions", x, label="canary"), timeout=30)
            with pytest.raises(grpc.RpcError):
                stub.Predict(predict_request("two_versions", {"nope": np.array([1.0], np.float32)}, label="canary"),
                             timeout=30)
        for _ in range(4):
            assert requests.post(f"{server.url}/v1/models/half_plus_two:predict",
                                 json={"instances": [1.0]}, timeout=30).status_code == 200
        assert requests.post(f"{server.url}/v1/models/no_such_model:predict",
                             json={"instances": [1.0]}, timeout=30).status_code == 404
        yield server, d


@pytest.fixture(scope="module")
def prometheus(traffic_server):
    server, d = traffic_server
    port = free_port()
    (d / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: model-server\n"
        f"    metrics_path: {METRICS_PATH}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.rest_port}']}}]\n")
    log = open(d / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", d
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def query(prom: tuple[str, object], promql: str, timeout: float = 60) -> list[dict]:
    """Polls Prometheus until the query returns a non-empty vector (scrapes run every second)."""
    url, d = prom
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
            if r.status_code == 200 and r.json()["data"]["result"]:
                return r.json()["data"]["result"]
        except requests.RequestException:
            pass
        time.sleep(0.25)
    log = (d / "prometheus.log").read_text(errors="replace")[-2000:]  # type: ignore[operator]
    raise AssertionError(f"no result for {promql}\n{log}")


def by(result: list[dict], **labels) -> float:
    for r in result:
        if all(r["metric"].get(k) == v for k, v in labels.items()):
            return float(r["value"][1])
    raise AssertionError(f"no series with {labels} in {result}")


def test_scrape_target_is_up(prometheus):
    assert by(query(prometheus, 'up{job="model-server"} == 1'), job="model-server") == 1


def test_tf_serving_series(prometheus):
    counts = query(prometheus, ":tensorflow:serving:request_count")
    assert by(counts, model_name="two_versions", status="OK") == 8
    assert by(counts, model_name="two_versions", status="INVALID_ARGUMENT") == 1
    assert by(counts, model_name="half_plus_two", status="OK") == 4
    lat = query(prometheus, "sum by (model_name, API, entrypoint) (:tensorflow:serving:request_latency_count)")
    assert by(lat, model_name="two_versions", API="Predict", entrypoint="GRPC") == 9
    assert by(lat, model_name="half_plus_two", API="Predict", entrypoint="REST") == 4
    buckets = query(prometheus, 'count(:tensorflow:serving:request_latency_bucket{model_name="half_plus_two"})')
    assert float(buckets[0]["value"][1]) == 34  # 33 bounds (10*1.8^i µs) + +Inf
    p99 = query(prometheus, "histogram_quantile(0.99, sum by (le) (:tensorflow:serving:request_latency_bucket))")
    assert 0 < float(p99[0]["value"][1]) < 60e6  # microseconds
    assert query(prometheus, ':tensorflow:serving:runtime_latency_count{runtime="TF2"}')
    assert query(prometheus, ":tensorflow:serving:batching_session:queuing_latency_count")


def test_base_unit_series_per_version_and_label(prometheus):
    total = query(prometheus, 'sum by (version, label, code) (modelserver_requests_total{model="two_versions"})')
    assert by(total, version="1", label="stable", code="OK") == 5
    assert by(total, version="2", label="canary", code="OK") == 3
    assert by(total, version="2", label="canary", code="INVALID_ARGUMENT") == 1
    errors = query(prometheus, 'sum by (label) (modelserver_request_errors_total{model="two_versions"})')
    assert by(errors, label="canary") == 1
    # the canary-analysis ratio and an autoscaling latency quantile, in seconds
    ratio = query(prometheus, 'sum(modelserver_request_errors_total{model="two_versions",label="canary"})'
                              ' / sum(modelserver_requests_total{model="two_versions",label="canary"})')
    assert float(ratio[0]["value"][1]) == pytest.approx(0.25)
    p95 = query(prometheus, 'histogram_quantile(0.95, sum by (le) '
                            '(modelserver_request_duration_seconds_bucket{model="two_versions"}))')
    assert 0 < float(p95[0]["value"][1]) < 60
    assert by(query(prometheus, "modelserver_queue_depth"), model="two_versions") == 0
    assert query(prometheus, "modelserver_in_flight_requests")  # the autoscaler's concurrency metric
    assert by(query(prometheus, "sum by (model) (modelserver_batch_size_count)"), model="two_versions") >= 1
    assert query(prometheus, "modelserver_queue_duration_seconds_count")
    unknown = query(prometheus, 'modelserver_requests_total{code="NOT_FOUND"}')
    assert by(unknown, protocol="rest") == 1
