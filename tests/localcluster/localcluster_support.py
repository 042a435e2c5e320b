"""Helpers for the local cluster's tests: the cluster in a background thread, and workloads whose
pods run tests/localcluster/podserver.py (a real process that the tests steer through files)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from localcluster.cluster import ClusterConfig, LocalCluster
from localcluster.fakeapi import FakeKubeAPI
from localcluster.objects import SERVICE_PORTS_ANNOTATION, controller_uid, pod_ready, terminating
from support import wait_for

PODSERVER = Path(__file__).resolve().parent / "podserver.py"
KUBECTL = Path(sys.executable).parent / "kubectl"


class ThreadCluster:
    """A LocalCluster (API server, controllers, node agent, Service proxy; no operator or
    Prometheus unless asked) on an event loop in a background thread."""

    def __init__(self, state_dir: Path, **config: Any):
        config.setdefault("operator", False)
        config.setdefault("prometheus", False)
        config.setdefault("crash_backoff_seconds", 1.0)
        self.cluster = LocalCluster(ClusterConfig(state_dir=state_dir, **config))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="localcluster", daemon=True)
        self._started = threading.Event()
        self._done: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.cluster.start())
            self._done = self.loop.create_future()
            self._started.set()
            self.loop.run_until_complete(self._done)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._started.set()
        finally:
            self.loop.run_until_complete(self.cluster.stop())
            self.loop.close()

    def __enter__(self) -> ThreadCluster:
        self._thread.start()
        self._started.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._done is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._done.set_result, None)
        self._thread.join(120)
        assert not self._thread.is_alive(), "the local cluster did not stop"

    @property
    def api(self) -> FakeKubeAPI:
        assert self.cluster.api is not None
        return self.cluster.api

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the cluster's loop (for what must happen there) and return its result."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def apply(self, *objs: dict) -> None:
        for o in objs:
            self.api.add_object(o)

    def pods(self, app: str, namespace: str = "default", include_terminating: bool = False) -> list[dict]:
        return [p for p in self.api.list_objects("", "pods", namespace)
                if (p["metadata"].get("labels") or {}).get("app") == app and (include_terminating or not terminating(p))]

    def ready_pods(self, app: str, n: int) -> list[dict] | None:
        pods = self.pods(app)
        return pods if len(pods) == n and all(pod_ready(p) for p in pods) else None

    def service_url(self, name: str, port: str = "http", namespace: str = "default") -> str:
        svc = wait_for(lambda: (s := self.api.get("", "services", namespace, name)) and
                       (s["metadata"].get("annotations") or {}).get(SERVICE_PORTS_ANNOTATION) and s, f"service {name} ports")
        return f"http://127.0.0.1:{json.loads(svc['metadata']['annotations'][SERVICE_PORTS_ANNOTATION])[port]}"

    def kubectl(self, *args: str, check: bool = True) -> str:
        import subprocess

        env = dict(os.environ, KUBECONFIG=str(self.cluster.kubeconfig))
        p = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {p.stderr}")
        return p.stdout + p.stderr


def container(name: str = "app", port: int = 8080, env: dict[str, str] | None = None, **extra: Any) -> dict:
    spec: dict[str, Any] = {
        "name": name, "image": "podserver:test", "command": [sys.executable, str(PODSERVER)], "args": [f"--port={port}"],
        "ports": [{"name": "http", "containerPort": port}],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        # Thresholds above 1 and 2 s timeouts: a stall of the (shared, 2-core) machine is no probe failure.
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3, "timeoutSeconds": 2},
    }
    spec.update(extra)
    return spec


def deployment(name: str, replicas: int = 1, containers: list[dict] | None = None, volumes: list[dict] | None = None,
               strategy: dict | None = None, grace: int = 5, **spec: Any) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": strategy or {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": containers or [container()], "volumes": volumes or [],
                                  "terminationGracePeriodSeconds": grace}},
            **spec,
        },
    }


def service(name: str, target: str = "http") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}}


def get(url: str, timeout: float = 5) -> requests.Response:
    return requests.get(url, timeout=timeout)


def alive(pid: int) -> bool:
    """Whether `pid` is still a podserver process (not a zombie, not reused)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return state != "Z" and b"podserver.py" in cmd


def owned(objs: list[dict], owner: dict) -> list[dict]:
    return [o for o in objs if controller_uid(o) == owner["metadata"]["uid"]]
