"""The operator's PromQL (modeldeploy.decisions.queries) against a real Debian Prometheus scraping a real
model-server with the pod labels the chart's PodMonitor keeps: latency quantiles (NaN without
traffic, a value with it), requests per second, in-flight requests, the error ratio and scrape
age; an unreachable Prometheus is an answer with its reason, never an exception."""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
import requests
from modeldeploy.decisions import queries as promql
from server_support import free_port, model_server, wait_for
from support import stop_process

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian prometheus not installed (make setup)")
NS, MD = "ml", "demo"


@pytest.fixture(scope="module")
def scraped(models_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("promql")
    (d / "monitoring.config").write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    args = ["--model_name=half_plus_two", f"--model_base_path={models_dir / 'half_plus_two'}",
            f"--monitoring_config_file={d / 'monitoring.config'}", "--file_system_poll_wait_seconds=0"]
    with model_server(args, d / "server.log") as server:
        port = free_port()
        (d / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: model-server\n"
            "    metrics_path: /monitoring/prometheus/metrics\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{server.rest_port}'], labels: "
            f"{{namespace: {NS}, pod: {MD}-0, {promql.MD_LABEL}: {MD}}}}}]\n")
        log = open(d / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={d / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            yield server, f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)
            log.close()


def test_queries_before_and_after_traffic(scraped) -> None:  # type: ignore[no-untyped-def]
    server, prom = scraped
    age = wait_for(lambda: promql.instant(prom, promql.scrape_age_seconds(NS, MD)).value, what="a first scrape",
                   timeout=60)
    assert 0 <= age < 30
    p99 = promql.latency_ms(NS, MD, 0.99, "30s")
    # no inference request yet: no series, or NaN (no traffic is not zero latency)
    before = promql.instant(prom, p99)
    assert before.value is None or math.isnan(before.value)
    assert promql.instant(prom, promql.in_flight_per_pod(NS, MD)).value is not None
    with requests.Session() as s:
        def send_then(query: str):  # type: ignore[no-untyped-def]
            # rate() needs the counters to grow between two scrapes: keep traffic flowing
            for _ in range(10):
                assert s.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [1.0]},
                              timeout=30).status_code == 200
            s.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": ["x"]}, timeout=30)  # a 400
            v = promql.instant(prom, query).value
            return v if v is not None and not math.isnan(v) else None

        after = wait_for(lambda: send_then(p99), what="a p99 over real traffic", timeout=60)
        assert 0 < after < 10_000
        rps = wait_for(lambda: send_then(promql.requests_per_second(NS, MD, "30s")), what="a request rate", timeout=60)
        assert rps > 0
    errors = promql.instant(prom, promql.error_ratio(NS, MD, "30s"))
    assert errors.value == 0.0  # a client mistake (400) is not a server error
    other = promql.instant(prom, promql.latency_ms(NS, "another-md", 0.99, "30s"))
    assert other.value is None and "no series" in other.problem


def test_unreachable_and_bad_queries_are_answers() -> None:
    answer = promql.instant(f"http://127.0.0.1:{free_port()}", "up", timeout=2)
    assert answer.value is None and "unreachable" in answer.problem
    assert promql.parse({"status": "error", "error": "parse error"}).problem == "Prometheus error: parse error"
    two = {"status": "success", "data": {"resultType": "vector", "result": [{"value": [0, "1"]}, {"value": [0, "2"]}]}}
    assert "2 series" in promql.parse(two).problem
    assert math.isnan(promql.parse({"status": "success", "data": {"resultType": "vector",
                                                                 "result": [{"value": [0, "NaN"]}]}}).value)
    assert promql.selector("a\"b", "m") == '{namespace="a\\"b",serving_modeldeploy_io_model_deployment="m"}'
