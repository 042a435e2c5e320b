"""What OpenTelemetry tracing and payload logging cost a request (issue 22), side by side in one run.

Six model-servers on the demo half_plus_two, started together and measured in interleaved rounds
(so a busy moment of the machine hits every one alike), batch-1 Predicts at concurrency 1 over
gRPC and REST from this process:

    before      the commit before tracing and payload logging existed (--before REV), both off
    off         this checkout, both off (the default)
    tracing     --enable_tracing, every request sampled, spans exported over OTLP/HTTP to an
                in-process receiver
    logging     --payload_log_url to an in-process CloudEvents sink that accepts every event
    refusing    payload logging to a sink that answers 503 to every event
    down        payload logging to a port nothing listens on

Client-observed p50 and p99 (µs) per protocol go to bench/results/observability.json and, with
--write, to the "Tracing and payload logging" section of bench/RESULTS.md.

    .venv/bin/python bench/observability.py --write            # about 2 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from common import BENCH, MAIN_PY, ROOT, free_port, log, running, server_env

SINK_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {server_tests!r}]
from otel_sinks import EventSink, OtlpHttpReceiver
kind = sys.argv[1]
with (OtlpHttpReceiver() if kind == "otlp" else EventSink(mode=kind)) as sink:
    print(getattr(sink, "endpoint", None) or sink.url, flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    counted = len(sink.all()) if kind == "otlp" else (len(sink.events) if kind == "ok" else sink.posts)
    print(counted, flush=True)
"""


class SinkProcess:
    """A receiver in a process of its own (its work must not slow the measuring client): `kind`
    "otlp" (OTLP/HTTP), "ok" or "refuse" (CloudEvents sinks of tests/server/otel_sinks.py)."""

    def __init__(self, kind: str) -> None:
        script = SINK_SCRIPT.format(tests=str(ROOT / "tests"), server_tests=str(ROOT / "tests" / "server"))
        self.proc = subprocess.Popen([str(MAIN_PY), "-c", script, kind], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()

    def finish(self) -> int:
        """Stops it; what it received."""
        out, _ = self.proc.communicate("", timeout=30)
        return int(out.strip() or 0)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


RESULTS = BENCH / "results" / "observability.json"
MARK = ("<!-- observability -->", "<!-- /observability -->")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def checkout(rev: str, into: Path) -> Path:
    """server_image/ of `rev`, extracted into `into` (what --before runs)."""
    archive = subprocess.run(["git", "archive", rev, "server_image"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "server_image"


def wait_ready(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/v1/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready in {timeout:.0f} s")


def measure(stubs: dict[str, Any], urls: dict[str, str], rounds: int, per_round: int) -> dict[str, Any]:
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], np.float32)))
    body = json.dumps({"instances": [[1.0]]})
    sessions = {name: requests.Session() for name in urls}
    lat: dict[str, dict[str, list[float]]] = {n: {"grpc": [], "rest": []} for n in urls}
    for r in range(rounds):
        order = list(urls) if r % 2 == 0 else list(reversed(urls))
        for name in order:
            for _ in range(per_round):
                t0 = time.perf_counter()
                stubs[name].Predict(req, timeout=10)
                lat[name]["grpc"].append(time.perf_counter() - t0)
            s, u = sessions[name], f"{urls[name]}/v1/models/half_plus_two:predict"
            for _ in range(per_round):
                t0 = time.perf_counter()
                resp = s.post(u, data=body, timeout=10)
                lat[name]["rest"].append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
    return {n: {p: {"p50_us": round(percentile(v, 0.5) * 1e6, 1), "p99_us": round(percentile(v, 0.99) * 1e6, 1),
                    "n": len(v)} for p, v in by.items()} for n, by in lat.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="f10cf92^", help="the revision without tracing and payload logging")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=200)
    ap.add_argument("--write", action="store_true", help="update bench/RESULTS.md's section")
    args = ap.parse_args()

    rx, sink, refusing = SinkProcess("otlp"), SinkProcess("ok"), SinkProcess("refuse")
    try:
        figures = run(args, rx, sink, refusing)
    finally:
        for p in (rx, sink, refusing):
            p.kill()
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "before": args.before,
              "cpus": os.cpu_count(), "machine": platform.machine(), "loadavg_after": [round(x, 2) for x in load],
              "figures": figures}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    table = render(result)
    print(table)
    if args.write:
        path = BENCH / "RESULTS.md"
        text = path.read_text()
        section = f"{MARK[0]}\n{table}{MARK[1]}"
        if MARK[0] in text:
            start, end = text.index(MARK[0]), text.index(MARK[1]) + len(MARK[1])
            text = text[:start] + section + text[end:]
        else:
            anchor = "## Reproduce"
            text = text.replace(anchor, section + "\n\n" + anchor) if anchor in text else text + "\n" + section + "\n"
        path.write_text(text)
    return 0


def run(args: argparse.Namespace, rx: SinkProcess, sink: SinkProcess, refusing: SinkProcess) -> dict[str, Any]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        models = tmp / "models"
        subprocess.run([str(MAIN_PY), "-m", "demomodels", "--out", str(models)], check=True, capture_output=True)
        before_src = checkout(args.before, tmp)
        base = server_env(tf_threads=1)
        configs: dict[str, tuple[list[str], dict[str, str]]] = {
            "before": ([], {"PYTHONPATH": str(before_src)}),
            "off": ([], {}),
            "tracing": ([f"--tracing_endpoint={rx.url}"], {}),
            "logging": ([f"--payload_log_url={sink.url}"], {}),
            "refusing": ([f"--payload_log_url={refusing.url}"], {}),
            "down": ([f"--payload_log_url=http://127.0.0.1:{free_port()}/events"], {}),
        }
        stubs: dict[str, Any] = {}
        urls: dict[str, str] = {}
        for name, (extra, env) in configs.items():
            gport, rport = free_port(), free_port()
            argv = [str(MAIN_PY), "-m", "modelserver.main", "--bind_address=127.0.0.1", f"--port={gport}",
                    f"--rest_api_port={rport}", "--model_name=half_plus_two",
                    f"--model_base_path={models / 'half_plus_two'}", "--file_system_poll_wait_seconds=0", *extra]
            stack.enter_context(running(f"observability-{name}", argv, [gport, rport], dict(base, **env)))
            urls[name] = f"http://127.0.0.1:{rport}"
            channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{gport}"))
            stubs[name] = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for u in urls.values():
            wait_ready(u)
        log("warming up")
        measure(stubs, urls, 1, 200)
        log(f"measuring: {args.rounds} rounds of {args.per_round} requests per protocol and server")
        figures = measure(stubs, urls, args.rounds, args.per_round)
        stack.close()  # the servers stop (and flush) before the receivers count
        figures["_events"] = {"spans_received": rx.finish(), "events_accepted": sink.finish(),
                              "events_refused": refusing.finish()}
    return figures


def render(result: dict[str, Any]) -> str:
    f = result["figures"]
    lines = [
        "## Tracing and payload logging (bench/observability.py)", "",
        f"Run {result['when']} at commit `{result['commit']}` ('before': `{result['before']}`), {result['cpus']} CPUs, "
        f"load average after {' / '.join(map(str, result['loadavg_after']))}. Six servers on half_plus_two, started "
        "together, measured in interleaved rounds; batch-1 Predicts at concurrency 1 from one Python client "
        "(client-observed µs, the client's own cost included). The OTLP receiver and the sinks run in processes of "
        "their own on the same 2 CPUs, so their work is in these figures too.", "",
        "| server | gRPC p50 | gRPC p99 | REST p50 | REST p99 |", "|---|---|---|---|---|",
    ]
    names = {"before": "before (no tracing code)", "off": "off (this commit's default)",
             "tracing": "tracing on, every request sampled (OTLP/HTTP)", "logging": "payload logging on, sink accepting",
             "refusing": "payload logging on, sink answering 503", "down": "payload logging on, sink down"}
    for key, label in names.items():
        g, r = f[key]["grpc"], f[key]["rest"]
        lines.append(f"| {label} | {g['p50_us']} | {g['p99_us']} | {r['p50_us']} | {r['p99_us']} |")
    ev = f["_events"]
    lines += ["", f"Spans received {ev['spans_received']}, events accepted {ev['events_accepted']}, "
                  f"events refused {ev['events_refused']}.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
