"""Renders one run's results (the JSON that bench/run.py saves) as bench/RESULTS.md."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SERVER_TITLES = {
    "noop": "no-op limit",
    "noop-yield": "no-op + one await",
    "noop-thread": "no-op + thread hop",
    "pytriton": "PyTriton (peer)",
    "model-server-off": "model-server, batching off",
    "model-server-on": "model-server, batching on",
    "model-server-on-v2": "model-server, batching on, v2 protocol",
}


def _find(points: Sequence[Mapping[str, Any]], server: str, model: str, protocol: str,
          c: int) -> Mapping[str, Any] | None:
    for p in points:
        if (p["server"], p["model"], p["protocol"], p["concurrency"]) == (server, model, protocol, c):
            return p
    return None


def _rps(p: Mapping[str, Any] | None) -> str:
    if p is None:
        return "–"
    if p["error"] and not p["throughput"]:
        return "error"
    mark = " ⚠" if p["error"] else ""
    return f"{p['throughput']:,.0f}{mark}"


def _lat(p: Mapping[str, Any] | None) -> str:
    if p is None or not p["throughput"]:
        return "–"
    return f"{p['p50_us'] / 1000:.2f} / {p['p95_us'] / 1000:.2f} / {p['p99_us'] / 1000:.2f}"


def _tables(points: Sequence[Mapping[str, Any]], model: str, protocol: str, servers: Sequence[str],
            concurrencies: Sequence[int]) -> list[str]:
    present = [s for s in servers if any(_find(points, s, model, protocol, c) for c in concurrencies)]
    if not present:
        return []
    head = "| concurrency | " + " | ".join(SERVER_TITLES.get(s, s) for s in present) + " |"
    sep = "|---:|" + "---:|" * len(present)
    out = ["Throughput (requests/s; batch-1 requests, so also inferences/s):", "", head, sep]
    for c in concurrencies:
        out.append(f"| {c} | " + " | ".join(_rps(_find(points, s, model, protocol, c)) for s in present) + " |")
    out += ["", "Latency p50 / p95 / p99 (ms):", "", head, sep]
    for c in concurrencies:
        out.append(f"| {c} | " + " | ".join(_lat(_find(points, s, model, protocol, c)) for s in present) + " |")
    batched = [s for s in present if any((_find(points, s, model, protocol, c) or {}).get("avg_batch")
                                         for c in concurrencies)]
    for s in batched:
        out += ["", f"Mean executed batch size, {SERVER_TITLES.get(s, s)} (from its metrics):", "",
                "| concurrency | " + " | ".join(str(c) for c in concurrencies) + " |",
                "|---|" + "---:|" * len(concurrencies),
                "| batch | " + " | ".join(f"{(_find(points, s, model, protocol, c) or {}).get('avg_batch', 0):.1f}"
                                          for c in concurrencies) + " |"]
    errs = [p for p in points if p["model"] == model and p["protocol"] == protocol and p["error"]]
    if errs:
        out += ["", "Measurement notes:"]
        out += [f"- {SERVER_TITLES.get(p['server'], p['server'])}, c={p['concurrency']}: {p['error']}" for p in errs]
    return out + [""]


def _fmt(v: float, higher: bool) -> str:
    return f"{v:,.0f}/s" if higher else f"{v / 1000:.2f} ms"


def render(r: Mapping[str, Any], findings: str = "") -> str:
    cs: list[int] = r["concurrencies"]
    models: list[str] = r["models"]
    cond = r["conditions"]
    L = [
        "# Benchmark results",
        "",
        f"Recorded by `{r['command']}` on {r['started']} (UTC), {r['elapsed_s'] / 60:.1f} minutes. "
        "All figures come from this one run, side by side on the same machine; compare ratios, not "
        "absolute numbers.",
        "",
        f"- Machine: {cond['cpus']} CPUs ({cond['cpu_model']}), {cond['mem_gib']:.0f} GiB; TensorFlow "
        f"{r['tf_version']} (CPU), 2 intra-op and 2 inter-op threads in every server and in-process.",
        f"- Load average (1/5/15 min) at start {cond['load_start']}, at end {cond['load_end']}. "
        f"Other busy processes at start: {cond['busy_start'] or 'none'}.",
        f"- Load: perf_analyzer 2.50 (`--service-kind=tfserving -i grpc`; PyTriton and model-server's v2 protocol: "
        "`--service-kind=triton`, model-server's with `-x 1` and `--shape`), "
        f"batch-1 requests, windows of {r['settings']['window_ms']} ms, up to {r['settings']['max_trials']} "
        f"windows until stable within {r['settings']['stability_pct']}%; wrk 4.1 over REST "
        f"(`{{\"instances\": [...]}}`), {r['settings']['wrk_seconds']} s per point. The load tool runs on the "
        "same 2 cores as the server.",
        f"- model-server batching on: `{r['batching_file']}`:",
        "",
        "```",
        r["batching_parameters"].strip(),
        "```",
        "",
    ]
    if r.get("failures"):
        L += ["**Parts that failed in this run:** " + "; ".join(r["failures"]), ""]
    L += [
        "## Targets (the project's, listed in bench/README.md)",
        "",
        "| model | target | goal | threshold | batching off | batching on | met |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for v in r["verdicts"]:
        hi = v["higher_is_better"]
        cells = [_fmt(v["reached"][m], hi) if m in v["reached"] and v["reached"][m] else "–" for m in ("off", "on")]
        met = ", ".join(f"yes (batching {m})" for m in v["met_by"]) or "**no**"
        if not v["complete"]:
            met = "n/a (a reference measurement failed)"
        L.append(f"| {v['model']} | {v['target']} | {v['goal']} | {_fmt(v['threshold'], hi)} | "
                 f"{cells[0]} | {cells[1]} | {met} |")
    L += ["", "## In-process limit (signature called directly, no server)", "",
          "| model | batch | calls/s | inferences/s | call p50 (µs) | call p99 (µs) |",
          "|---|---:|---:|---:|---:|---:|"]
    for m in models:
        for b in r["inprocess"].get(m, {}).get("results", []):
            L.append(f"| {m} | {b['batch']} | {b['calls_per_s']:,.0f} | {b['inferences_per_s']:,.0f} | "
                     f"{b['call_p50_us']:.0f} | {b['call_p99_us']:.0f} |")
    hot = r.get("hotpath") or {}
    if hot:
        steps = list(next(iter(hot.values())))
        L += ["", "## model-server's own steps per batch-1 Predict (µs, in-process, no transport; bench/hotpath.py)",
              "", "| model | " + " | ".join(steps) + " |", "|---|" + "---:|" * len(steps)]
        L += [f"| {m} | " + " | ".join(f"{hot[m][k]:.1f}" for k in steps) + " |" for m in models if m in hot]
        L += ["", "`model` is the server's signature call (its session's prepared callable), `signature call` "
              "TF2's keyword call on `tf.saved_model.load` (how the server called TF2 models before sessions); "
              "`predict()` is the whole transport-free Predict with the model run inline; `handler` the whole "
              "gRPC Predict handler with a model answering a constant, `batched handler` the same with 32 "
              "handlers at once through the Batcher (µs of event-loop CPU per request)."]
    servers = ["noop", "pytriton", "model-server-off", "model-server-on", "model-server-on-v2"]
    susp = [(m, s, c) for m in models for s in ("noop", "noop-yield", "noop-thread") for c in (1, 32)]
    if any(s != "noop" and _find(r["points"], s, m, "grpc", c) for m, s, c in susp):
        L += ["", "## What suspending a grpc.aio handler costs (no-op server, perf_analyzer)", "",
              "The no-op server answering at once, after one `await asyncio.sleep(0)`, and after a hop to a "
              "worker thread and back (what running a model off the event loop costs).", "",
              "| model | concurrency | no-op | + one await | + thread hop |", "|---|---:|---:|---:|---:|"]
        for m in models:
            for c in (1, 32):
                cells = []
                for s in ("noop", "noop-yield", "noop-thread"):
                    p = _find(r["points"], s, m, "grpc", c)
                    cells.append("–" if p is None or not p["throughput"] else
                                 f"{p['throughput']:,.0f}/s, p50 {p['p50_us'] / 1000:.2f} ms")
                L.append(f"| {m} | {c} | " + " | ".join(cells) + " |")
    L += ["", "## gRPC (perf_analyzer)", ""]
    for m in models:
        L += [f"### {m}", ""] + _tables(r["points"], m, "grpc", servers, cs)
    rest = _tables(r["points"], models[0], "rest", servers, cs) if models else []
    if rest:
        L += ["## REST (wrk, model-server)", ""]
        for m in models:
            L += [f"### {m}", ""] + _tables(r["points"], m, "rest", servers, cs)
    v2_http = _tables(r["points"], models[0], "http", servers, cs) if models else []
    if v2_http:
        L += ["## The v2 protocol over HTTP (perf_analyzer `--service-kind=triton -i http`, model-server)", ""]
        for m in models:
            L += [f"### {m}", ""] + _tables(r["points"], m, "http", servers, cs)
    if r.get("profiles"):
        L += ["## Profiles (py-spy on model-server under load, taken because a target was missed)", ""]
        L += [p["markdown"] for p in r["profiles"]]
    if findings.strip():
        L += ["## Analysis (hand-written: bench/FINDINGS.md)", "", findings.strip(), ""]
    L += ["## Reproduce", "", "`make bench` (about 15 minutes; `.venv/bin/python bench/run.py --quick` for a "
          "5-minute smoke run; `--render-only` rewrites this file from the raw figures). Raw figures: `bench/results/latest.json`. Run it on a quiet machine.", ""]
    return "\n".join(L)


# -- the operator at scale (bench/operator_scale.py) --
SECTION_START, SECTION_END = "<!-- operator-scale -->", "<!-- /operator-scale -->"


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f} s"


def _miss(phase: Mapping[str, Any], n: int) -> str:
    return "" if phase["converged"] == n else f" ({phase['converged']}/{n} converged)"


def operator_section(data: Mapping[str, Any]) -> str:
    """The "Operator at scale" section of RESULTS.md, from every labelled run."""
    L = [SECTION_START, "## Operator at scale (bench/operator_scale.py)", "",
         "N ModelDeployments created at once, then all updated at once, then a minute idle, against the local "
         "API server (its Deployment stand-in reports pods ready; no pods run) and the real operator "
         "(default flags, model status probes off). *Converged*: every one has its four children with the "
         "phase's spec and `status.observedGeneration` current; *Ready*: its Ready condition is True too. "
         "Requests: the operator's, from the API server's audit log, per ModelDeployment, until the "
         "operator fell quiet. CPU: seconds of the operator process and of the API server's own thread, "
         "measured apart. Goal (the project's target): 1,000 converge within 60 s, operator RSS < 300 MB, idle CPU < 5% "
         "of a core.", ""]
    for label, run in data.get("runs", {}).items():
        L += [f"### {label}: {run.get('note', '')}".rstrip(": "), "",
              f"Recorded {run['recorded']} (UTC) at commit `{run.get('commit', '?')}`; load average (1/5/15 min) "
              f"at start {run['load_start']}, at end {run['load_end']}; {run.get('cpus', '?')} CPUs.", "",
              "| N | create: converged | Ready | requests/MD | operator CPU | API server CPU | update: converged | "
              "requests/MD | operator CPU | API server CPU | idle: operator CPU | API server CPU | idle requests/s | "
              "operator peak RSS |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in run["results"]:
            c, u, i = r["create"], r["update"], r["idle"]
            L.append(f"| {r['n']:,} | {_s(c['seconds'])}{_miss(c, r['n'])} | {_s(c['ready_seconds'])} | {c['requests_per_md']:.1f} | "
                     f"{c['operator_cpu_s']:.1f} s | {c['api_cpu_s']:.1f} s | {_s(u['seconds'])}{_miss(u, r['n'])} | "
                     f"{u['requests_per_md']:.1f} | {u['operator_cpu_s']:.1f} s | {u['api_cpu_s']:.1f} s | "
                     f"{i['operator_cpu_pct']:.1f}% | {i['api_cpu_pct']:.1f}% | {i['requests_per_s']:.1f} | "
                     f"{r['operator_rss_peak_mb']:.0f} MB |")
        biggest = run["results"][-1] if run["results"] else None
        if biggest:
            L += ["", f"Requests at N={biggest['n']:,} (create phase): " + ", ".join(
                f"{k} {v / biggest['n']:.2f}" for k, v in biggest["create"]["requests_by_kind"].items()) + " per ModelDeployment."]
            sending = biggest["create"].get("api_cpu_sending_s")
            if sending is not None:
                L[-1] += (f" Of the API server's {biggest['create']['api_cpu_s']:.0f} s of CPU in that phase, "
                          f"{sending:.0f} s went by while the bench POSTed the {biggest['n']:,} ModelDeployments.")
        if run.get("findings"):
            L += ["", run["findings"].strip()]
        L.append("")
    L.append(SECTION_END)
    return "\n".join(L)


def with_operator_section(text: str, section: str) -> str:
    """`text` (RESULTS.md) with its operator section replaced by `section`, or added before Reproduce."""
    return with_section(text, section, SECTION_START, SECTION_END)


def with_section(text: str, section: str, start: str, end: str) -> str:
    """`text` (RESULTS.md) with the section between the markers `start` and `end` replaced by
    `section` (which carries the markers), or added before Reproduce."""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        marker = "## Reproduce"
        text = text.replace(marker, section + "\n\n" + marker, 1) if marker in text else text.rstrip() + "\n\n" + section + "\n"
    return text
