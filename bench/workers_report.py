"""The "Front-end workers" section of bench/RESULTS.md, from bench/results/workers.json
(what bench/workers.py measures)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from targets import LATENCY_FACTOR, LIMIT_SHARE, PEER_FACTOR

MARK = ("<!-- frontend-workers -->", "<!-- /frontend-workers -->")
TITLES = {"single": "model-server, 1 process", "workers2": "model-server, `--frontend_workers=2`",
          "pytriton": "PyTriton (peer)", "noop": "no-op server"}
OURS = ("single", "workers2")


def _rps(v: float) -> str:
    return f"{v:,.0f}" if v else "–"


def _ms(v: float) -> str:
    return f"{v / 1000:.2f}" if v else "–"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _throughput_table(s: Mapping[str, Any], ks: list[int], c: int) -> list[str]:
    head = "| server | " + " | ".join(f"c={c}, K={k}: req/s | p50 / p99 ms" for k in ks) + " | c=1: p50 ms |"
    out = [head, "|---|" + "---:|---:|" * len(ks) + "---:|"]
    for name, f in s["servers"].items():
        cells = [f"{_rps(f[f'c{c}_k{k}']['throughput'])} | {_ms(f[f'c{c}_k{k}']['p50_us'])} / "
                 f"{_ms(f[f'c{c}_k{k}']['p99_us'])}" for k in ks]
        out.append(f"| {TITLES.get(name, name)} | " + " | ".join(cells) + f" | {_ms(f['c1_k1']['p50_us'])} |")
    limits = "".join(f"{_rps(s['goals'][f'c{c}_k{k}']['limit'])} | | " for k in ks)
    out.append(f"| limit 1/(1/no-op + 1/in-process b32) | {limits}|")
    return out


def _goal_lines(model: str, s: Mapping[str, Any], ks: list[int], c: int) -> list[str]:
    out = []
    for k in ks:
        g = s["goals"][f"c{c}_k{k}"]
        for srv in OURS:
            r = g[srv]
            out.append(f"| {model} | K={k} | {TITLES[srv]} | {r['vs_peer']:.2f}× ({_met(r['vs_peer'] >= PEER_FACTOR)}) | "
                       f"{r['vs_limit']:.0%} ({_met(r['vs_limit'] >= LIMIT_SHARE)}) |")
    return out


def _cpu_rows(model: str, s: Mapping[str, Any]) -> list[str]:
    out = []
    for srv in OURS:
        for key, cpu in s["cpu_us"].get(srv, {}).items():
            if not cpu.get("rounds"):
                continue
            label = key.replace("k", "K=").replace("_pinned", ", pinned apart")
            workers = f"{cpu['workers']:.0f}" if "workers" in cpu else "–"
            split = ", ".join(" / ".join(str(v) for v in w) for w in cpu.get("split", [])) or "–"
            out.append(f"| {model} | {TITLES[srv]} | {label} | {_rps(cpu['throughput'])} | {cpu['avg_batch'] or '–'} | "
                       f"{cpu['process']:.0f} | {workers} | {split} | {cpu['total']:.0f} |")
    return out


def _memory(r: Mapping[str, Any]) -> list[str]:
    out = ["| server | process | RSS MB | PSS MB |", "|---|---|---:|---:|"]
    for srv, procs in r.get("memory", {}).items():
        for role, m in procs.items():
            out.append(f"| {TITLES[srv]} | {role} | {m.get('rss_mb', 0):.0f} | {m.get('pss_mb', 0):.0f} |")
        out.append(f"| {TITLES[srv]} | **total** | {sum(m.get('rss_mb', 0) for m in procs.values()):.0f} | "
                   f"{sum(m.get('pss_mb', 0) for m in procs.values()):.0f} |")
    return out


def _projection(r: Mapping[str, Any], c: int, k: int) -> list[str]:
    out = ["| model | model process µs/req | workers µs/req | cores | projected req/s | bound by | "
           "model process cores | worker cores | measured here: 1 process / 2 workers |",
           "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for model, s in r["summary"].items():
        p = s["projection"]
        here = " / ".join(_rps(s["servers"][srv][f"c{c}_k{k}"]["throughput"]) for srv in OURS)
        for row in p["cores"]:
            out.append(f"| {model} | {p['model_us']:.0f} | {p['workers_us']:.0f} | {row['cores']} | "
                       f"{row['throughput']:,.0f} | {row['bound']} | {row['model_process_cores']:.2f} | "
                       f"{row['worker_cores']:.2f} | {here if row['cores'] == r['nproc'] else ''} |")
    return out


def section(r: Mapping[str, Any]) -> str:
    st = r["settings"]
    c, ks = st["concurrency"], st["ks"]
    k = ks[-1]
    L = [MARK[0], "## Front-end workers (bench/workers.py)", "",
         "model-server as one process and with `--frontend_workers=2` (a model process and two front-end worker "
         "processes sharing the ports with SO_REUSEPORT), both with batching on (`bench/batching_parameters.txt`), "
         "beside PyTriton and the no-op server: all four running at once, measured in alternating order "
         f"(reversed every other round), {r['rounds']} rounds, medians. perf_analyzer batch-1 gRPC, "
         f"{st['windows']} windows of {st['window_ms']} ms per point. perf_analyzer opens one connection for all "
         "its concurrency, and the kernel spreads connections, not requests, over the workers: so "
         f"concurrency {c} is measured with K=1 client and with K={k} clients at once ({c // k} each; "
         "throughputs summed, p50 the clients' median, p99 their worst), against every server alike.", "",
         f"Recorded {r['recorded']} (UTC) at commit `{r['commit']}`"
         + (f" (with uncommitted changes to {len(r['server_changes'])} file(s) under server_image/)"
            if r.get("server_changes") else "") + f", {r['elapsed_s'] / 60:.1f} minutes; "
         f"`nproc` {r['nproc']}, {r['cpu_model']}; load average (1/5/15 min) at start {r['load_start']}, at end "
         f"{r['load_end']}. No GPU: TensorFlow on the CPU, 2 intra-op and 2 inter-op threads. The load tool "
         "shares the cores with the servers.", ""]
    for model, s in r["summary"].items():
        ip = s["inprocess"]
        L += [f"### {model}", "", f"In-process: batch 32 {ip['b32_inferences_per_s']:,.0f} inferences/s, batch-1 "
              f"call p50 {ip['b1_call_p50_us']:.0f} µs.", ""] + _throughput_table(s, ks, c) + [""]
        budget = s["latency_budget_us"]
        lat = ", ".join(f"{TITLES[srv]} {_ms(s['servers'][srv]['c1_k1']['p50_us'])} ms "
                        f"({_met(0 < s['servers'][srv]['c1_k1']['p50_us'] <= budget)})" for srv in OURS)
        L += [f"c=1 p50 goal ≤ {LATENCY_FACTOR:g}× (no-op p50 + in-process call) = {_ms(budget)} ms: {lat}.", ""]
    L += ["### Goals at concurrency 32", "",
          f"| model | clients | server | vs peer (goal ≥ {PEER_FACTOR:g}×) | vs limit (goal ≥ {LIMIT_SHARE:.0%}) |",
          "|---|---|---|---:|---:|"]
    for model, s in r["summary"].items():
        L += _goal_lines(model, s, ks, c)
    L += ["", f"### CPU per request (µs of CPU time per request, c={c})", "",
          "Each process's utime+stime (`/proc/PID/stat`) over the measurement divided by the requests the "
          "server's metrics counted in it (`:tensorflow:serving:request_count`), medians over the rounds; a "
          "worker's figure is its CPU over *all* requests, so the process and workers columns add up to the total "
          "(in each round: medians of different rounds need not). Which worker gets a connection is the kernel's "
          "choice (SO_REUSEPORT hashes it), so each round's split is shown. Mean batch: executed batch size from "
          "the server's metrics. *Pinned apart*: perf_analyzer on CPU 1 "
          "(`taskset -c 1`), every thread of the server's processes on CPU 0 (half_plus_two).", "",
          "| model | server | clients | req/s | mean batch | model (or single) process | workers | "
          "each round: worker 0 / worker 1 | total |",
          "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for model, s in r["summary"].items():
        L += _cpu_rows(model, s)
    L += ["", "### Memory after the load (`/proc/PID/smaps_rollup`)", ""] + _memory(r)
    L += ["", "### Projection to more cores", "",
          f"From the K={k} per-request costs of `--frontend_workers=2`, with the clients on other machines: "
          "workers scale as the cores left to them over their cost per request, until the model process's "
          "own cost per request saturates its core: throughput ≤ min(W / w, 1 / m), W = cores − the model "
          "process's share (throughput × m), so throughput = min(cores / (w + m), 1 / m). It assumes the "
          "per-request costs stay as measured here (at higher rates batches grow, which lowers m) and that the "
          "model process's cost is one core's work (its TensorFlow threads can run beside its event loop, "
          "so it is pessimistic for heavy models). One process cannot follow: its request handling is one "
          "event loop on one core.", ""] + _projection(r, c, k)
    if r.get("notes"):
        L += ["", r["notes"].strip()]
    L += ["", "`make bench-workers` (about 6 minutes) reruns this section; raw figures in "
          "`bench/results/workers.json`.", MARK[1]]
    return "\n".join(L)
