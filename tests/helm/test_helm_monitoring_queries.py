"""The monitoring assets query what model-server really exports, checked with a real Prometheus.

A real model-server serves two versions of a model (labels stable/canary) with batching on, under
a steady synthetic load from this test (gRPC and REST, some errors); Debian's `prometheus` scrapes it
every second with the labels the chart's PodMonitor adds (namespace, pod,
serving_modeldeploy_io_model_deployment) and evaluates the chart's recording rules. Then every
Grafana dashboard query, every dashboard variable, the recording rules and every prometheus-adapter
rule must return data, with the values the load implies: the traffic share and error ratio it sends,
latencies in the right units (within the client's own timing, and equal to TF Serving's microsecond
histogram of the same requests), and the requests it holds in flight.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import yaml
from chart_support import CHART, FULL_VALUES, by_kind, objects, one
from server_support import ServerProcess, predict_request
from support import Prometheus, scrape_job, wait_for

NAMESPACE, POD, MD = "ml", "classifier-7d4b9-abcde", "classifier"
HELD = "held"  # bytes_model, whose read_file signature holds a request in flight until a file appears
METRICS_PATH = "/monitoring/prometheus/metrics"
ROUND = 30  # requests per round of the load: 6 to version 2 (the canary), one of them an error
# histogram_quantile answers within the bucket of the true quantile: TF Serving's buckets grow by
# 1.8x, model-server's seconds buckets by at most 2.5x
TF_BUCKET_RATIO, SECONDS_BUCKET_RATIO = 1.8, 2.5


class Load(threading.Thread):
    """Rounds of ROUND requests, interleaved so that any stretch of them keeps the proportions:
    every 5th to the canary (version 2) by label, the round's last one with a bad input
    (INVALID_ARGUMENT); the others to version 1, by label over gRPC or by number over REST.
    `slowest` is the longest a request took as this client timed it; `unexpected` the answers that
    were not the planned ones. `paused` stops it between requests."""

    def __init__(self, server: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop, self.paused, self.idle = threading.Event(), threading.Event(), threading.Event()
        self.slowest = 0.0
        self.sent = 0
        self.unexpected: list[str] = []

    def _one(self, i: int, stub: Any, session: requests.Session) -> None:
        x = np.array([1.0], np.float32)
        if i % 5 == 4:
            bad = i == ROUND - 1
            try:
                stub.Predict(predict_request(MD, {"nope" if bad else "x": x}, label="canary"), timeout=30)
                if bad:
                    self.unexpected.append("a bad input answered OK")
            except grpc.RpcError as exc:
                if not bad or exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    self.unexpected.append(f"{exc.code()}: {exc.details()}")
        elif i % 5 == 3:
            r = session.post(f"{self.server.url}/v1/models/{MD}/versions/1:predict", json={"instances": [1.0]},
                             timeout=30)
            if r.status_code != 200:
                self.unexpected.append(r.text)
        else:
            stub.Predict(predict_request(MD, {"x": x}, label="stable"), timeout=30)

    def run(self) -> None:
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        with grpc.insecure_channel(self.server.target) as channel, requests.Session() as session:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self.stop.is_set():
                for i in range(ROUND):
                    while self.paused.is_set() and not self.stop.is_set():
                        self.idle.set()
                        time.sleep(0.05)
                    self.idle.clear()
                    t0 = time.perf_counter()
                    try:
                        self._one(i, stub, session)
                    except Exception as exc:  # noqa: BLE001 - every failure is reported by the tests
                        self.unexpected.append(repr(exc))
                    self.slowest = max(self.slowest, time.perf_counter() - t0)
                    self.sent += 1
                time.sleep(0.02)


@pytest.fixture(scope="module")
def load(models_dir: Path, start_server: Callable[..., ServerProcess],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    """A real model-server (two versions of MD behind labels, and HELD) under a steady Load."""
    import demomodels as demo

    d = tmp_path_factory.mktemp("monitored")
    (d / "models.config").write_text(demo.model_config_text(
        [(MD, str(models_dir / demo.TWO_VERSIONS)), (HELD, str(models_dir / demo.BYTES_MODEL))],
        labels={MD: {"stable": 1, "canary": 2}}, policies={MD: "all {}"}))
    (d / "monitoring.config").write_text(f'prometheus_config {{ enable: true, path: "{METRICS_PATH}" }}\n')
    # four batch threads: two may be held (test_in_flight_requests) while the load goes on
    (d / "batching.config").write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 500 } "
                                       "num_batch_threads { value: 4 } allowed_batch_sizes: 4 allowed_batch_sizes: 8\n")
    server = start_server([f"--model_config_file={d / 'models.config'}", "--enable_batching",
                           f"--batching_parameters_file={d / 'batching.config'}",
                           f"--monitoring_config_file={d / 'monitoring.config'}", "--file_system_poll_wait_seconds=0"])
    traffic = Load(server)
    traffic.start()
    yield traffic
    traffic.stop.set()
    traffic.join(30)


@pytest.fixture(scope="module")
def prometheus(load: Load, start_prometheus: Callable[..., Prometheus]) -> Prometheus:
    rule = one(objects(FULL_VALUES), "PrometheusRule")
    # what the chart's PodMonitor attaches (namespace, pod, podTargetLabels)
    prom = start_prometheus([scrape_job("model-servers", f"127.0.0.1:{load.server.rest_port}", METRICS_PATH,
                                        namespace=NAMESPACE, pod=POD, serving_modeldeploy_io_model_deployment=MD)],
                            rule["spec"]["groups"])
    # enough scrapes for rate() and the recording rules, and 20 rounds of the load in the dashboards'
    # 30 s window (its proportions then hold within one request in 600)
    prom.wait_query("count_over_time(up[1m]) >= 3")
    prom.wait_query("modeldeploy:request_latency_seconds:p99_5m")
    prom.wait_query(f'sum(increase(modelserver_requests_total{{model="{MD}"}}[30s])) >= {20 * ROUND}', timeout=120)
    assert load.unexpected == []
    return prom


def _assert_data(prom: Prometheus, expr: str, **params: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = prom.get("query", query=expr, **params)["result"]
    assert result, f"no data for: {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for: {expr}: {values}"
    return result


def _value(prom: Prometheus, expr: str, at: float) -> float:
    (sample,) = _assert_data(prom, expr, time=at)
    return float(sample["value"][1])


def _dashboard() -> dict[str, Any]:
    cm = next(
        c for c in by_kind(objects(FULL_VALUES), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    )
    dashboard: dict[str, Any] = json.loads(cm["data"]["modeldeploy-models.json"])
    return dashboard


def _adapter_rules(key: str) -> list[dict[str, Any]]:
    cm = next(c for c in by_kind(objects(FULL_VALUES), "ConfigMap")
              if c["metadata"]["name"].endswith("-prometheus-adapter"))
    rules: list[dict[str, Any]] = yaml.safe_load(cm["data"]["config.yaml"])[key]
    return rules


def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables as a user with 'All' selected would send them."""
    return expr.replace("$namespace", ".*").replace("$model", ".*").replace("$__rate_interval", "30s")


def _tf_quantile_seconds(q: float, matchers: str, window: str) -> str:
    """The same quantile from TF Serving's microsecond histogram of the same requests, in seconds."""
    return (f"histogram_quantile({q}, sum by (le) (rate(:tensorflow:serving:request_latency_bucket"
            f"{{{matchers}}}[{window}]))) / 1e6")


def _same_quantile(a: float, b: float) -> bool:
    """Two histogram_quantile answers for the same requests from the two bucket layouts agree."""
    return 1 / (TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO) <= a / b <= TF_BUCKET_RATIO * SECONDS_BUCKET_RATIO


def test_the_shipped_dashboard_is_the_chart_file() -> None:
    assert _dashboard() == json.loads(
        (CHART / "files" / "dashboards" / "modeldeploy-models.json").read_text()
    )


def test_dashboard_covers_what_operators_look_at() -> None:
    dashboard = _dashboard()
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for needle in (
        "requests",
        "error",
        "latency percentiles",
        "batch size",
        "queue time",
        "replicas",
        "per version",
    ):
        assert needle in titles, needle
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_every_dashboard_query_returns_data(prometheus: Prometheus) -> None:
    targets = [t for p in _dashboard()["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 20
    for t in targets:
        _assert_data(prometheus, _grafana_to_promql(t["expr"]))


def test_dashboard_traffic_share_per_version_adds_up(prometheus: Prometheus) -> None:
    (panel,) = [p for p in _dashboard()["panels"] if p["title"] == "Traffic share per version"]
    shares = {
        r["metric"]["version"]: float(r["value"][1])
        for r in _assert_data(prometheus, _grafana_to_promql(panel["targets"][0]["expr"]))
    }
    assert set(shares) == {"1", "2"}
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
    # the load sends 6 of every 30 requests to version 2, interleaved: within one request in 600
    assert math.isclose(shares["2"], 6 / ROUND, rel_tol=0.02), shares


def test_dashboard_variables_list_namespaces_and_models(prometheus: Prometheus) -> None:
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert m, var["definition"]
        match, label = _grafana_to_promql(m.group(1)), m.group(2)
        assert prometheus.get(f"label/{label}/values", **{"match[]": match}) == [{"namespace": NAMESPACE, "model": MD}[label]]


def test_recording_rules_of_the_alerts_evaluate_on_real_metrics(prometheus: Prometheus, load: Load) -> None:
    at = time.time()
    (p99,) = _assert_data(prometheus, "modeldeploy:request_latency_seconds:p99_5m", time=at)
    assert p99["metric"] == {
        "__name__": "modeldeploy:request_latency_seconds:p99_5m",
        "namespace": NAMESPACE,
        "model_name": MD,
    }
    # seconds: not above the slowest request as the load's client timed it, and the p99 of
    # model-server's own seconds histogram of the same requests
    seconds = float(p99["value"][1])
    assert 0 < seconds <= load.slowest * TF_BUCKET_RATIO, (seconds, load.slowest)
    ours = _value(prometheus, "histogram_quantile(0.99, sum by (le) (rate(modelserver_request_duration_seconds_bucket"
                              f'{{model="{MD}",api="predict"}}[5m])))', at)
    assert _same_quantile(seconds, ours), (seconds, ours)
    (errors,) = _assert_data(prometheus, "modeldeploy:request_error_ratio:rate2m")
    # one error in every round of 30; a window holds 20 rounds or more, so its edges move it by 5% at most
    assert math.isclose(float(errors["value"][1]), 1 / ROUND, rel_tol=0.05), errors


def test_prometheus_adapter_rules_serve_every_autoscaling_metric(prometheus: Prometheus, load: Load) -> None:
    rules = _adapter_rules("rules")
    names = {r["name"]["as"] for r in rules}
    assert names == {
        "modelserver_latency_p50_ms",
        "modelserver_latency_p95_ms",
        "modelserver_latency_p99_ms",
        "modelserver_requests_per_second",
    }
    for rule in rules:
        series = prometheus.get("series", **{"match[]": rule["seriesQuery"]})
        assert series, rule["seriesQuery"]
        name = series[0]["__name__"]
        assert re.search(rule["name"]["matches"], name)
        assert set(rule["resources"]["overrides"]) <= set(series[0])
        assert "[1m]" in rule["metricsQuery"]  # FULL_VALUES' window
        # What the adapter sends for `kubectl get --raw .../pods/*/modelserver_latency_p99_ms` and for
        # the ModelDeployment object.
        for group_by, matchers in (
            ("pod", f'namespace="{NAMESPACE}",pod=~"{POD}"'),
            (
                "serving_modeldeploy_io_model_deployment",
                f'namespace="{NAMESPACE}",serving_modeldeploy_io_model_deployment="{MD}"',
            ),
        ):
            q = (
                rule["metricsQuery"]
                .replace("<<.Series>>", name)
                .replace("<<.LabelMatchers>>", matchers)
                .replace("<<.GroupBy>>", group_by)
            )
            at = time.time()
            (sample,) = _assert_data(prometheus, q, time=at)
            assert set(sample["metric"]) == {group_by}
            value = float(sample["value"][1])
            if rule["name"]["as"].endswith("_ms"):
                _assert_milliseconds(prometheus, rule["name"]["as"], value, matchers, at, load.slowest)
            else:
                assert value > 0


def _assert_milliseconds(prom: Prometheus, name: str, value: float, matchers: str, at: float,
                         slowest: float) -> None:
    """`value` is the quantile `name` names in milliseconds: within the client's timing, and TF
    Serving's microsecond histogram gives the same quantile."""
    q = float("0." + re.search(r"_p(\d+)_ms$", name).group(1))  # type: ignore[union-attr]
    tf_seconds = _value(prom, _tf_quantile_seconds(q, matchers, "1m"), at)
    assert 0 < value <= slowest * 1000 * SECONDS_BUCKET_RATIO, (name, value, slowest)
    assert _same_quantile(value / 1000, tf_seconds), (name, value, tf_seconds)


def test_prometheus_adapter_external_rules_serve_one_series_per_model_deployment(prometheus: Prometheus,
                                                                                 load: Load) -> None:
    """The External metrics the operator's HPAs use (autoscaling.mode hpa): each query groups by
    ModelDeployment itself and returns one finite series for the HPA's selector."""
    from modeldeploy.decisions.autoscale import external_metric_name

    rules = _adapter_rules("externalRules")
    names = {r["name"]["as"] for r in rules}
    assert names == {external_metric_name(m) for m in ("latencyP50Ms", "latencyP95Ms", "latencyP99Ms",
                                                       "requestsPerSecond", "inFlightRequests")}
    for rule in rules:
        if rule["name"]["as"] == "modeldeploy_in_flight_requests":
            continue  # test_in_flight_requests_as_the_hpa_sees_them
        series = prometheus.get("series", **{"match[]": rule["seriesQuery"]})
        assert series, rule["seriesQuery"]
        # what the adapter sends for the HPA's selector in its namespace
        matchers = f'namespace="{NAMESPACE}",serving_modeldeploy_io_model_deployment="{MD}"'
        q = rule["metricsQuery"].replace("<<.Series>>", series[0]["__name__"]).replace("<<.LabelMatchers>>", matchers)
        at = time.time()
        (sample,) = _assert_data(prometheus, q, time=at)
        assert set(sample["metric"]) == {"namespace", "serving_modeldeploy_io_model_deployment"}
        value = float(sample["value"][1])
        if rule["name"]["as"].endswith("_ms"):
            _assert_milliseconds(prometheus, rule["name"]["as"], value, matchers, at, load.slowest)
        else:
            assert value > 0


# last in this module: the held requests finish at its end, and then HELD has series of its own
def test_in_flight_requests_as_the_hpa_sees_them(prometheus: Prometheus, load: Load, tmp_path: Path) -> None:
    """The load paused and two requests held in the model: the External in-flight metric reads 2
    (model-server's gauge, scraped, through the adapter's query for the HPA's selector); 0 once
    they are answered."""
    (rule,) = [r for r in _adapter_rules("externalRules") if r["name"]["as"] == "modeldeploy_in_flight_requests"]
    (series,) = prometheus.get("series", **{"match[]": rule["seriesQuery"]})
    matchers = f'namespace="{NAMESPACE}",serving_modeldeploy_io_model_deployment="{MD}"'
    q = rule["metricsQuery"].replace("<<.Series>>", series["__name__"]).replace("<<.LabelMatchers>>", matchers)

    def in_flight() -> float | None:
        result = prometheus.query(q)
        if result:
            assert set(result[0]["metric"]) == {"namespace", "serving_modeldeploy_io_model_deployment"}
        return float(result[0]["value"][1]) if len(result) == 1 else None

    paths = [tmp_path / "first", tmp_path / "second"]
    answers: list[int] = []

    def hold(path: Path) -> None:
        answers.append(requests.post(f"{load.server.url}/v1/models/{HELD}:predict", timeout=120,
                                     json={"signature_name": "read_file", "inputs": {"path": str(path)}}).status_code)

    load.paused.set()
    holders = [threading.Thread(target=hold, args=(p,)) for p in paths]
    try:
        wait_for(load.idle.is_set, "the load to pause")
        for t in holders:
            t.start()
        wait_for(lambda: all(Path(f"{p}.started").exists() for p in paths), "both requests in the model")
        wait_for(lambda: in_flight() == 2, "2 requests in flight, as the HPA sees them", timeout=30)
    finally:
        for p in paths:
            p.write_bytes(b"released")
        for t in holders:
            t.join(60)
    assert answers == [200, 200]
    wait_for(lambda: in_flight() == 0, "nothing in flight once they are answered", timeout=30)
    load.paused.clear()
