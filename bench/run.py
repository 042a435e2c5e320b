"""`make bench`: one benchmark run, side by side on this machine, written to bench/RESULTS.md.

1. tools (bench/setup.sh) and the two SavedModels (demomodels: half_plus_two, MLP
   784→2048→2048→10) under bench/work/;
2. the in-process limit (bench/inprocess.py) at batch 1, 32, 128;
3. the no-op gRPC server (bench/noop_server.py): the limit of the setup;
4. the peer: PyTriton with dynamic batching (bench/pytriton_peer.py);
5. model-server with batching off, then on (bench/batching_parameters.txt): perf_analyzer over
   gRPC and wrk over REST; with batching on, also the v2 protocol (perf_analyzer
   --service-kind=triton over gRPC and HTTP, as for PyTriton);
6. the targets (bench/targets.py); a py-spy profile of model-server for each missed one.

Every server is started here on 127.0.0.1 with free ports and stopped by its PID; every
measurement is bounded in time. A full run takes about 15 minutes; --quick about 5.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    LOCALHOST,
    MAIN_PY,
    MODELS,
    PY_SPY,
    PYTRITON_PY,
    ROOT,
    WORK,
    free_port,
    log,
    running,
    server_env,
)
from load import Point, Settings, perf_analyzer, wrk
from report import operator_section, render, with_operator_section, with_section
from spy import record, to_markdown
from targets import Figures, verdicts

MODEL_NAMES = ("half_plus_two", "mlp")
FULL_CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)
QUICK_CONCURRENCIES = (1, 32)
BATCHING_FILE = BENCH / "batching_parameters.txt"
MONITORING_FILE = BENCH / "monitoring.config"  # metrics on, as the operator deploys it
TF_THREADS = 2
V2_SHAPES = {"half_plus_two": "x:1", "mlp": "x:1,784"}  # model-server's v2 shapes have no batch dimension


def ensure_models(force: bool = False) -> Path:
    """half_plus_two/1 and mlp/1 built by demomodels (the same builders the tests use)."""
    done = MODELS / ".built"
    if done.exists() and not force:
        return MODELS
    log("building the SavedModels (demomodels)")
    code = ("import sys; import demomodels as demo; "
            "demo.build_half_plus_two(sys.argv[1] + '/half_plus_two/1'); demo.build_mlp(sys.argv[1] + '/mlp/1')")
    subprocess.run([str(MAIN_PY), "-c", code, str(MODELS)], check=True, env=server_env(), capture_output=True)
    done.touch()
    return MODELS


def model_config(models: Path) -> Path:
    cfg = WORK / "bench_models.config"
    cfg.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m}" base_path: "{models / m}" model_platform: "tensorflow" }}\n'
        for m in MODEL_NAMES) + "}\n")
    return cfg


def conditions() -> dict[str, Any]:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    busy = subprocess.run(["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu", "--no-headers"],
                          capture_output=True, text=True).stdout.splitlines()
    me = {str(os.getpid())}
    hot = [ln.split(None, 2) for ln in busy[:8]]
    hot_s = ", ".join(f"{c} ({p}%)" for p, pid, c in hot if float(p) >= 10 and pid not in me)
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "mem_gib": mem_kb / 2**20, "load": load, "busy": hot_s}


def run_inprocess(models: Path, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in MODEL_NAMES:
        log(f"in-process: {m}")
        proc = subprocess.run(
            [str(MAIN_PY), str(BENCH / "inprocess.py"), "--model-dir", str(models / m / "1"), "--name", m,
             "--seconds", str(seconds), "--threads", str(TF_THREADS)],
            capture_output=True, text=True, env=server_env(), timeout=300, check=True)
        out[m] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run_hotpath(models: Path) -> dict[str, Any]:
    """model-server's own steps per batch-1 Predict, without the transport (bench/hotpath.py)."""
    log("hot path steps (in-process)")
    proc = subprocess.run([str(MAIN_PY), str(BENCH / "hotpath.py"), "--models", str(models),
                           "--threads", str(TF_THREADS)],
                          capture_output=True, text=True, env=server_env(), timeout=300)
    if proc.returncode != 0:
        log(f"hotpath failed: {proc.stderr[-500:]}")
        return {}
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return {r["model"]: r["steps_us"] for r in rows}


class Run:
    """Collects points; measures one server at a time."""

    def __init__(self, concurrencies: Sequence[int], settings: Settings, rest: bool) -> None:
        self.concurrencies = list(concurrencies)
        self.settings = settings
        self.rest = rest
        self.points: list[Point] = []
        self.profiles: list[dict[str, Any]] = []

    def add(self, p: Point) -> Point:
        tag = f" ({p.error})" if p.error else ""
        if p.avg_batch:
            tag = f" avg batch {p.avg_batch:.1f}" + tag
        log(f"{p.server:17} {p.model:13} {p.protocol:4} c={p.concurrency:<3} {p.throughput:8,.0f}/s "
            f"p50 {p.p50_us / 1000:6.2f} ms  p99 {p.p99_us / 1000:6.2f} ms{tag}")
        self.points.append(p)
        return p

    def grpc(self, server: str, port: int, kind: str = "tfserving", token: str | None = None,
             metrics_port: int | None = None) -> None:
        for m in MODEL_NAMES:
            for c in self.concurrencies:
                before = batch_counts(metrics_port, m)
                p = perf_analyzer(server, port, m, c, self.settings, kind, token)
                p.avg_batch = avg_batch(before, batch_counts(metrics_port, m))
                self.add(p)

    def v2(self, server: str, grpc_port: int, rest_port: int, metrics_port: int | None = None) -> None:
        """model-server's v2 protocol, as perf_analyzer drives Triton: gRPC, then HTTP."""
        for http, port in ((False, grpc_port), (True, rest_port)):
            for m in MODEL_NAMES:
                for c in self.concurrencies:
                    before = batch_counts(metrics_port, m)
                    p = perf_analyzer(server, port, m, c, self.settings, "triton", http=http, version="1",
                                      shape=V2_SHAPES[m])
                    p.avg_batch = avg_batch(before, batch_counts(metrics_port, m))
                    self.add(p)

    def rest_load(self, server: str, port: int, metrics_port: int | None = None) -> None:
        for m in MODEL_NAMES:
            for c in self.concurrencies:
                before = batch_counts(metrics_port, m)
                p = wrk(server, port, m, c, self.settings)
                p.avg_batch = avg_batch(before, batch_counts(metrics_port, m))
                self.add(p)

    def get(self, server: str, model: str, protocol: str, c: int) -> Point | None:
        for p in self.points:
            if (p.server, p.model, p.protocol, p.concurrency) == (server, model, protocol, c):
                return p
        return None

    def profile(self, server: str, pid: int, port: int, model: str, c: int, why: str) -> None:
        """py-spy samples model-server while perf_analyzer keeps concurrency c on it."""
        if not PY_SPY.exists():
            return
        log(f"profiling {server} {model} c={c} ({why})")
        box: dict[str, Point] = {}
        load_settings = Settings(window_ms=3000, max_trials=3, stability_pct=100)
        t = threading.Thread(target=lambda: box.update(p=perf_analyzer(server, port, model, c, load_settings)))
        t.start()
        time.sleep(1.5)
        try:
            with tempfile.TemporaryDirectory(dir=WORK) as tmp:
                s = record(pid, 5, Path(tmp) / "stacks.txt")
        except (subprocess.SubprocessError, OSError) as e:
            log(f"py-spy failed: {e}")
            t.join()
            return
        t.join()
        title = f"{server}, {model}, concurrency {c} — {why}"
        self.profiles.append({"server": server, "model": model, "concurrency": c, "why": why,
                              "markdown": to_markdown(title, s)})


def batch_counts(rest_port: int | None, model: str) -> tuple[float, float] | None:
    """(executed batches, their summed sizes) for `model` from model-server's metrics, or None."""
    if rest_port is None:
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{rest_port}/monitoring/prometheus/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        for kind in ("count", "sum"):
            if line.startswith(f'modelserver_batch_size_{kind}{{model="{model}"'):
                vals[kind] = float(line.rsplit(" ", 1)[1])
    return (vals.get("count", 0.0), vals.get("sum", 0.0))


def avg_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float:
    if before is None or after is None or after[0] <= before[0]:
        return 0.0
    return (after[1] - before[1]) / (after[0] - before[0])


def model_server_argv(grpc_port: int, rest_port: int, cfg: Path, batching: Path | None) -> list[str]:
    argv = [str(ROOT / ".venv" / "bin" / "model-server"), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={cfg}", f"--bind_address={LOCALHOST}",
            f"--tensorflow_intra_op_parallelism={TF_THREADS}", f"--tensorflow_inter_op_parallelism={TF_THREADS}",
            "--file_system_poll_wait_seconds=0", "--drain_timeout_seconds=2",
            f"--monitoring_config_file={MONITORING_FILE}"]
    if batching is not None:
        argv += ["--enable_batching", f"--batching_parameters_file={batching}"]
    return argv


def figures(run: Run, inproc: dict[str, Any], model: str) -> Figures:
    def thr(server: str, c: int) -> float:
        p = run.get(server, model, "grpc", c)
        return p.throughput if p else 0.0

    def p50(server: str, c: int) -> float:
        p = run.get(server, model, "grpc", c)
        return p.p50_us if p and p.throughput else 0.0

    by_batch = {r["batch"]: r for r in inproc[model]["results"]}
    return Figures(
        model=model,
        noop_rps_c32=thr("noop", 32), noop_p50_c1_us=p50("noop", 1), peer_rps_c32=thr("pytriton", 32),
        inprocess_rps_b32=by_batch[32]["inferences_per_s"], inprocess_call_p50_b1_us=by_batch[1]["call_p50_us"],
        server_rps_c32={m: thr(f"model-server-{m}", 32) for m in ("off", "on") if run.get(f"model-server-{m}", model, "grpc", 32)},
        server_p50_c1_us={m: p50(f"model-server-{m}", 1) for m in ("off", "on") if run.get(f"model-server-{m}", model, "grpc", 1)},
    )


def measure_model_server(run: Run, cfg: Path, mode: str, inproc: dict[str, Any], do_profile: bool,
                         batching_file: Path) -> None:
    g, r = free_port(), free_port()
    name = f"model-server-{mode}"
    log(f"{name}: starting")
    with running(name, model_server_argv(g, r, cfg, batching_file if mode == "on" else None), [g, r], server_env(TF_THREADS), timeout=240) as srv:
        time.sleep(2)  # the ports open before the models are AVAILABLE: wait for them
        wait_models(r)
        metrics_port = r if mode == "on" else None
        run.grpc(name, g, metrics_port=metrics_port)
        if run.rest:
            run.rest_load(name, r, metrics_port)
        if mode == "on":
            run.v2(f"{name}-v2", g, r, metrics_port)
        if not do_profile:
            return
        for m in MODEL_NAMES:  # profile what this mode misses, while it is running
            f = figures(run, inproc, m)
            for v in verdicts(f):
                # throughput misses are profiled with batching on, latency misses with it off
                wanted = "off" if v.target == "latency" else "on"
                if v.complete and mode == wanted and mode in v.reached and not v.met(mode):
                    c = 1 if v.target == "latency" else 32
                    if not any(p["model"] == m and p["server"] == name and p["concurrency"] == c for p in run.profiles):
                        run.profile(name, srv.pid, g, m, c, f"missed: {v.goal}")


def wait_ready_urls(urls: Sequence[str], timeout: float = 180.0) -> None:
    """Polls each URL until it answers 200 (Triton's per-model readiness)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout:.0f}s")
            time.sleep(0.5)


def wait_models(rest_port: int, timeout: float = 180.0) -> None:
    """Polls GET /v1/models/<name> until every model reports AVAILABLE."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    for m in MODEL_NAMES:
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOCALHOST}:{rest_port}/v1/models/{m}", timeout=5) as resp:
                    states = [v.get("state") for v in json.load(resp).get("model_version_status", [])]
                if "AVAILABLE" in states:
                    break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"model {m} not AVAILABLE within {timeout:.0f}s")
            time.sleep(0.5)


def write_report(path: Path, text: str) -> None:
    """RESULTS.md, with the operator-at-scale section (bench/operator_scale.py's figures) and every
    other section the other benchmarks wrote between their markers (`<!-- name -->` ...
    `<!-- /name -->`: rollouts, storage, front-end workers, ...) kept as they are."""
    scale = BENCH / "results" / "operator_scale.json"
    if scale.exists():
        text = with_operator_section(text, operator_section(json.loads(scale.read_text())))
    if path.exists():
        text = kept_sections(path.read_text(), text)
    path.write_text(text)


def kept_sections(old: str, new: str) -> str:
    """`new` with each marked section of `old` that `new` lacks (a benchmark run.py does not run)."""
    for m in re.finditer(r"<!-- ([a-z0-9-]+) -->.*?<!-- /\1 -->", old, re.DOTALL):
        start, end = f"<!-- {m.group(1)} -->", f"<!-- /{m.group(1)} -->"
        if start not in new:
            new = with_section(new, m.group(0), start, end)
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 32 only, short windows (~3 min)")
    parser.add_argument("--concurrency", help="comma-separated concurrencies (default 1,2,4,8,16,32,64)")
    parser.add_argument("--only", help="comma-separated parts: inprocess,noop,peer,off,on (default: all)")
    parser.add_argument("--no-rest", action="store_true", help="skip wrk over REST")
    parser.add_argument("--no-inprocess", action="store_true",
                        help="reuse the in-process figures of the last run (bench/results/latest.json)")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy profile of missed targets")
    parser.add_argument("--batching-file", default=str(BATCHING_FILE), help="batching parameters for 'on'")
    parser.add_argument("--skip-setup", action="store_true", help="do not run bench/setup.sh")
    parser.add_argument("--results", default=str(BENCH / "RESULTS.md"), help="where to write the report")
    parser.add_argument("--json", default=str(BENCH / "results" / "latest.json"), help="raw figures")
    parser.add_argument("--render-only", action="store_true",
                        help="only rewrite the report from the raw figures (--json) and bench/FINDINGS.md")
    args = parser.parse_args(argv)

    findings_file = BENCH / "FINDINGS.md"
    if args.render_only:
        saved = json.loads(Path(args.json).read_text())
        write_report(Path(args.results), render(saved, findings_file.read_text() if findings_file.exists() else ""))
        return 0
    started = time.monotonic()
    start_stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    if not args.skip_setup:
        subprocess.run(["bash", str(BENCH / "setup.sh")], check=True)
    models = ensure_models()
    cfg = model_config(models)
    cond_start = conditions()
    log(f"load average {cond_start['load']}; busy: {cond_start['busy'] or 'none'}")

    if args.concurrency:
        cs = [int(c) for c in args.concurrency.split(",")]
    else:
        cs = list(QUICK_CONCURRENCIES if args.quick else FULL_CONCURRENCIES)
    for needed in (1, 32):  # the targets need them
        if needed not in cs:
            cs.append(needed)
    cs.sort()
    settings = (Settings(window_ms=1000, max_trials=4, stability_pct=25, wrk_seconds=3) if args.quick
                else Settings(window_ms=1500, max_trials=5, stability_pct=20, wrk_seconds=4))
    parts = set((args.only or "inprocess,noop,peer,off,on").split(","))
    run = Run(cs, settings, rest=not args.no_rest)

    if args.no_inprocess and Path(args.json).exists():
        inproc = json.loads(Path(args.json).read_text())["inprocess"]
    else:
        inproc = run_inprocess(models, 1.0 if args.quick else 3.0)  # the targets always need it
    hot = run_hotpath(models) if "inprocess" in parts else {}

    failures: list[str] = []

    def part(name: str, fn: Callable[[], None]) -> None:
        """Runs one part; a server that does not start is reported, and the run goes on."""
        try:
            fn()
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as e:
            log(f"{name} failed: {e}")
            failures.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def noop() -> None:
        port = free_port()
        with running("noop", [str(MAIN_PY), str(BENCH / "noop_server.py"), "--port", str(port)], [port], server_env()):
            run.grpc("noop", port)

    def peer() -> None:
        g, h, mp = free_port(), free_port(), free_port()
        token = secrets.token_urlsafe(16)
        argv_peer = [str(PYTRITON_PY), str(BENCH / "pytriton_peer.py"), "--models", str(models), "--grpc-port", str(g),
                     "--http-port", str(h), "--metrics-port", str(mp), f"--token={token}", "--threads", str(TF_THREADS)]
        log("pytriton: starting")
        with running("pytriton", argv_peer, [g, h], server_env(TF_THREADS), timeout=240):
            wait_ready_urls([f"http://{LOCALHOST}:{h}/v2/models/{m}/ready" for m in MODEL_NAMES])
            run.grpc("pytriton", g, kind="triton", token=token)

    def noop_suspending() -> None:
        """What one suspension of a grpc.aio handler costs: the no-op server again, awaiting once
        (asyncio.sleep(0)) or hopping to a thread and back before it answers; c=1 and 32 only."""
        full = run.concurrencies
        run.concurrencies = [c for c in full if c in (1, 32)]
        try:
            for how in ("yield", "thread"):
                port = free_port()
                argv_n = [str(MAIN_PY), str(BENCH / "noop_server.py"), "--port", str(port), "--suspend", how]
                with running(f"noop-{how}", argv_n, [port], server_env()):
                    run.grpc(f"noop-{how}", port)
        finally:
            run.concurrencies = full

    if "noop" in parts:
        part("no-op server", noop)
        part("no-op server, suspending", noop_suspending)
    if "peer" in parts:
        part("PyTriton peer", peer)
    for mode in ("off", "on"):
        if mode in parts:
            part(f"model-server batching {mode}", lambda mode=mode: measure_model_server(  # type: ignore[misc]
                run, cfg, mode, inproc, not args.no_profile, Path(args.batching_file)))

    import importlib.metadata as md

    results: dict[str, Any] = {
        "command": "make bench" if not (args.quick or args.only or args.concurrency) else
        "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": start_stamp,
        "elapsed_s": time.monotonic() - started,
        "tf_version": md.version("tensorflow"),
        "conditions": {"cpus": cond_start["cpus"], "cpu_model": cond_start["cpu_model"], "mem_gib": cond_start["mem_gib"],
                       "load_start": cond_start["load"], "busy_start": cond_start["busy"],
                       "load_end": conditions()["load"]},
        "settings": settings.__dict__,
        "concurrencies": cs,
        "models": list(MODEL_NAMES),
        "batching_file": os.path.relpath(args.batching_file, ROOT),
        "batching_parameters": Path(args.batching_file).read_text(),
        "inprocess": inproc,
        "hotpath": hot,
        "points": [p.as_dict() for p in run.points],
        "verdicts": [v.as_dict() for m in MODEL_NAMES for v in verdicts(figures(run, inproc, m))],
        "profiles": run.profiles,
        "failures": failures,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    text = render(results, findings_file.read_text() if findings_file.exists() else "")
    write_report(Path(args.results), text)
    print_summary(results, print)
    log(f"wrote {args.results} and {args.json} in {results['elapsed_s'] / 60:.1f} min")
    return 0


def print_summary(results: dict[str, Any], out: Callable[[str], None]) -> None:
    out("\ntarget                                   off           on            met")
    for v in results["verdicts"]:
        hi = v["higher_is_better"]

        def f(m: str, v: dict[str, Any] = v, hi: bool = hi) -> str:
            x = v["reached"].get(m)
            return "-" if not x else (f"{x:,.0f}/s" if hi else f"{x / 1000:.2f} ms")

        thr = f"{v['threshold']:,.0f}/s" if hi else f"{v['threshold'] / 1000:.2f} ms"
        out(f"{v['model']:13} {v['target']:8} {thr:>14}   {f('off'):>12}  {f('on'):>12}  {','.join(v['met_by']) or 'NO'}")


if __name__ == "__main__":
    sys.exit(main())
