"""Helpers shared by the test areas (import as `support`: tests/ is on pytest's `pythonpath`):
waiting, free ports, stopping processes by PID, the programs the tests need (a missing one fails,
never skips), and the one launcher of a real Prometheus. Area-specific helpers stay in
tests/<area>/<area>_support.py; the shared fixtures are in tests/conftest.py."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml


def wait_for(predicate: Callable[[], Any], what: str = "condition", *, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy and return that; fail after `timeout` seconds,
    naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0 and ask)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    """The status condition of type `ctype` of a Kubernetes object, or {}."""
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process this test started, by its PID: `sig`, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def program(name: str, hint: str) -> str:
    """The path of a program the tests need. A missing one FAILS the test that needs it (never a
    skip: `make test` must not go green without the real component); `hint` says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return path


PROMETHEUS_HINT = "Debian package prometheus (`make setup` as root, or `make system-deps`)"


def scrape_job(name: str, target: str, metrics_path: str = "/metrics", **labels: str) -> dict[str, Any]:
    """One static scrape job for `Prometheus`: `target` (host:port), with `labels` on every series."""
    return {"job_name": name, "metrics_path": metrics_path,
            "static_configs": [{"targets": [target], **({"labels": labels} if labels else {})}]}


class Prometheus:
    """The one way the tests run a real Prometheus (Debian's binary): on 127.0.0.1 on a free port,
    scraping the jobs the test gives every `interval`, evaluating `rule_groups` (a PrometheusRule's
    groups); stopped by PID. `query` asks its HTTP API; `wait_query` polls until a query has data."""

    def __init__(self, workdir: Path, jobs: list[dict[str, Any]], rule_groups: list[dict[str, Any]] | None = None,
                 interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config: dict[str, Any] = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                                  "scrape_configs": jobs}
        if rule_groups:
            (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}))
            config["rule_files"] = [str(workdir / "rules.yaml")]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Prometheus:
        binary = program("prometheus", PROMETHEUS_HINT)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            try:
                return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, "prometheus ready", timeout=timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def get(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path> with `params`; its `data` (the API's status must be success)."""
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (maybe empty)."""
        result: list[dict[str, Any]] = self.get("query", query=expr)["result"]
        return result

    def wait_query(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Polls until `expr` returns a non-empty result (scrapes and rules run every interval)."""
        try:
            result: list[dict[str, Any]] = wait_for(lambda: self.query(expr), expr, timeout=timeout, interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{self.log()}") from None
        return result


def by_labels(result: list[dict[str, Any]], **labels: str) -> float:
    """The value of the one series in a query result that carries `labels`."""
    for r in result:
        if all(r["metric"].get(k) == v for k, v in labels.items()):
            return float(r["value"][1])
    raise AssertionError(f"no series with {labels} in {result}")
