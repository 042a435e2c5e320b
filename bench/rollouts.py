"""The rollout-judgement benchmark (`make bench-rollouts`): repeated progressive rollouts on the local
cluster under steady load, judged by the operator from its Prometheus, and how often each kind of
new version is rolled back.

Four versions of one model, built here, with the same cost per request but for the slow one:
1 and 2 are healthy and identical in cost, 3 is 50% slower per request (more iterations of the same
loop), 4 answers INVALID_ARGUMENT to 5% of the requests (those with x = 0; the load sends x drawn
from 0..19). Two client threads send unlabelled REST predictions through the Service the whole time.

- healthy rollouts: stable 1 -> 2 -> 1 -> ... (each a full rollout); goal: none rolled back;
- slow: stable -> 3, then back; errors: stable -> 4, then back; goal: every one rolled back.

For each rollout: its verdict (Succeeded or Failed, with the reason), the seconds from the spec
change to the verdict, and the answers the new version gave until then (counted by the clients from
each answer's X-Model-Version). The same run also judges every healthy check window by the rule the
operator used before (the new p99 against 1.2 x the old p99, read from `modelserver_request_duration_
seconds`, whose buckets are 2-2.5x apart) so the two rules are compared on the same traffic.

    python bench/rollouts.py [--healthy 20] [--slow 10] [--errors 10] [--out bench/results/rollouts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))  # the local cluster's runner and client helpers (e2e_support)

NS, NAME, MODEL = "default", "judge", "judge"
ROLLOUT = {"steps": [50, 100], "stepSeconds": 8,
           "analysis": {"intervalSeconds": 4, "minRequests": 100, "failureThreshold": 2}}


# -- the models --
def build_models(out: Path, target_ms: float = 4.0) -> dict[int, int]:
    """Versions 1-4 under out/judge/; returns the loop iterations of each (calibrated to about
    `target_ms` per call on this machine)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    m = tf.constant(tf.random.stateless_normal([64, 64], seed=[1, 2]) / 8.0)

    def loop(n: int):  # type: ignore[no-untyped-def]
        return tf.function(lambda: tf.while_loop(lambda i, a: i < n, lambda i, a: (i + 1, tf.tanh(tf.matmul(a, m))),
                                                 (tf.constant(0), m))[1])

    probe = loop(1000)
    probe()
    t0 = time.perf_counter()
    for _ in range(5):
        probe()
    per_iter_ms = (time.perf_counter() - t0) / 5 / 1000 * 1000
    base = max(10, int(target_ms / per_iter_ms))
    iterations = {1: base, 2: base, 3: int(base * 1.5), 4: base}

    class Model(tf.Module):
        def __init__(self, n: int, refuse_zero: bool) -> None:
            super().__init__()
            self.n, self.refuse_zero = n, refuse_zero
            self.m = tf.Variable(m)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):  # type: ignore[no-untyped-def]
            _, a = tf.while_loop(lambda i, a: i < self.n, lambda i, a: (i + 1, tf.tanh(tf.matmul(a, self.m))),
                                 (tf.constant(0), self.m))
            y = x * 0.5 + 2.0 + 0.0 * tf.reduce_sum(a)
            if self.refuse_zero:
                with tf.control_dependencies([tf.debugging.assert_none_equal(x, 0.0, message="x = 0 refused")]):
                    y = tf.identity(y)
            return {"y": y}

    for version, n in iterations.items():
        module = Model(n, refuse_zero=version == 4)
        tf.saved_model.save(module, str(out / MODEL / str(version)), signatures={"serving_default": module.predict})
    return iterations


# -- the load --
class Traffic:
    """Threads sending unlabelled predictions back to back; each answer's version, with its time."""

    def __init__(self, url: str, threads: int = 2) -> None:
        self.url, self.threads = url, threads
        self.answers: list[tuple[float, int, int]] = []  # (time, version or -1, HTTP status)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        import requests

        rng = random.Random(seed)
        session = requests.Session()
        while not self._stop.is_set():
            try:
                r = session.post(self.url, json={"instances": [float(rng.randrange(20))]}, timeout=30)
                row = (time.monotonic(), int(r.headers.get("X-Model-Version", -1)), r.status_code)
            except requests.RequestException:
                row = (time.monotonic(), -1, 0)
            with self._lock:
                self.answers.append(row)

    def __enter__(self) -> Traffic:
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(35)

    def count(self, version: int, since: float, until: float) -> int:
        with self._lock:
            return sum(1 for t, v, _s in self.answers if since <= t <= until and v == version)


# -- one rollout --
def roll(cluster: Any, to: int, timeout: float = 300) -> dict[str, Any]:
    gen = cluster.patch_spec(NS, NAME, {"versionLabels": {"stable": to}})
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        st = ((cluster.md(NS, NAME) or {}).get("status") or {}).get("rollout") or {}
        if st.get("toVersion") == to and st.get("generation") == gen and st.get("phase") in ("Succeeded", "Failed"):
            return {**st, "seconds": time.monotonic() - t0, "t0": t0, "t1": time.monotonic()}
        time.sleep(0.25)
    raise TimeoutError(f"rollout to {to}: no verdict in {timeout:g}s: {json.dumps((cluster.md(NS, NAME) or {}).get('status'))}")


def back_to(cluster: Any, stable: int) -> None:
    """Move stable back after a rollback (the spec still names the rolled-back version) and wait
    until the table in force and the status agree."""
    cluster.patch_spec(NS, NAME, {"versionLabels": {"stable": stable}})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = (cluster.md(NS, NAME) or {}).get("status") or {}
        if not st.get("rollout") and (st.get("routing") or {}).get("labels", {}).get("stable") == stable:
            return
        time.sleep(0.25)
    raise TimeoutError("stable did not go back")


def old_rule_failed(prometheus: str, window_end: float, new: int, old: int, window_s: int = 10) -> bool | None:
    """The rule before: new p99 > 1.2 x old p99 from the coarse histogram, at a time in the past."""
    import requests

    def p99(version: int) -> float | None:
        q = (f'histogram_quantile(0.99, sum by (le) (rate(modelserver_request_duration_seconds_bucket'
             f'{{namespace="{NS}",serving_modeldeploy_io_model_deployment="{NAME}",version="{version}",'
             f'api="predict"}}[{window_s}s])))')
        r = requests.get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": window_end}),
                         timeout=10).json()
        result = (r.get("data") or {}).get("result") or []
        try:
            v = float(result[0]["value"][1])
        except (IndexError, KeyError, ValueError):
            return None
        return None if v != v else v

    a, b = p99(new), p99(old)
    if a is None or b is None:
        return None
    return a > 1.2 * b


def latency_reason(r: dict[str, Any]) -> str:
    return str((((r.get("analysis") or {}).get("metrics") or {}).get("latency") or {}).get("reason", ""))


# -- the run --
def summarize(kind: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [r for r in rows if r["phase"] == "Failed"]
    secs = [r["seconds"] for r in rows]
    reqs = [r["answers"] for r in rows]
    return {"kind": kind, "rollouts": len(rows), "rolledBack": len(failed),
            "rate": len(failed) / len(rows) if rows else None,
            "reasons": sorted({r.get("reason", "") for r in failed}),
            "secondsMedian": statistics.median(secs) if secs else None, "secondsMax": max(secs, default=None),
            "answersMedian": statistics.median(reqs) if reqs else None, "answersMax": max(reqs, default=None)}


ROLLOUT_START, ROLLOUT_END = "<!-- rollout-judgement -->", "<!-- /rollout-judgement -->"


def section(out: dict[str, Any]) -> str:
    """The "Rollout judgement" section of RESULTS.md, from one run's JSON."""
    r = out["rollout"]
    L = [ROLLOUT_START, "## Rollout judgement (bench/rollouts.py, `make bench-rollouts`)", "",
         f"Run {out['when']}: repeated progressive rollouts on the local cluster (steps {r['steps']}, "
         f"stepSeconds {r['stepSeconds']}, checks every {r['analysis']['intervalSeconds']} s over 10 s windows, "
         f"minRequests {r['analysis']['minRequests']}, failureThreshold {r['analysis']['failureThreshold']}, "
         "defaults otherwise: maxLatencyRatio 1.2, minLatencyDeltaMs 1, maxErrorRate 0.01, confidence 0.99) under "
         "two closed-loop REST clients, of versions built by the bench: healthy (the same cost as stable), 50% "
         "slower per request, or answering 5% errors. Goal: no healthy version rolled back, every bad one rolled "
         "back. Seconds: from the spec change to the verdict; answers: what the new version answered until then.",
         "", "| versions | rollouts | rolled back | rate | median s to verdict | max s | median answers |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    for row in out["summary"]:
        L.append(f"| {row['kind']} | {row['rollouts']} | {row['rolledBack']} | {(row['rate'] or 0):.0%} | "
                 f"{row['secondsMedian'] or 0:.1f} | {row['secondsMax'] or 0:.1f} | {row['answersMedian'] or 0:,.0f} |")
    b = out["oldRuleOnHealthyWindows"]
    L += ["", f"The rule before (the new p99 against 1.2x the old p99, read from `modelserver_request_duration_seconds` "
          f"buckets 2-2.5x apart, no test), asked of the same healthy rollouts' check windows: "
          f"{b['failedByOldRule']} of {b['windows']} checks failed. Requests that failed in transport or with a "
          f"5xx during the run: {out['transportFailures']}."]
    if out.get("note"):
        L += ["", out["note"]]
    L += ["", ROLLOUT_END]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    from e2e_support import MD_API, Cluster, LocalRun, wait_local_ready

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--healthy", type=int, default=20)
    ap.add_argument("--slow", type=int, default=10)
    ap.add_argument("--errors", type=int, default=10)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollouts.json")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md",
                    help="the RESULTS.md whose Rollout judgement section this run replaces ('' : none)")
    ap.add_argument("--note", default="", help="a paragraph for the section (what else this run showed)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rollouts-"))
    iterations = build_models(work / "models")
    print(f"models: loop iterations per call {iterations}", flush=True)
    run = LocalRun(work / "state", ["--no-example", "--mount", f"/models={work / 'models'}"], work / "localcluster.log").start()
    rows: dict[str, list[dict[str, Any]]] = {"healthy": [], "slow": [], "errors": []}
    old_rule: list[bool | None] = []
    try:
        info = wait_local_ready(run)
        cluster = Cluster(Path(info["kubeconfig"]), local=info)
        cluster.create({"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": NAME, "namespace": NS},
                        "spec": {"model": {"name": MODEL, "storage": {"hostPath": {"path": f"/models/{MODEL}"}},
                                           "versions": [1, 2, 3, 4]},
                                 "versionLabels": {"stable": 1}, "warmup": {"generate": {"batchSizes": [1]}},
                                 "resources": {"cpu": "1", "memory": "1Gi"}, "replicas": 1, "rollout": ROLLOUT}})
        deadline = time.monotonic() + 180
        while not any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in ((cluster.md(NS, NAME) or {}).get("status") or {}).get("conditions") or []):
            if time.monotonic() > deadline:
                raise TimeoutError("the ModelDeployment did not become Ready")
            time.sleep(0.5)
        # the Service's own port, not the Service-name HTTP proxy: urllib3 sends through an HTTP proxy
        # without TCP_NODELAY, and the body then waits ~40 ms for the delayed ACK of the head, inside
        # the server's measured latency
        url = f"{cluster.service_url(NS, NAME)}/v1/models/{MODEL}:predict"
        with Traffic(url) as traffic:
            time.sleep(15)  # a baseline for both versions' series
            stable = 1
            plan = ([("healthy", None)] * args.healthy + [("slow", 3)] * args.slow + [("errors", 4)] * args.errors)
            for i, (kind, target) in enumerate(plan):
                to = (2 if stable == 1 else 1) if target is None else target
                r = roll(cluster, to)
                r["answers"] = traffic.count(to, r["t0"], r["t1"])
                rows[kind].append(r)
                print(f"{i + 1:3d}/{len(plan)} {kind:8s} {stable} -> {to}: {r['phase']:9s} {r.get('reason', ''):12s} "
                      f"{r['seconds']:5.1f} s, {r['answers']} answers of v{to}; {r.get('message', '')[:120]}; "
                      f"latency: {latency_reason(r)}", flush=True)
                if kind == "healthy" and r["phase"] == "Succeeded":
                    checks = [r["t0"] + k for k in range(12, int(r["seconds"]), 4)]
                    old_rule += [old_rule_failed(info["prometheus"], time.time() - (time.monotonic() - t), to, stable)
                                 for t in checks]
                    stable = to
                elif r["phase"] == "Failed":
                    back_to(cluster, stable)
                else:
                    stable = to
            failures = sum(1 for _t, v, s in traffic.answers if s not in (200, 400))
    finally:
        run.stop()
    summary = [summarize(k, v) for k, v in rows.items()]
    judged = [x for x in old_rule if x is not None]
    baseline = {"windows": len(judged), "failedByOldRule": sum(judged),
                "rate": (sum(judged) / len(judged)) if judged else None}
    out = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rollout": ROLLOUT, "iterations": iterations,
           "summary": summary, "oldRuleOnHealthyWindows": baseline, "transportFailures": failures,
           "rollouts": {k: [{**{key: r.get(key) for key in ("phase", "reason", "seconds", "answers", "message")},
                            "latency": latency_reason(r)} for r in v]
                        for k, v in rows.items()}}
    out["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    if str(args.results):
        from report import with_section

        args.results.write_text(with_section(args.results.read_text(), section(out), ROLLOUT_START, ROLLOUT_END))
    print("\nkind      rollouts  rolled back  rate   median s  max s  median answers")
    for s in summary:
        print(f"{s['kind']:9s} {s['rollouts']:8d} {s['rolledBack']:12d} {s['rate'] or 0:5.0%} "
              f"{s['secondsMedian'] or 0:9.1f} {s['secondsMax'] or 0:6.1f} {s['answersMedian'] or 0:15.0f}")
    print(f"the old rule (p99 ratio 1.2 on the coarse buckets) on the same healthy windows: "
          f"{baseline['failedByOldRule']} of {baseline['windows']} checks failed")
    print(f"requests that failed in transport or with 5xx: {failures}")
    print(f"written to {args.out}")
    healthy, slow, errors = summary
    ok = healthy["rolledBack"] == 0 and slow["rolledBack"] == slow["rollouts"] and errors["rolledBack"] == errors["rollouts"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
