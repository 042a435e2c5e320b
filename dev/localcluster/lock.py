"""One local cluster per state directory: an flock on `<state>/lock`, and `<state>/run.json` saying
who holds it (pid, KUBECONFIG, addresses) so that a second `make run` can say so clearly.

The kernel drops the flock when the holding process ends, however it ends, so a crashed run never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any


class AlreadyRunning(Exception):
    def __init__(self, info: dict[str, Any]):
        self.info = info
        pid = info.get("pid", "?")
        kubeconfig = info.get("kubeconfig", "")
        super().__init__(f"a local cluster is already running from this state directory (pid {pid}"
                         + (f", KUBECONFIG={kubeconfig}" if kubeconfig else "")
                         + f"); stop it with Ctrl-C in its terminal or `kill {pid}`")


class StateLock:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.lock_file = state_dir / "lock"
        self.info_file = state_dir / "run.json"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning (with what the holder recorded)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(self.holder()) from None
        self._fd = fd
        self.record({"pid": os.getpid(), "starting": True})

    def holder(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    def record(self, info: dict[str, Any]) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, self.info_file)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.info_file.unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
