"""A real Prometheus (the Debian `prometheus` binary) scraping the local cluster's pods.

It scrapes every ready pod whose template marks it for scraping with the classic annotations
(`prometheus.io/scrape: "true"`, `prometheus.io/port`, `prometheus.io/path`), at the pod's host port
for that container port, every `scrape_interval` (1 s by default). Targets come from a file_sd file
rewritten (atomically) whenever a pod's readiness, ports or annotations change; each target carries
the labels Prometheus' Kubernetes discovery gives with the usual relabelling: `namespace`, `pod`,
`container`, and every pod label with its name sanitized (so `serving_modeldeploy_io_model_deployment`,
the ModelDeployment's name, exactly as the Helm chart's PodMonitor keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from localcluster import processes
from localcluster.client import Client
from localcluster.endpoints import host_ports
from localcluster.objects import Obj, annotations_of, labels_of, name_of, namespace_of, pod_ready, terminating

log = logging.getLogger("localcluster.prometheus")
BINARY = "prometheus"


def sanitize(label: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def scrape_target(pod: Obj) -> Obj | None:
    """The file_sd entry for a pod, or None when it is not (or not yet) to be scraped."""
    ann = annotations_of(pod)
    if ann.get("prometheus.io/scrape") != "true" or not pod_ready(pod) or terminating(pod):
        return None
    mapping = host_ports(pod)
    containers = (pod.get("spec") or {}).get("containers") or []
    wanted = ann.get("prometheus.io/port")
    port, container = None, ""
    for c in containers:
        for p in c.get("ports") or []:
            if wanted is None or str(p.get("containerPort")) == wanted or p.get("name") == wanted:
                port, container = int(p["containerPort"]), c["name"]
                break
        if port is not None:
            break
    if port is None or port not in mapping:
        return None
    labels = {sanitize(k): v for k, v in labels_of(pod).items()}
    labels.update({"namespace": namespace_of(pod), "pod": name_of(pod), "container": container,
                   "__metrics_path__": ann.get("prometheus.io/path", "/metrics"),
                   "__scheme__": ann.get("prometheus.io/scheme", "http")})
    return {"targets": [f"127.0.0.1:{mapping[port]}"], "labels": labels}


def scrape_targets(pods: list[Obj]) -> list[Obj]:
    return [t for t in (scrape_target(p) for p in sorted(pods, key=lambda p: (namespace_of(p), name_of(p)))) if t]


def config(targets_file: Path, interval: float, extra_static: dict[str, str] | None = None) -> Obj:
    """prometheus.yml: the pods from file_sd; optionally static jobs (job -> host:port)."""
    every = f"{interval:g}s"
    jobs: list[Obj] = [{"job_name": "kubernetes-pods", "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "30s"}]}]
    for job, target in sorted((extra_static or {}).items()):
        jobs.append({"job_name": job, "static_configs": [{"targets": [target]}]})
    return {"global": {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every}, "scrape_configs": jobs}


class PrometheusServer:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, workdir: Path, log_file: Path,
                 interval: float = 1.0, static_jobs: dict[str, str] | None = None):
        self.client, self.loop, self.workdir, self.log_file = client, loop, workdir, log_file
        self.interval, self.static_jobs = interval, static_jobs or {}
        self.targets_file = workdir / "targets.json"
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self._unsubscribe = lambda: None
        self._pending: asyncio.TimerHandle | None = None
        self._written: Any = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if os.access(f"/usr/bin/{BINARY}", os.X_OK) else None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60) -> None:
        binary = self.binary()
        if binary is None:
            raise FileNotFoundError("the prometheus binary is not installed (Debian package `prometheus`: `make setup` as root installs it)")
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_targets()
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config(self.targets_file, self.interval, self.static_jobs), sort_keys=False))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        argv = [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=6h", "--log.level=warn"]
        self.proc = await processes.spawn(argv, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, self.workdir, self.log_file)
        self._unsubscribe = self.client.subscribe({("", "pods")}, self._on_pod, self.loop)
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while self.loop.time() < deadline:
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"prometheus exited with {self.proc.returncode}; see {self.log_file}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.url}/-/ready", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {timeout:g}s; see {self.log_file}")

    def _on_pod(self, etype: str, plural: str, pod: Obj) -> None:
        if self._pending is None:  # coalesce a burst of pod events into one rewrite
            self._pending = self.loop.call_later(0.05, self._write_targets)

    def _write_targets(self) -> None:
        self._pending = None
        targets = scrape_targets(self.client.list("", "pods"))
        if targets == self._written:
            return
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=1))
        os.replace(tmp, self.targets_file)
        self._written = targets

    async def stop(self) -> None:
        self._unsubscribe()
        if self._pending is not None:
            self._pending.cancel()
        if self.proc is not None:
            await processes.stop(self.proc, 10)
