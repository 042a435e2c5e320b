"""Metrics end to end: a real Debian `prometheus` scrapes a running model-server (with batching,
two versions behind labels, gRPC and REST traffic, errors) on loopback, and its HTTP API returns
TF Serving's series and the base-unit series that canary analysis and autoscaling query. Latency
quantiles are checked for their units: against the client's own timing of every request and
against each other (TF Serving's microseconds, our seconds)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import requests
from server_support import model_server, predict_request
from support import by_labels as by
from support import scrape_job

METRICS_PATH = "/monitoring/prometheus/metrics"
INFERENCE = 'api=~"predict|classify|regress|multi_inference"'
# histogram_quantile answers within the bucket of the true quantile: TF Serving's buckets grow by
# 1.8x, ours (SECONDS_BUCKETS) by at most 2.5x
TF_BUCKET_RATIO, SECONDS_BUCKET_RATIO = 1.8, 2.5


@pytest.fixture(scope="module")
def traffic_server(demo_models, tmp_path_factory):
    """The server after its traffic, and the slowest request as its client timed it (seconds)."""
    d = tmp_path_factory.mktemp("metrics_server")
    (d / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    (d / "batching.config").write_text("max_batch_size { value: 16 } batch_timeout_micros { value: 1000 }\n")
    args = [f"--model_config_file={demo_models / 'models.config'}", "--enable_batching",
            f"--batching_parameters_file={d / 'batching.config'}", f"--monitoring_config_file={d / 'monitoring.config'}",
            "--file_system_poll_wait_seconds=0"]
    slowest = [0.0]

    def timed(call, *args, **kwargs):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            slowest[0] = max(slowest[0], time.perf_counter() - t0)

    with model_server(args, d / "server.log") as server:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(server.target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            x = {"x": np.array([1.0, 2.0], np.float32)}
            for _ in range(5):
                timed(stub.Predict, predict_request("two_versions", x, label="stable"), timeout=30)
            for _ in range(3):
                timed(stub.Predict, predict_request("two_versions", x, label="canary"), timeout=30)
            with pytest.raises(grpc.RpcError):
                timed(stub.Predict, predict_request("two_versions", {"nope": np.array([1.0], np.float32)},
                                                    label="canary"), timeout=30)
        for _ in range(4):
            assert timed(requests.post, f"{server.url}/v1/models/half_plus_two:predict",
                         json={"instances": [1.0]}, timeout=30).status_code == 200
        assert timed(requests.post, f"{server.url}/v1/models/no_such_model:predict",
                     json={"instances": [1.0]}, timeout=30).status_code == 404
        yield server, slowest[0]


@pytest.fixture(scope="module")
def prometheus(traffic_server, start_prometheus):
    server, _ = traffic_server
    return start_prometheus([scrape_job("model-server", f"127.0.0.1:{server.rest_port}", METRICS_PATH)])


def test_scrape_target_is_up(prometheus):
    assert by(prometheus.wait_query('up{job="model-server"} == 1'), job="model-server") == 1


def test_tf_serving_series(prometheus, traffic_server):
    _, slowest_s = traffic_server
    counts = prometheus.wait_query(":tensorflow:serving:request_count")
    assert by(counts, model_name="two_versions", status="OK") == 8
    assert by(counts, model_name="two_versions", status="INVALID_ARGUMENT") == 1
    assert by(counts, model_name="half_plus_two", status="OK") == 4
    lat = prometheus.wait_query("sum by (model_name, API, entrypoint) (:tensorflow:serving:request_latency_count)")
    assert by(lat, model_name="two_versions", API="Predict", entrypoint="GRPC") == 9
    assert by(lat, model_name="half_plus_two", API="Predict", entrypoint="REST") == 4
    buckets = prometheus.wait_query('count(:tensorflow:serving:request_latency_bucket{model_name="half_plus_two"})')
    assert float(buckets[0]["value"][1]) == 34  # 33 bounds (10*1.8^i µs) + +Inf
    # microseconds: no request took longer on the server than its client waited, and the same
    # requests in our seconds histogram give the same p99 (within the two bucket layouts)
    p99_us = float(prometheus.wait_query(
        "histogram_quantile(0.99, sum by (le) (:tensorflow:serving:request_latency_bucket))")[0]["value"][1])
    p99_s = float(prometheus.wait_query(
        f"histogram_quantile(0.99, sum by (le) (modelserver_request_duration_seconds_bucket{{{INFERENCE}}}))"
    )[0]["value"][1])
    assert 0 < p99_us <= slowest_s * 1e6 * TF_BUCKET_RATIO, (p99_us, slowest_s)
    assert 1 / (TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO) <= p99_us / 1e6 / p99_s <= TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO
    assert prometheus.wait_query(':tensorflow:serving:runtime_latency_count{runtime="TF2"}')
    assert prometheus.wait_query(":tensorflow:serving:batching_session:queuing_latency_count")


def test_base_unit_series_per_version_and_label(prometheus, traffic_server):
    _, slowest_s = traffic_server
    total = prometheus.wait_query('sum by (version, label, code) (modelserver_requests_total{model="two_versions"})')
    assert by(total, version="1", label="stable", code="OK") == 5
    assert by(total, version="2", label="canary", code="OK") == 3
    assert by(total, version="2", label="canary", code="INVALID_ARGUMENT") == 1
    errors = prometheus.wait_query('sum by (label) (modelserver_request_errors_total{model="two_versions"})')
    assert by(errors, label="canary") == 1
    # the canary-analysis ratio and an autoscaling latency quantile, in seconds
    ratio = prometheus.wait_query('sum(modelserver_request_errors_total{model="two_versions",label="canary"})'
                              ' / sum(modelserver_requests_total{model="two_versions",label="canary"})')
    assert float(ratio[0]["value"][1]) == pytest.approx(0.25)
    # seconds: within the client's own timing, and the same p95 as TF Serving's microseconds
    p95 = float(prometheus.wait_query('histogram_quantile(0.95, sum by (le) '
                                      '(modelserver_request_duration_seconds_bucket{model="two_versions"}))')[0]["value"][1])
    p95_us = float(prometheus.wait_query('histogram_quantile(0.95, sum by (le) '
                                         '(:tensorflow:serving:request_latency_bucket{model_name="two_versions"}))'
                                         )[0]["value"][1])
    assert 0 < p95 <= slowest_s * SECONDS_BUCKET_RATIO, (p95, slowest_s)
    assert 1 / (TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO) <= p95_us / 1e6 / p95 <= TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO
    assert by(prometheus.wait_query("modelserver_queue_depth"), model="two_versions") == 0
    assert prometheus.wait_query("modelserver_in_flight_requests")  # the autoscaler's concurrency metric
    assert by(prometheus.wait_query("sum by (model) (modelserver_batch_size_count)"), model="two_versions") >= 1
    assert prometheus.wait_query("modelserver_queue_duration_seconds_count")
    unknown = prometheus.wait_query('modelserver_requests_total{code="NOT_FOUND"}')
    assert by(unknown, protocol="rest") == 1
