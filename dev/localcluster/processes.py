"""Child processes of the local cluster: started in their own session, stopped by their PID.

Every child runs in a new session (so a Ctrl-C in the terminal reaches only the cluster, which then
stops its children in order) and with the parent-death signal set to SIGKILL (so that even a
`kill -9` of the cluster leaves no pod, operator or Prometheus behind). Stopping sends SIGTERM to
the child's process group, waits up to the grace period, then sends SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from pathlib import Path

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup() -> None:  # runs in the child between fork and exec: async-signal-safe calls only
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn(argv: list[str], env: dict[str, str], cwd: str | Path, log: Path) -> asyncio.subprocess.Process:
    """Start `argv`, stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup,
        )


def signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the child's process group (the child and anything it started), by the child's PID."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def stop(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM, up to `grace` seconds, then SIGKILL; the exit status."""
    if proc.returncode is None:
        signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), max(0.0, grace))
        except TimeoutError:
            signal_group(proc, signal.SIGKILL)
    code = await proc.wait()
    # Whatever the child left in its group goes too (a server's helper processes).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return code
