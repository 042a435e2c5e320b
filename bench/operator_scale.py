"""The operator at scale: N ModelDeployments created at once, updated at once, then left idle.

`make bench` runs it after the server benchmark (`bench/operator_scale.py`; `--sizes 100,300,1000`);
`bench/test_bench.py` runs a quick variant (N=20) in `make test`. For each N, against the local
cluster's API server (`localcluster.fakeapi.FakeKubeAPI`, with its Deployment stand-in reporting
pods ready; no pods run) and the real operator (`modeldeploy operator`, a subprocess, default
flags except `--model-status-url=`: no model servers run here):

1. **create**: N ModelDeployments POSTed as fast as the API server takes them (8 client threads);
   the time until every one has its four children and `status.observedGeneration` current
   (and, apart, until every one is Ready);
2. **update**: a spec change of all N at once (a second version, a label, 2 replicas): the time
   until every ConfigMap and Deployment shows it and `observedGeneration` is current again;
3. **idle**: a minute (`--idle-seconds`) with nothing changing.

Reported per N and phase: seconds, API requests per ModelDeployment (the API server's own audit
log, the operator's user agents only: kopf's and ours), CPU seconds of the operator process and of
the API server's thread (measured apart, so that the side that limits is visible), the operator's
peak RSS, and the load average. The figures go to `bench/results/operator_scale.json` under a
label (`--label before|after|...`), and the "Operator at scale" section of `bench/RESULTS.md` is
rewritten from all labelled runs.

Every process is started here, bound to 127.0.0.1 and stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "e2e"))
sys.path.insert(0, str(BENCH))

from common import LOGS, log  # noqa: E402
from localcluster.fakeapi import FakeKubeAPI  # noqa: E402
from report import operator_section, with_operator_section  # noqa: E402

GROUP, VERSION, PLURAL = "serving.modeldeploy.io", "v1alpha1", "modeldeployments"
NAMESPACE = "scale"
OPERATOR_AGENTS = ("kopf/", "modeldeploy-operator/")
CHILD_RESOURCES = {("", "configmaps"), ("apps", "deployments"), ("", "services"), ("policy", "poddisruptionbudgets")}
OWNER_LABEL = "serving.modeldeploy.io/model-deployment"
JSON_FILE = BENCH / "results" / "operator_scale.json"
RESULTS_FILE = BENCH / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def md_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"model": {"storage": {"pvc": {"claimName": "models", "subPath": name}}, "versions": [1]},
                 "versionLabels": {"stable": 1}, "resources": {"cpu": "1", "memory": "1Gi"}},
    }


UPDATE = {"spec": {"model": {"versions": [1, 2]}, "versionLabels": {"stable": 1, "canary": 2}, "replicas": 2}}


# -- what the API server's watchers see: a tracker fed by the fake's in-process subscription --
@dataclass
class MdState:
    generation: int = 0
    observed: int = 0
    ready: bool = False
    children: set[str] = field(default_factory=set)
    replicas: int = 0
    models_config: str = ""


class Tracker:
    """Follows every ModelDeployment and child through the API server's own change feed (no HTTP),
    and notes when each one first meets the phase's goal."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, MdState] = {}
        self.phase = ""
        self.goal: Any = None
        self.converged: dict[str, float] = {}
        self.ready: dict[str, float] = {}

    def start_phase(self, phase: str, goal: Any) -> None:
        with self.lock:
            self.phase, self.goal = phase, goal
            self.converged, self.ready = {}, {}
            for name in list(self.state):
                self._check(name, time.monotonic())

    def on_event(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != NAMESPACE or etype == "DELETED":
            return
        now = time.monotonic()
        with self.lock:
            if plural == PLURAL:
                s = self.state.setdefault(meta["name"], MdState())
                st = obj.get("status") or {}
                s.generation, s.observed = int(meta.get("generation") or 0), int(st.get("observedGeneration") or 0)
                s.ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
                self._check(meta["name"], now)
                return
            owner = (meta.get("labels") or {}).get(OWNER_LABEL)
            if not owner:
                return
            s = self.state.setdefault(owner, MdState())
            s.children.add(plural)
            if plural == "deployments":
                s.replicas = int((obj.get("spec") or {}).get("replicas") or 0)
            elif plural == "configmaps":
                s.models_config = (obj.get("data") or {}).get("models.config", "")
            self._check(owner, now)

    def _check(self, name: str, now: float) -> None:
        s = self.state[name]
        if self.goal is None or not self.goal(s):
            return
        self.converged.setdefault(name, now)
        if s.ready:
            self.ready.setdefault(name, now)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.converged), len(self.ready)

    def last(self) -> tuple[float | None, float | None]:
        with self.lock:
            return max(self.converged.values(), default=None), max(self.ready.values(), default=None)


def created(s: MdState) -> bool:
    return s.generation >= 1 and s.observed == s.generation and s.children >= {p for _, p in CHILD_RESOURCES}


def updated(s: MdState) -> bool:
    return created(s) and s.generation >= 2 and s.replicas == 2 and "versions: 2" in s.models_config


# -- measuring processes and threads --
def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds of one thread of this process (the fake API server's event loop)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    """One N: the API server, the operator, the tracker; `measure()` runs the three phases."""

    def __init__(self, n: int, workdir: Path, idle_seconds: float, timeout: float, operator_args: list[str]):
        self.n, self.workdir, self.idle_seconds, self.timeout = n, workdir, idle_seconds, timeout
        self.operator_args = operator_args
        self.fake = FakeKubeAPI()
        self.tracker = Tracker()
        self.operator: subprocess.Popen[bytes] | None = None
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="tracker", daemon=True)
        self._audit_mark = 0
        self.operator_log = LOGS / f"operator-scale-{n}.log"

    # -- set-up and tear-down --
    def __enter__(self) -> Bench:
        self.fake.start()
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            self.fake.apply_yaml(crd.read_text())
        self.fake.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        self.fake.add_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": NAMESPACE},
                              "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
        self._loop_thread.start()
        self.fake.subscribe({(GROUP, PLURAL), *CHILD_RESOURCES}, self.tracker.on_event, self.loop)
        kubeconfig = self.fake.write_kubeconfig(self.workdir / "kubeconfig")
        LOGS.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "modeldeploy.cli", "operator", "--metrics-port", "0", "--health-port", "0",
               "--bind", "127.0.0.1", "--model-status-url=", *self.operator_args]
        with self.operator_log.open("wb") as out:
            self.operator = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait(lambda: any(a.verb == "watch" and a.resource == PLURAL for a in self.fake.audit()), 120, "the operator's watch")
        time.sleep(1.0)  # its other watches start in the same breath
        return self

    def __exit__(self, *exc: object) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(5)
        self.fake.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(5)
        self.loop.close()

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.operator is not None and self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.operator.returncode}; see {self.operator_log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout:.0f}s")
            time.sleep(0.1)

    # -- the client side: many requests at once --
    def _requests(self, method: str, bodies: list[tuple[str, dict[str, Any]]], content_type: str) -> None:
        import requests

        local = threading.local()

        def send(item: tuple[str, dict[str, Any]]) -> None:
            session = getattr(local, "session", None)
            if session is None:
                session = local.session = requests.Session()
                session.headers.update({"User-Agent": "bench/operator-scale", "Content-Type": content_type})
            name, body = item
            base = f"{self.fake.url}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
            url = base if method == "POST" else f"{base}/{name}"
            resp = session.request(method, url, data=json.dumps(body), timeout=60)
            if resp.status_code >= 300:
                raise RuntimeError(f"{method} {name}: {resp.status_code} {resp.text[:200]}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, bodies))

    # -- the phases --
    def _operator_requests(self) -> Counter[str]:
        audit = self.fake.audit()
        new, self._audit_mark = audit[self._audit_mark:], len(audit)
        return Counter(f"{a.verb} {a.resource}{'/' + a.subresource if a.subresource else ''}"
                       for a in new if a.userAgent.startswith(OPERATOR_AGENTS))

    def _phase(self, name: str, goal: Any, act: Any) -> dict[str, Any]:
        assert self.operator is not None
        self._operator_requests()
        cpu0, api0, t0 = proc_cpu(self.operator.pid), thread_cpu(self.fake._thread), time.monotonic()  # type: ignore[arg-type]
        load0 = load_average()
        self.tracker.start_phase(name, goal)
        act()
        sent, api_sending = time.monotonic() - t0, thread_cpu(self.fake._thread) - api0  # type: ignore[arg-type]
        deadline = t0 + self.timeout
        while time.monotonic() < deadline and self.tracker.counts()[1] < self.n:
            if self.operator.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.operator.returncode}; see {self.operator_log}")
            time.sleep(0.2)
        converged_at, ready_at = self.tracker.last()
        done, ready = self.tracker.counts()
        # What the operator still does after the last one converged (status refreshes) counts too:
        # wait until it is quiet for 2 s (or 30 s have passed).
        self._settle()
        reqs = self._operator_requests()
        out: dict[str, Any] = {
            "sent_s": sent, "api_cpu_sending_s": api_sending,  # the client's own N requests (and what ran meanwhile)
            "converged": done, "ready": ready,
            "seconds": (converged_at - t0) if converged_at and done == self.n else None,
            "ready_seconds": (ready_at - t0) if ready_at and ready == self.n else None,
            "requests": sum(reqs.values()), "requests_per_md": sum(reqs.values()) / self.n,
            "requests_by_kind": dict(reqs.most_common()),
            "operator_cpu_s": proc_cpu(self.operator.pid) - cpu0,
            "api_cpu_s": thread_cpu(self.fake._thread) - api0,  # type: ignore[arg-type]
            "wall_s": time.monotonic() - t0,
            "load_start": load0, "load_end": load_average(),
        }
        log(f"N={self.n} {name}: {out['seconds'] and round(out['seconds'], 1)} s to converge ({done}/{self.n}), "
            f"ready {out['ready_seconds'] and round(out['ready_seconds'], 1)} s, {out['requests_per_md']:.1f} requests/MD, "
            f"operator CPU {out['operator_cpu_s']:.1f} s, API server CPU {out['api_cpu_s']:.1f} s, load {out['load_end']}")
        return out

    def _settle(self, quiet: float = 2.0, limit: float = 30.0) -> None:
        end = time.monotonic() + limit
        seen, since = len(self.fake.audit()), time.monotonic()
        while time.monotonic() < end:
            time.sleep(0.25)
            now_seen = len([a for a in self.fake.audit()[seen:] if a.userAgent.startswith(OPERATOR_AGENTS) and a.verb != "watch"])
            if now_seen:
                seen, since = len(self.fake.audit()), time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def _idle(self) -> dict[str, Any]:
        assert self.operator is not None
        self._operator_requests()
        cpu0, api0, t0 = proc_cpu(self.operator.pid), thread_cpu(self.fake._thread), time.monotonic()  # type: ignore[arg-type]
        load0 = load_average()
        time.sleep(self.idle_seconds)
        wall = time.monotonic() - t0
        reqs = self._operator_requests()
        out: dict[str, Any] = {
            "seconds": wall,
            "operator_cpu_pct": 100 * (proc_cpu(self.operator.pid) - cpu0) / wall,
            "api_cpu_pct": 100 * (thread_cpu(self.fake._thread) - api0) / wall,  # type: ignore[arg-type]
            "requests": sum(reqs.values()), "requests_per_s": sum(reqs.values()) / wall,
            "requests_by_kind": dict(reqs.most_common()),
            "load_start": load0, "load_end": load_average(),
        }
        log(f"N={self.n} idle {wall:.0f} s: operator {out['operator_cpu_pct']:.1f}% of a core, API server "
            f"{out['api_cpu_pct']:.1f}%, {out['requests_per_s']:.1f} requests/s")
        return out

    def measure(self) -> dict[str, Any]:
        assert self.operator is not None
        names = [f"m{i:04d}" for i in range(self.n)]
        create = self._phase("create", created, lambda: self._requests("POST", [(n, md_body(n)) for n in names], "application/json"))
        update = self._phase("update", updated, lambda: self._requests("PATCH", [(n, UPDATE) for n in names], "application/merge-patch+json"))
        idle = self._idle()
        return {"n": self.n, "create": create, "update": update, "idle": idle,
                "operator_rss_peak_mb": proc_peak_rss_mb(self.operator.pid)}


def run_sizes(sizes: list[int], idle_seconds: float, timeout: float, operator_args: list[str]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp, Bench(n, Path(tmp), idle_seconds, timeout, operator_args) as b:
            out.append(b.measure())
    return out


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,300,1000", help="comma-separated numbers of ModelDeployments")
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--timeout", type=float, default=300.0, help="longest wait for one phase to converge")
    p.add_argument("--label", default="latest", help="the name of this run in the report (e.g. before, after)")
    p.add_argument("--note", default="", help="a line describing this run")
    p.add_argument("--operator-arg", action="append", default=[], help="extra `modeldeploy operator` argument")
    p.add_argument("--json", type=Path, default=JSON_FILE)
    p.add_argument("--results", type=Path, default=RESULTS_FILE)
    p.add_argument("--render-only", action="store_true", help="only rewrite the section of --results from --json")
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    if not args.render_only:
        load_start, commit = load_average(), git_commit()
        log(f"operator scale: sizes {args.sizes}, load average {load_start}")
        results = run_sizes([int(s) for s in args.sizes.split(",")], args.idle_seconds, args.timeout, args.operator_arg)
        previous = data["runs"].get(args.label) or {}
        data["runs"][args.label] = {
            "recorded": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"), "commit": commit,
            "note": args.note or previous.get("note", ""), "findings": previous.get("findings", ""),
            "load_start": load_start, "load_end": load_average(), "cpus": os.cpu_count(), "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    text = args.results.read_text() if args.results.exists() else "# Benchmark results\n"
    args.results.write_text(with_operator_section(text, operator_section(data)))
    log(f"wrote {args.json} and the operator section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
