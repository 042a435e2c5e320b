"""The operator's PromQL (modeldeploy.decisions.queries), asked through its Prometheus client
(modeldeploy.clients.prometheus), against a real Debian Prometheus scraping a real model-server with
the pod labels the chart's PodMonitor keeps: latency quantiles (NaN without traffic, a value in
milliseconds with it), requests per second, in-flight requests, the error ratio and scrape age; an
unreachable Prometheus is an answer with its reason, never an exception."""

from __future__ import annotations

import math
import time

import pytest
import requests
from modeldeploy.clients import prometheus as promclient
from modeldeploy.decisions import queries as promql
from support import free_port, scrape_job, wait_for

NS, MD = "ml", "demo"
# histogram_quantile answers within the bucket of the true quantile: model-server's seconds buckets
# grow by at most 2.5x, TF Serving's microsecond buckets by 1.8x
SECONDS_BUCKET_RATIO, TF_BUCKET_RATIO = 2.5, 1.8


@pytest.fixture(scope="module")
def scraped(models_dir, start_server, start_prometheus, tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("promql")
    (d / "monitoring.config").write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    server = start_server(["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
                           f"--monitoring_config_file={d / 'monitoring.config'}", "--file_system_poll_wait_seconds=0"])
    prom = start_prometheus([scrape_job("model-server", f"127.0.0.1:{server.rest_port}",
                                        "/monitoring/prometheus/metrics",
                                        namespace=NS, pod=f"{MD}-0", **{promql.MD_LABEL: MD})])
    return server, prom


def test_queries_before_and_after_traffic(scraped) -> None:  # type: ignore[no-untyped-def]
    server, prom = scraped
    age = wait_for(lambda: promclient.instant(prom.url, promql.scrape_age_seconds(NS, MD)).value,
                   "a first scrape", timeout=60)
    assert 0 <= age < 30
    p99 = promql.latency_ms(NS, MD, 0.99, "30s")
    # no inference request yet: no series, or NaN (no traffic is not zero latency)
    before = promclient.instant(prom.url, p99)
    assert before.value is None or math.isnan(before.value)
    assert promclient.instant(prom.url, promql.in_flight_per_pod(NS, MD)).value is not None
    slowest = [0.0]  # seconds, as the client timed its requests
    with requests.Session() as s:
        def send_then(query: str):  # type: ignore[no-untyped-def]
            # rate() needs the counters to grow between two scrapes: keep traffic flowing
            for x in [1.0] * 10 + ["x"]:  # and a 400
                t0 = time.perf_counter()
                r = s.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [x]}, timeout=30)
                slowest[0] = max(slowest[0], time.perf_counter() - t0)
                assert r.status_code == (200 if x == 1.0 else 400)
            v = promclient.instant(prom.url, query).value
            return v if v is not None and not math.isnan(v) else None

        after = wait_for(lambda: send_then(p99), "a p99 over real traffic", timeout=60)
        rps = wait_for(lambda: send_then(promql.requests_per_second(NS, MD, "30s")), "a request rate", timeout=60)
        assert rps > 0
    # milliseconds: not above what the client waited for its slowest request, and the same p99 as
    # TF Serving's microsecond histogram of the same requests, evaluated at the same instant
    assert 0 < after <= slowest[0] * 1000 * SECONDS_BUCKET_RATIO, (after, slowest[0])
    at = time.time()
    ours = float(prom.get("query", query=p99, time=at)["result"][0]["value"][1])
    tf_ms = float(prom.get("query", time=at, query=(
        "histogram_quantile(0.99, sum by (le) (rate(:tensorflow:serving:request_latency_bucket"
        f"{promql.selector(NS, MD)}[30s]))) / 1000"))["result"][0]["value"][1])
    assert 1 / (SECONDS_BUCKET_RATIO * TF_BUCKET_RATIO) <= ours / tf_ms <= SECONDS_BUCKET_RATIO * TF_BUCKET_RATIO
    errors = promclient.instant(prom.url, promql.error_ratio(NS, MD, "30s"))
    assert errors.value == 0.0  # a client mistake (400) is not a server error
    other = promclient.instant(prom.url, promql.latency_ms(NS, "another-md", 0.99, "30s"))
    assert other.value is None and "no series" in other.problem


def test_unreachable_and_bad_queries_are_answers() -> None:
    answer = promclient.instant(f"http://127.0.0.1:{free_port()}", "up", timeout=2)
    assert answer.value is None and "unreachable" in answer.problem
    assert promclient.parse({"status": "error", "error": "parse error"}).problem == "Prometheus error: parse error"
    two = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [0, "1"]}, {"value": [0, "2"]}]}}
    assert "2 series" in promclient.parse(two).problem
    assert math.isnan(promclient.parse({"status": "success", "data": {"resultType": "vector",
                                                                     "result": [{"value": [0, "NaN"]}]}}).value)
    assert promql.selector("a\"b", "m") == '{namespace="a\\"b",serving_modeldeploy_io_model_deployment="m"}'
