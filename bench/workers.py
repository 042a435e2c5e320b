"""Front-end workers (`--frontend_workers=N`, issue 24), measured side by side in one run.

Four servers run at once on 127.0.0.1 with free ports and are measured in alternating order
(reversed every other round), `--rounds` rounds, medians reported, on both models:

    single      model-server, one process (--frontend_workers=1), batching on
    workers2    model-server --frontend_workers=2 (a model process and two front-end workers), batching on
    pytriton    the peer (bench/pytriton_peer.py)
    noop        the no-op grpc.aio server (bench/noop_server.py)

perf_analyzer opens ONE gRPC connection for all its concurrency, and SO_REUSEPORT spreads
connections, not requests, over the workers: one client loads one worker. So concurrency 32 is
measured with K=1 client and with K=4 clients in parallel (concurrency 8 each; throughputs summed,
p50 the clients' median, p99 their maximum), against every server alike; concurrency 1 with one.

For model-server, the CPU time of every process of its tree (/proc/PID/stat utime+stime; workers
are the children whose command line runs modelserver.frontend) over each measurement,
divided by the requests its metrics counted (:tensorflow:serving:request_count) = CPU per request
per process. Once more with the load tool pinned apart (perf_analyzer on CPU 1, the server tree on
CPU 0). RSS and PSS (/proc/PID/smaps_rollup) after the load. From the per-request costs, a
projection to more cores (see `project`). The limit is 1/(1/noop + 1/inprocess_b32) (targets.py)
with the in-process figures of this run.

Writes bench/results/workers.json and the "Front-end workers" section of bench/RESULTS.md.

    .venv/bin/python bench/workers.py            # `make bench-workers`, about 6 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import (
    BENCH,
    LOCALHOST,
    MAIN_PY,
    PYTRITON_PY,
    ROOT,
    WORK,
    free_port,
    log,
    running,
    server_env,
    tool_env,
)
from load import Settings, parse_perf_csv, perf_analyzer_argv
from report import with_section
from run import (
    BATCHING_FILE,
    MODEL_NAMES,
    TF_THREADS,
    conditions,
    ensure_models,
    model_config,
    model_server_argv,
    run_inprocess,
    wait_models,
    wait_ready_urls,
)
from targets import LATENCY_FACTOR, setup_limit
from workers_report import MARK, section

RESULTS = BENCH / "results" / "workers.json"
SERVERS = ("single", "workers2", "pytriton", "noop")
CONCURRENCY, KS = 32, (1, 4)
PROJECT_CORES = (2, 8, 16)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- pure parts (tested in test_bench.py)

def stat_cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds (fields 14 and 15; the command name in
    parentheses may itself hold spaces, so count from its closing parenthesis)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def smaps_rollup_mb(text: str) -> dict[str, float]:
    """{"rss_mb", "pss_mb"} from /proc/PID/smaps_rollup (kB lines)."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[f"{key.lower()}_mb"] = int(rest.split()[0]) / 1024
    return out


def request_total(metrics: str) -> float:
    """Requests model-server counted: :tensorflow:serving:request_count summed over its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith(":tensorflow:serving:request_count{"))


def batch_totals(metrics: str, model: str) -> tuple[float, float]:
    """(executed batches, their summed sizes) for `model` from model-server's metrics."""
    vals = {"count": 0.0, "sum": 0.0}
    for line in metrics.splitlines():
        for kind in vals:
            if line.startswith(f"modelserver_batch_size_{kind}{{") and f'model="{model}"' in line:
                vals[kind] += float(line.rsplit(" ", 1)[1])
    return vals["count"], vals["sum"]


def combine(clients: Sequence[dict[str, float]]) -> dict[str, float]:
    """K parallel clients as one load: throughputs summed, the median of their p50s, the worst p99."""
    return {"throughput": sum(c["throughput"] for c in clients),
            "p50_us": statistics.median(c["p50_us"] for c in clients),
            "p99_us": max(c["p99_us"] for c in clients)}


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: float) -> dict[str, float]:
    """µs of CPU per request for each process present at both ends, and their total."""
    if requests <= 0:
        return {}
    out = {role: (after[role] - before[role]) / requests * 1e6 for role in after if role in before}
    out["total"] = sum(out.values())
    return out


def cpu_summary(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of the model (or single) process's, all workers' and the total CPU per
    request, and each round's split between the workers (which the kernel chose, by connection)."""
    def main_of(cpu: dict[str, float]) -> float:
        return cpu.get("model process", cpu.get("single process", 0.0))

    ps = [p for p in points if p.get("cpu_us")]
    split = [[round(v) for r, v in sorted(p["cpu_us"].items()) if r.startswith("worker ")] for p in ps]
    out: dict[str, Any] = {"process": med([main_of(p["cpu_us"]) for p in ps]),
                           "total": med([p["cpu_us"]["total"] for p in ps]), "rounds": len(ps),
                           "avg_batch": med([p.get("avg_batch", 0.0) for p in ps]),
                           "throughput": med([p["throughput"] for p in ps])}
    if any(split):
        out["workers"] = med([sum(w) for w in split])
        out["split"] = split
    return out


def project(cores: float, model_us: float, worker_us: float) -> dict[str, Any]:
    """Requests/s with `cores` cores for one model process and as many workers as fit.

    Workers scale as the cores left to them over their cost per request, until the model process's
    own cost saturates its core: T = min(W / w, 1 / m) with W = cores - T·m (the model process's
    share), hence T = min(cores / (w + m), 1 / m). The load tool is assumed elsewhere."""
    m, w = model_us / 1e6, worker_us / 1e6
    by_workers, by_model = cores / (w + m), 1 / m
    t = min(by_workers, by_model)
    return {"cores": cores, "throughput": t, "bound": "workers" if by_workers < by_model else "model process",
            "model_process_cores": t * m, "worker_cores": t * w}


def med(values: Sequence[float]) -> float:
    vals = [v for v in values if v]
    return statistics.median(vals) if vals else 0.0


# -- processes

def tree(pid: int) -> dict[str, int]:
    """role -> PID for a server and its descendants: "model process" (or "single process" when it
    has no workers), "worker 0".. (by PID), other children by their command name."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for t in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in t.read_text().split()]
    roles: dict[str, int] = {}
    workers = []
    for p in found[1:]:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "modelserver.frontend" in cmd or "modelserver.workers.frontend" in cmd:  # the entry's new and old name
            workers.append(p)
        else:
            roles[f"{Path(cmd.split(' ', 1)[0]).name} {p}"] = p
    roles["model process" if workers else "single process"] = pid
    for i, p in enumerate(sorted(workers)):
        roles[f"worker {i}"] = p
    return roles


def wait_for_children(pid: int, n: int, timeout: float) -> dict[str, int]:
    """tree(pid) once it holds `n` front-end workers."""
    deadline = time.monotonic() + timeout
    while True:
        roles = tree(pid)
        if sum(r.startswith("worker ") for r in roles) >= n or time.monotonic() > deadline:
            return roles
        time.sleep(0.1)


def cpu_of(roles: dict[str, int]) -> dict[str, float]:
    out = {}
    for role, p in roles.items():
        with contextlib.suppress(OSError):
            out[role] = stat_cpu_seconds(Path(f"/proc/{p}/stat").read_text())
    return out


def memory_of(roles: dict[str, int]) -> dict[str, dict[str, float]]:
    out = {}
    for role, p in roles.items():
        with contextlib.suppress(OSError):
            out[role] = smaps_rollup_mb(Path(f"/proc/{p}/smaps_rollup").read_text())
    return out


def pin(roles: dict[str, int], cpus: set[int]) -> None:
    """Every thread of every process in the tree onto `cpus`."""
    for p in roles.values():
        for t in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(t.name), cpus)


def scrape(rest_port: int) -> str:
    url = f"http://{LOCALHOST}:{rest_port}/monitoring/prometheus/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def clients(port: int, model: str, concurrency: int, k: int, settings: Settings, kind: str = "tfserving",
            token: str | None = None, cpu: int | None = None) -> dict[str, Any]:
    """K perf_analyzer processes at once (concurrency/K each), bounded in time, stopped by PID."""
    limit = 60 + settings.window_ms * settings.max_trials / 1000 * 2
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        procs = []
        for i in range(k):
            argv = perf_analyzer_argv(port, model, concurrency // k, kind, Path(tmp) / f"{i}.csv", settings, token)
            if cpu is not None:
                argv = ["taskset", "-c", str(cpu), *argv]
            with open(Path(tmp) / f"{i}.log", "wb") as out:
                procs.append(subprocess.Popen(argv, env=tool_env(), stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + limit
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        figs, errors = [], []
        for i, p in enumerate(procs):
            try:
                figs.append(parse_perf_csv((Path(tmp) / f"{i}.csv").read_text()))
            except (OSError, ValueError, KeyError):
                tail = (Path(tmp) / f"{i}.log").read_text(errors="replace").strip().splitlines()[-1:]
                errors.append(f"client {i}: exit {p.returncode} {' '.join(tail)}")
    if errors:
        return {"throughput": 0.0, "p50_us": 0.0, "p99_us": 0.0, "error": "; ".join(errors)}
    return {**combine(figs), "clients": [round(f["throughput"]) for f in figs], "error": ""}


# -- the run

class Bench:
    def __init__(self, settings: Settings, rounds: int) -> None:
        self.settings = settings
        self.rounds = rounds
        self.points: list[dict[str, Any]] = []
        self.ports: dict[str, tuple[int, int | None]] = {}  # server -> (gRPC port, metrics port)
        self.pids: dict[str, int] = {}
        self.token = secrets.token_urlsafe(16)

    def start(self, stack: contextlib.ExitStack, models: Path) -> None:
        cfg = model_config(models)
        for name, n in (("single", 1), ("workers2", 2)):
            g, r = free_port(), free_port()
            argv = [*model_server_argv(g, r, cfg, BATCHING_FILE), f"--frontend_workers={n}"]
            self.pids[name] = stack.enter_context(running(f"workers-{name}", argv, [g, r], server_env(TF_THREADS),
                                                          timeout=240)).pid
            self.ports[name] = (g, r)
        g, h, mp = free_port(), free_port(), free_port()
        argv = [str(PYTRITON_PY), str(BENCH / "pytriton_peer.py"), "--models", str(models), "--grpc-port", str(g),
                "--http-port", str(h), "--metrics-port", str(mp), f"--token={self.token}", "--threads", str(TF_THREADS)]
        self.pids["pytriton"] = stack.enter_context(running("workers-pytriton", argv, [g, h],
                                                            server_env(TF_THREADS), timeout=240)).pid
        self.ports["pytriton"] = (g, None)
        g = free_port()
        self.pids["noop"] = stack.enter_context(running("workers-noop", [str(MAIN_PY), str(BENCH / "noop_server.py"),
                                                                         "--port", str(g)], [g], server_env())).pid
        self.ports["noop"] = (g, None)
        for name in ("single", "workers2"):
            wait_models(self.ports[name][1])  # type: ignore[arg-type]
        wait_ready_urls([f"http://{LOCALHOST}:{h}/v2/models/{m}/ready" for m in MODEL_NAMES])

    def measure(self, server: str, model: str, c: int, k: int, rnd: int, pinned: bool = False) -> dict[str, Any]:
        port, metrics = self.ports[server]
        kind, token = ("triton", self.token) if server == "pytriton" else ("tfserving", None)
        roles = tree(self.pids[server]) if metrics else {}
        text0 = scrape(metrics) if metrics else ""
        cpu0, t0 = cpu_of(roles), time.monotonic()
        p = clients(port, model, c, k, self.settings, kind, token, cpu=1 if pinned else None)
        cpu1, wall = cpu_of(roles), time.monotonic() - t0
        point = {"server": server, "model": model, "c": c, "k": k, "round": rnd, "pinned": pinned, **p}
        if metrics:
            text1 = scrape(metrics)
            reqs = request_total(text1) - request_total(text0)
            (b0, n0), (b1, n1) = batch_totals(text0, model), batch_totals(text1, model)
            point["avg_batch"] = round((n1 - n0) / (b1 - b0), 1) if b1 > b0 else 0.0
            point.update(requests=reqs, wall_s=round(wall, 2), cpu_us=cpu_per_request(cpu0, cpu1, reqs),
                         cores={r: round((cpu1[r] - cpu0[r]) / wall, 2) for r in cpu1 if r in cpu0})
        log(f"r{rnd} {server:9} {model:13} c={c:<2} K={k}{' pinned' if pinned else ''}: {p['throughput']:8,.0f}/s "
            f"p50 {p['p50_us'] / 1000:5.2f} ms p99 {p['p99_us'] / 1000:5.2f} ms "
            + (f"cpu/req {point['cpu_us'].get('total', 0):.0f} us" if metrics else "") + (f" {p['error']}" if p["error"] else ""))
        self.points.append(point)
        return point

    def rounds_of_load(self) -> None:
        loads = [(CONCURRENCY, k) for k in KS] + [(1, 1)]
        for rnd in range(self.rounds):
            order = SERVERS if rnd % 2 == 0 else SERVERS[::-1]
            for model in MODEL_NAMES:
                for c, k in loads:
                    for server in order:
                        self.measure(server, model, c, k, rnd)

    def pinned(self) -> None:
        """K=4 on half_plus_two with perf_analyzer on CPU 1 and the server tree on CPU 0."""
        everything = set(range(os.cpu_count() or 1))
        for server in ("single", "workers2"):
            roles = tree(self.pids[server])
            pin(roles, {0})
            try:
                self.measure(server, MODEL_NAMES[0], CONCURRENCY, KS[-1], 0, pinned=True)
            finally:
                pin(roles, everything)


def pick(points: Sequence[dict[str, Any]], **kw: Any) -> list[dict[str, Any]]:
    return [p for p in points if all(p.get(k) == v for k, v in kw.items())]


def summarize(points: Sequence[dict[str, Any]], inproc: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds; limits, ratios and goals; CPU per request; the projection."""
    out: dict[str, Any] = {}
    for model in MODEL_NAMES:
        figs: dict[str, Any] = {}
        for s in SERVERS:
            for c, k in [(CONCURRENCY, k) for k in KS] + [(1, 1)]:
                ps = [p for p in pick(points, server=s, model=model, c=c, k=k, pinned=False) if p["throughput"]]
                figs.setdefault(s, {})[f"c{c}_k{k}"] = {
                    f: med([p[f] for p in ps]) for f in ("throughput", "p50_us", "p99_us")} | {"n": len(ps)}
        by_batch = {r["batch"]: r for r in inproc[model]["results"]}
        goals: dict[str, Any] = {}
        for k in KS:
            key = f"c{CONCURRENCY}_k{k}"
            limit = setup_limit(figs["noop"][key]["throughput"], by_batch[32]["inferences_per_s"])
            peer = figs["pytriton"][key]["throughput"]
            goals[key] = {"limit": limit, "peer": peer} | {
                s: {"vs_peer": figs[s][key]["throughput"] / peer if peer else 0.0,
                    "vs_limit": figs[s][key]["throughput"] / limit if limit else 0.0} for s in ("single", "workers2")}
        latency_budget = LATENCY_FACTOR * (figs["noop"]["c1_k1"]["p50_us"] + by_batch[1]["call_p50_us"])
        cpu: dict[str, Any] = {}
        for s in ("single", "workers2"):
            for k in KS:
                ps = pick(points, server=s, model=model, c=CONCURRENCY, k=k, pinned=False)
                cpu.setdefault(s, {})[f"k{k}"] = cpu_summary(ps)
            pp = pick(points, server=s, model=model, pinned=True)
            if pp:
                cpu[s][f"k{KS[-1]}_pinned"] = cpu_summary(pp)
        w2 = cpu["workers2"][f"k{KS[-1]}"]
        m_us, w_us = w2["process"], w2.get("workers", 0.0)
        projection = [project(n, m_us, w_us) for n in PROJECT_CORES] if m_us and w_us else []
        out[model] = {"servers": figs, "goals": goals, "latency_budget_us": latency_budget,
                      "inprocess": {"b1_call_p50_us": by_batch[1]["call_p50_us"],
                                    "b32_inferences_per_s": by_batch[32]["inferences_per_s"]},
                      "cpu_us": cpu, "projection": {"model_us": m_us, "workers_us": w_us, "cores": projection}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window-ms", type=int, default=1000, help="perf_analyzer window; 3 windows per point")
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from results/workers.json")
    ap.add_argument("--notes", help="with --render-only: a Markdown file of notes on that run, kept in the JSON")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads(RESULTS.read_text())
        saved["summary"] = summarize(saved["points"], saved["inprocess"])
        if args.notes:
            saved["notes"] = Path(args.notes).read_text()
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
        write_section(section(saved))
        return 0
    started = time.monotonic()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    cond = conditions()
    result: dict[str, Any] = {
        "recorded": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=10).stdout.strip()),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")), ""),
        "server_changes": subprocess.run(["git", "status", "--porcelain", "server_image"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.split("\n")[:-1],
        "load_start": cond["load"], "busy_start": cond["busy"], "rounds": args.rounds,
        "settings": {"window_ms": args.window_ms, "windows": 3, "concurrency": CONCURRENCY, "ks": list(KS)},
        "batching_parameters": BATCHING_FILE.read_text(),
    }
    log(f"load average {cond['load']}; busy: {cond['busy'] or 'none'}")
    models = ensure_models()
    inproc = run_inprocess(models, 1.0)
    bench = Bench(Settings(window_ms=args.window_ms, max_trials=3, stability_pct=1000), args.rounds)
    with contextlib.ExitStack() as stack:
        log("starting the four servers")
        bench.start(stack, models)
        bench.rounds_of_load()
        result["memory"] = {s: memory_of(tree(bench.pids[s])) for s in ("single", "workers2")}
        if (os.cpu_count() or 1) >= 2:
            bench.pinned()
    result.update(load_end=conditions()["load"], elapsed_s=round(time.monotonic() - started),
                  inprocess=inproc, points=bench.points, summary=summarize(bench.points, inproc))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    text = section(result)
    write_section(text)
    print(text)
    log(f"wrote {RESULTS} and bench/RESULTS.md in {result['elapsed_s'] / 60:.1f} min")
    return 0


def write_section(text: str) -> None:
    path = BENCH / "RESULTS.md"
    path.write_text(with_section(path.read_text(), text, *MARK))


if __name__ == "__main__":
    sys.exit(main())
