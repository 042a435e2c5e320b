"""The activator as a real process (`python -m modeldeploy.activator` on loopback), for the
activator's tests, the local cluster and the e2e scenarios: its HTTP API as small methods."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import requests
from support import stop_process, wait_for


class ActivatorProcess:
    def __init__(self, workdir: Path, token: str = "", port: int = 0):
        self.workdir = workdir
        self.wanted_port = port
        self.port_file = workdir / "activator.port"
        self.log_path = workdir / "activator.log"
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ActivatorProcess:
        args = [sys.executable, "-m", "modeldeploy.activator", "--bind=127.0.0.1", f"--admin-port={self.wanted_port}",
                "--advertise-address=127.0.0.1", f"--port-file={self.port_file}"]
        if self.token:
            (self.workdir / "token").write_text(self.token)
            args.append(f"--token-file={self.workdir / 'token'}")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.port_file.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 "the activator's port file")
        assert self.proc.poll() is None, self.log_path.read_text()
        self.port = int(self.port_file.read_text())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def put(self, namespace: str, name: str, endpoints: list[dict[str, Any]], max_held: int = 100,
            hold_timeout: float = 60) -> dict[str, Any]:
        r = requests.put(f"{self.url}/v1/targets/{namespace}/{name}", headers=self._headers(), timeout=10,
                         json={"maxHeldRequests": max_held, "holdTimeoutSeconds": hold_timeout, "endpoints": endpoints})
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def target(self, namespace: str, name: str) -> dict[str, Any]:
        r = requests.get(f"{self.url}/v1/targets", headers=self._headers(), timeout=10)
        r.raise_for_status()
        return next(t for t in r.json()["targets"] if (t["namespace"], t["name"]) == (namespace, name))

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=10).text

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
