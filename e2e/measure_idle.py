"""What the idle local cluster costs: `python e2e/measure_idle.py [SECONDS] [MODELS_DIR]`.

Starts `python -m localcluster` with the canary example (state in a temporary directory, models
from MODELS_DIR, default demo_models/), waits for its printed lines, then samples /proc for
SECONDS (default 60) without sending any traffic: CPU (% of one core) and RSS of the cluster
process, the operator, Prometheus, and, apart, the model servers. Stops the cluster at the end.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))
from e2e_support import LocalRun  # noqa: E402


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                pass
    return out


def _sample(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return cpu, rss


def _role(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    words = cmd.split()
    if " operator " in f" {cmd} ":
        return "operator"
    if any(w.endswith("/model-server") for w in words[:2]):
        return "model-server"
    if words and words[0].endswith("prometheus"):
        return "prometheus"
    return cmd[:40]


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    models = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "demo_models").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        run = LocalRun(Path(tmp) / "state", ["--mount", f"/models={models}"], Path(tmp) / "err.log").start()
        try:
            started = time.monotonic()
            run.wait_printed(600)
            print(f"printed its lines {time.monotonic() - started:.1f} s after start")
            assert run.proc is not None
            pids = {run.proc.pid: "cluster (API, controllers, agent, proxies)", **{p: _role(p) for p in _children(run.proc.pid)}}
            before = {p: _sample(p) for p in pids}
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            after = {p: _sample(p) for p in pids}
        finally:
            run.stop()
    total_cpu = total_rss = 0.0
    for p, role in pids.items():
        cpu = (after[p][0] - before[p][0]) / elapsed * 100
        rss = after[p][1] / 1024
        print(f"{role:45s} {cpu:5.2f}% of a core  {rss:7.1f} MB")
        if role != "model-server":
            total_cpu, total_rss = total_cpu + cpu, total_rss + rss
    print(f"{'the local cluster, model servers excluded':45s} {total_cpu:5.2f}% of a core  {total_rss:7.1f} MB  (over {elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
