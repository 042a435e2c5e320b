"""The load tools: perf_analyzer (TF Serving's gRPC API, or the v2 protocol over gRPC or HTTP) and
wrk (TF Serving's REST API).

Each call measures one concurrency level against one model and returns a Point; a failed
measurement is a Point with `error` set (the run goes on and the report shows it).
"""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from common import BENCH, LOCALHOST, PERF_ANALYZER, WORK, tool_env

PREDICT_LUA = BENCH / "predict.lua"


@dataclass
class Point:
    """One measurement: throughput (requests/s; batch-1 requests, so also inferences/s) and
    latency percentiles in microseconds, as seen by the client."""

    server: str
    model: str
    protocol: str  # "grpc" | "rest" (wrk) | "http" (perf_analyzer, v2 over HTTP)
    concurrency: int
    throughput: float = 0.0
    p50_us: float = 0.0
    p95_us: float = 0.0
    p99_us: float = 0.0
    errors: int = 0
    error: str = ""
    avg_batch: float = 0.0  # model-server with batching: mean executed batch size (its metrics)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Settings:
    """How long each measurement runs (perf_analyzer windows, wrk duration)."""

    window_ms: int = 2000
    max_trials: int = 5
    stability_pct: int = 20
    wrk_seconds: int = 5


def parse_perf_csv(text: str) -> dict[str, float]:
    """perf_analyzer's -f CSV: one row per concurrency; latencies in microseconds."""
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise ValueError("perf_analyzer wrote no result row")
    row = rows[-1]
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_us": float(row["p50 latency"]),
        "p95_us": float(row["p95 latency"]),
        "p99_us": float(row["p99 latency"]),
    }


def perf_analyzer_argv(port: int, model: str, concurrency: int, kind: str, csv_path: Path,
                       settings: Settings, token: str | None = None, http: bool = False,
                       version: str | None = None, shape: str | None = None) -> list[str]:
    """`version` (-x) and `shape` (--shape) for model-server's v2 protocol: perf_analyzer finds
    an unnamed version nowhere in its statistics, and model-server declares no batch dimension."""
    argv = [
        str(PERF_ANALYZER), f"--service-kind={kind}", "-i", "http" if http else "grpc", "-u", f"{LOCALHOST}:{port}",
        "-m", model, "-b", "1", "--concurrency-range", f"{concurrency}:{concurrency}",
        "-p", str(settings.window_ms), "-r", str(settings.max_trials), "-s", str(settings.stability_pct),
        "-f", str(csv_path),
    ]
    if kind == "tfserving" and model == "half_plus_two":
        argv += ["--shape", "x:1"]  # the signature's x is [None]: one value per request
    if shape:
        argv += ["--shape", shape]
    if version:
        argv += ["-x", version]
    if token:
        argv += ["-H", f"triton-grpc-protocol-triton-access-token:{token}"]
    return argv


def _perf_once(argv: list[str], csv_path: Path, limit: float) -> tuple[dict[str, float] | None, str]:
    """One perf_analyzer run: (figures, "") or (None, why it failed)."""
    try:
        proc = subprocess.run(argv, env=tool_env(), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return None, f"perf_analyzer ran past {limit:.0f}s"
    if proc.returncode == 0 and csv_path.exists():
        try:
            return parse_perf_csv(csv_path.read_text()), ""
        except (ValueError, KeyError) as e:
            return None, f"bad CSV: {e}"
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return None, f"perf_analyzer exit {proc.returncode}: {' | '.join(lines[-2:])}"


def perf_analyzer(server: str, port: int, model: str, concurrency: int, settings: Settings,
                  kind: str = "tfserving", token: str | None = None, http: bool = False,
                  version: str | None = None, shape: str | None = None) -> Point:
    """One concurrency level. When the windows do not agree within the stability threshold (a
    noisy machine), measures again without the check and notes it: the average of the last 3
    windows is still a measurement, but a less repeatable one."""
    point = Point(server, model, "http" if http else "grpc", concurrency)
    extra = {"http": http, "version": version, "shape": shape}
    limit = 60 + settings.window_ms * settings.max_trials / 1000 * 2
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        csv_path = Path(tmp) / "pa.csv"
        figs, why = _perf_once(perf_analyzer_argv(port, model, concurrency, kind, csv_path, settings, token,
                                                  **extra), csv_path, limit)  # type: ignore[arg-type]
        if figs is None and "stable" in why:
            loose = Settings(settings.window_ms, 3, 1000, settings.wrk_seconds)
            figs, why2 = _perf_once(perf_analyzer_argv(port, model, concurrency, kind, csv_path, loose, token,
                                                       **extra), csv_path, limit)  # type: ignore[arg-type]
            why = f"windows varied by more than {settings.stability_pct}%" if figs else why2
    if figs is not None:
        for k, v in figs.items():
            setattr(point, k, v)
    point.error = why
    return point


def rest_body(model: str) -> str:
    """The batch-1 REST predict body: row format, like the gRPC requests."""
    if model == "mlp":
        return json.dumps({"instances": [[0.5] * 784]})
    return json.dumps({"instances": [1.0]})


def wrk_argv(port: int, model: str, concurrency: int, body_file: Path, seconds: int) -> list[str]:
    threads = 1 if concurrency == 1 else 2
    url = f"http://{LOCALHOST}:{port}/v1/models/{model}:predict"
    return ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s",
            "-s", str(PREDICT_LUA), url, "--", str(body_file)]


def parse_wrk(out: str) -> dict[str, float]:
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line[len("BENCH_JSON "):])  # type: ignore[no-any-return]
    raise ValueError("wrk printed no BENCH_JSON line")


def wrk(server: str, port: int, model: str, concurrency: int, settings: Settings) -> Point:
    point = Point(server, model, "rest", concurrency)
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(rest_body(model))
        argv = wrk_argv(port, model, concurrency, body, settings.wrk_seconds)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=settings.wrk_seconds + 60)
            r = parse_wrk(proc.stdout)
        except (subprocess.TimeoutExpired, ValueError) as e:
            point.error = f"wrk: {e}"
            return point
    errors = int(sum(r[k] for k in r if k.startswith("errors_")))
    ok = r["requests"] - int(r["errors_status"])
    point.throughput = ok / (r["duration_us"] / 1e6)
    point.p50_us, point.p95_us, point.p99_us = r["p50_us"], r["p95_us"], r["p99_us"]
    point.errors = errors
    if errors:
        point.error = f"{errors} failed requests (non-2xx or socket errors)"
    return point
