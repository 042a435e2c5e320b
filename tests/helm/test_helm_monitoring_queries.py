"""The monitoring assets query what model-server really exports, checked with a real Prometheus.

model-server's own metrics module (`modelserver.observability.metrics.ServerMetrics`) records synthetic traffic
for two versions of a model (labels stable/canary, some errors, batches, a queue) and is served over
loopback; Debian's `prometheus` scrapes it every second with the labels the chart's PodMonitor adds
(namespace, pod, serving_modeldeploy_io_model_deployment) and evaluates the chart's recording rules.
Then every Grafana dashboard query, every dashboard variable, the recording rules and every
prometheus-adapter rule must return data, with finite values.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from chart_support import CHART, FULL_VALUES, by_kind, objects, one
from support import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus (Debian package) is not installed")

NAMESPACE, POD, MD = "ml", "classifier-7d4b9-abcde", "classifier"
METRICS_PATH = "/monitoring/prometheus/metrics"


def _traffic(metrics: Any, round_no: int) -> None:
    """One deterministic round of requests: v3 (stable) and v4 (canary), gRPC and REST, a few errors."""
    from modelserver.core.request_context import RequestContext

    plan = [
        # (version, label, protocol, status, seconds, queue seconds, repeat)
        (3, "stable", "grpc", "OK", 0.004, 0.001, 18),
        (3, None, "rest", "OK", 0.006, 0.002, 6),
        (4, "canary", "grpc", "OK", 0.009, 0.003, 5),
        (4, "canary", "grpc", "INVALID_ARGUMENT", 0.001, None, 1),
    ]
    for version, label, protocol, status, seconds, queue, repeat in plan:
        for i in range(repeat):
            t0 = 1000.0 * round_no + i
            ctx = RequestContext(
                protocol=protocol, api="predict", model=MD, version=version, label=label, status=status
            )
            ctx.t_receive, ctx.t_send = t0, t0 + seconds
            if queue is not None:
                ctx.t_queue_start, ctx.t_compute_start, ctx.t_compute_end = t0, t0 + queue, t0 + seconds * 0.8
            metrics.finish(ctx)
    for size, rows in ((8, 7), (16, 16), (4, 3)):
        metrics.record_batch((MD, 3), rows, size)
    metrics.record_batch((MD, 4), 5, 8)


@pytest.fixture(scope="module")
def model_server_metrics() -> Iterator[str]:
    """A loopback endpoint serving model-server's real exposition; each scrape adds a round of traffic."""
    from modelserver.observability.metrics import CONTENT_TYPE, ServerMetrics

    metrics = ServerMetrics()
    metrics.add_queue_depth_source(lambda: {MD: 3})
    metrics.set_in_flight_source(lambda: 2)  # as model-server wires it (metrics.install)
    lock = threading.Lock()
    rounds = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path != METRICS_PATH:
                self.send_error(404)
                return
            with lock:
                rounds[0] += 1
                _traffic(metrics, rounds[0])
                body = metrics.render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def prometheus(model_server_metrics: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("prometheus")
    rule = one(objects(FULL_VALUES), "PrometheusRule")
    (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "model-servers",
                "metrics_path": METRICS_PATH,
                "static_configs": [
                    {
                        "targets": [model_server_metrics],
                        # What the chart's PodMonitor attaches (namespace, pod, podTargetLabels).
                        "labels": {
                            "namespace": NAMESPACE,
                            "pod": POD,
                            "serving_modeldeploy_io_model_deployment": MD,
                        },
                    }
                ],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                # Enough scrapes for rate() and the recording rules to have been evaluated on them.
                res = _get(f"{url}/api/v1/query?query=" + urllib.parse.quote("count_over_time(up[1m]) >= 3"))
                rec = _get(
                    f"{url}/api/v1/query?query="
                    + urllib.parse.quote("modeldeploy:request_latency_seconds:p99_5m")
                )
                if res["data"]["result"] and rec["data"]["result"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the model-server metrics in 30 s"
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    res = _get(f"{url}/api/v1/query?query=" + urllib.parse.quote(expr))
    assert res["status"] == "success", res
    result: list[dict[str, Any]] = res["data"]["result"]
    return result


def _assert_data(url: str, expr: str) -> list[dict[str, Any]]:
    result = _query(url, expr)
    assert result, f"no data for: {expr}"
    values = [float(r["value"][1]) for r in result]
    assert any(math.isfinite(v) for v in values), f"only NaN/Inf for: {expr}: {values}"
    return result


def _dashboard() -> dict[str, Any]:
    cm = next(
        c for c in by_kind(objects(FULL_VALUES), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    )
    dashboard: dict[str, Any] = json.loads(cm["data"]["modeldeploy-models.json"])
    return dashboard


def _grafana_to_promql(expr: str) -> str:
    """Grafana's variables as a user with 'All' selected would send them."""
    return expr.replace("$namespace", ".*").replace("$model", ".*").replace("$__rate_interval", "30s")


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


def test_every_dashboard_query_returns_data(prometheus: str) -> None:
    targets = [t for p in _dashboard()["panels"] for t in p.get("targets", [])]
    assert len(targets) >= 20
    for t in targets:
        _assert_data(prometheus, _grafana_to_promql(t["expr"]))


def test_dashboard_traffic_share_per_version_adds_up(prometheus: str) -> None:
    (panel,) = [p for p in _dashboard()["panels"] if p["title"] == "Traffic share per version"]
    shares = {
        r["metric"]["version"]: float(r["value"][1])
        for r in _assert_data(prometheus, _grafana_to_promql(panel["targets"][0]["expr"]))
    }
    assert set(shares) == {"3", "4"}
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
    assert math.isclose(shares["4"], 6 / 30, rel_tol=1e-6)  # 6 of every 30 inference requests go to v4


def test_dashboard_variables_list_namespaces_and_models(prometheus: str) -> None:
    for var in _dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert m, var["definition"]
        match, label = _grafana_to_promql(m.group(1)), m.group(2)
        res = _get(f"{prometheus}/api/v1/label/{label}/values?" + urllib.parse.urlencode({"match[]": match}))
        assert res["data"] == [{"namespace": NAMESPACE, "model": MD}[label]]


def test_recording_rules_of_the_alerts_evaluate_on_real_metrics(prometheus: str) -> None:
    (p99,) = _assert_data(prometheus, "modeldeploy:request_latency_seconds:p99_5m")
    assert p99["metric"] == {
        "__name__": "modeldeploy:request_latency_seconds:p99_5m",
        "namespace": NAMESPACE,
        "model_name": MD,
    }
    assert 0.001 < float(p99["value"][1]) < 0.1
    (errors,) = _assert_data(prometheus, "modeldeploy:request_error_ratio:rate2m")
    assert math.isclose(float(errors["value"][1]), 1 / 30, rel_tol=1e-6)


def test_prometheus_adapter_rules_serve_every_autoscaling_metric(prometheus: str) -> None:
    cm = next(
        c
        for c in by_kind(objects(FULL_VALUES), "ConfigMap")
        if c["metadata"]["name"].endswith("-prometheus-adapter")
    )
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    names = {r["name"]["as"] for r in rules}
    assert names == {
        "modelserver_latency_p50_ms",
        "modelserver_latency_p95_ms",
        "modelserver_latency_p99_ms",
        "modelserver_requests_per_second",
    }
    for rule in rules:
        series = _get(
            f"{prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": rule["seriesQuery"]})
        )["data"]
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
            (sample,) = _assert_data(prometheus, q)
            assert set(sample["metric"]) == {group_by}
            value = float(sample["value"][1])
            if rule["name"]["as"].endswith("_ms"):
                assert 1 < value < 100, (rule["name"]["as"], value)  # milliseconds, not seconds
            else:
                assert value > 0


def test_prometheus_adapter_external_rules_serve_one_series_per_model_deployment(prometheus: str) -> None:
    """The External metrics the operator's HPAs use (autoscaling.mode hpa): each query groups by
    ModelDeployment itself and returns one finite series for the HPA's selector."""
    from modeldeploy.decisions.autoscale import external_metric_name

    cm = next(c for c in by_kind(objects(FULL_VALUES), "ConfigMap") if c["metadata"]["name"].endswith("-prometheus-adapter"))
    rules = yaml.safe_load(cm["data"]["config.yaml"])["externalRules"]
    names = {r["name"]["as"] for r in rules}
    assert names == {external_metric_name(m) for m in ("latencyP50Ms", "latencyP95Ms", "latencyP99Ms",
                                                       "requestsPerSecond", "inFlightRequests")}
    for rule in rules:
        series = _get(f"{prometheus}/api/v1/series?" + urllib.parse.urlencode({"match[]": rule["seriesQuery"]}))["data"]
        assert series, rule["seriesQuery"]
        # what the adapter sends for the HPA's selector in its namespace
        matchers = f'namespace="{NAMESPACE}",serving_modeldeploy_io_model_deployment="{MD}"'
        q = rule["metricsQuery"].replace("<<.Series>>", series[0]["__name__"]).replace("<<.LabelMatchers>>", matchers)
        if rule["name"]["as"] == "modeldeploy_in_flight_requests":
            (sample,) = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": q}))["data"]["result"]
            assert float(sample["value"][1]) >= 0  # idle now: 0 in flight is a value
        else:
            (sample,) = _assert_data(prometheus, q)
        assert set(sample["metric"]) == {"namespace", "serving_modeldeploy_io_model_deployment"}
        assert math.isfinite(float(sample["value"][1]))
