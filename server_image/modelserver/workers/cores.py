"""How many front-end workers `--frontend_workers=auto` starts: from the CPUs this container may
use, which is its cgroup's CPU quota (what Kubernetes sets from the pod's CPU limit), not the
node's core count, and never more than the CPUs it may be scheduled on (its affinity)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
MAX_AUTO_WORKERS = 16


def cpu_quota(root: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None
    when it has none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if q <= 0 or p <= 0 else q / p
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def auto_workers(cpus: int) -> int:
    """The rule behind `auto` (docs/performance.md has the measurements): one process on 1 or 2
    CPUs, where two workers measured 0.8-1.0x one process (the split costs 25-60% more CPU per
    request, and one event loop already has most of a core); from 3 CPUs, one worker per CPU
    left after one for the model process (at most MAX_AUTO_WORKERS), where the measured costs
    project that workers serve more than one process can."""
    if cpus <= 2:
        return 1
    return min(cpus - 1, MAX_AUTO_WORKERS)


def frontend_worker_count(text: str, root: Path = CGROUP) -> int:
    """--frontend_workers: a positive number, or auto; ValueError otherwise."""
    text = text.strip().lower()
    if text == "auto":
        return auto_workers(usable_cpus(root))
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--frontend_workers must be a number or auto, not {text!r}") from None
    if n < 1:
        raise ValueError(f"--frontend_workers must be at least 1, not {n}")
    return n
