"""The whole local cluster, started and stopped as named steps on an AsyncExitStack.

Start order: the API server (with the CRDs of `crds/`), the Service proxy and the Service-name HTTP
proxy, Prometheus, the activator (`python -m modeldeploy.activator`, where the requests of a
ModelDeployment scaled to zero wait, as the chart's activator Deployment), the operator (the real
`modeldeploy operator` process, told where the activator is), the controllers, the node agent. Stop
is the reverse: pods first (preStop, SIGTERM, grace, SIGKILL, all at once), then the controllers,
the operator, the activator, Prometheus, the proxies and the API server, so that nothing is left
running and no port stays bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from localcluster import processes
from localcluster.agent import AgentConfig, NodeAgent
from localcluster.client import Client
from localcluster.controllers import ControllerManager
from localcluster.dnsproxy import DnsProxy
from localcluster.fakeapi import FakeKubeAPI
from localcluster.prometheus import PrometheusServer
from localcluster.proxy import ServiceProxy, port_key

log = logging.getLogger("localcluster")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ClusterConfig:
    state_dir: Path
    node_mounts: list[tuple[str, str]] = field(default_factory=list)
    operator: bool = True
    operator_args: list[str] = field(default_factory=list)
    prometheus: bool = True
    scrape_interval: float = 1.0
    configmap_delay_seconds: float = 0.0
    crash_backoff_seconds: float = 10.0
    venv_bin: Path = field(default_factory=lambda: Path(sys.executable).parent)
    crds_dir: Path = ROOT / "crds"


class LocalCluster:
    def __init__(self, config: ClusterConfig):
        self.config = config
        self.state = config.state_dir.resolve()
        self.api: FakeKubeAPI | None = None
        self.client: Client | None = None
        self.agent: NodeAgent | None = None
        self.services: ServiceProxy | None = None
        self.dns: DnsProxy | None = None
        self.prometheus: PrometheusServer | None = None
        self.prometheus_problem = ""
        self.operator: asyncio.subprocess.Process | None = None
        self.operator_metrics_port = 0
        self.operator_health_port = 0
        self.activator: asyncio.subprocess.Process | None = None
        self.activator_port = 0
        self._stack = contextlib.AsyncExitStack()

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def env_file(self) -> Path:
        """The `export` lines of a running cluster, for `source` (written by the CLI once it is up)."""
        return self.state / "env"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    async def start(self) -> LocalCluster:
        loop = asyncio.get_running_loop()
        try:
            for step in (self._start_api, self._start_proxies, self._start_prometheus, self._start_activator,
                         self._start_operator,
                         self._start_controllers, self._start_agent):
                log.info("starting: %s", step.__name__.removeprefix("_start_"))
                await step(loop)
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await self._stack.aclose()

    # -- the steps --
    async def _start_api(self, loop: asyncio.AbstractEventLoop) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api = FakeKubeAPI(simulate_deployments=False).start()
        self._stack.callback(self.api.stop)
        for crd in sorted(self.config.crds_dir.glob("*.yaml")):
            self.api.apply_yaml(crd.read_text())
        self.api.write_kubeconfig(self.kubeconfig)
        self.client = Client(self.api, "localcluster")

    async def _start_proxies(self, loop: asyncio.AbstractEventLoop) -> None:
        self.services = ServiceProxy(self._client("kube-proxy"), loop)
        await self.services.start()
        self._stack.push_async_callback(self.services.close)
        self.dns = DnsProxy(self.resolve)
        await self.dns.start()
        self._stack.push_async_callback(self.dns.close)

    async def _start_prometheus(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.config.prometheus:
            return
        if self.config.operator:
            self.operator_metrics_port = _free_port()
        if self.config.operator:
            self.activator_port = _free_port()
        jobs = {"modeldeploy-operator": f"127.0.0.1:{self.operator_metrics_port}"} if self.operator_metrics_port else {}
        if self.activator_port:
            jobs["modeldeploy-activator"] = f"127.0.0.1:{self.activator_port}"
        assert self.client is not None, "the API server starts first"
        prom = PrometheusServer(self.client, loop, self.state / "prometheus", self.logs / "prometheus.log",
                                self.config.scrape_interval, jobs)
        try:
            await prom.start()
        except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
            await prom.stop()
            self.prometheus_problem = str(exc)
            log.warning("Prometheus is not running: %s", exc)
            return
        self.prometheus = prom
        self._stack.push_async_callback(prom.stop)

    async def _start_activator(self, loop: asyncio.AbstractEventLoop) -> None:
        """The activator on loopback (its per-ModelDeployment ports too: pods and the Service proxy
        reach it at 127.0.0.1, the address the operator writes into EndpointSlices)."""
        if not self.config.operator:
            return
        self.activator_port = self.activator_port or _free_port()
        argv = [sys.executable, "-m", "modeldeploy.activator", "--bind", "127.0.0.1", "--advertise-address",
                "127.0.0.1", "--admin-port", str(self.activator_port), f"--token-file={self._activator_token()}"]
        self.activator = await processes.spawn(argv, self.client_env(), ROOT, self.logs / "activator.log")
        self._stack.push_async_callback(self._stop_activator)
        await self._wait_http(loop, self.activator, f"http://127.0.0.1:{self.activator_port}/healthz", "activator")

    def _activator_token(self) -> Path:
        """The activator API's bearer token (the chart keeps one in a Secret both mount), made once."""
        path = self.state / "activator-token"
        if not path.exists():
            path.write_text(secrets.token_hex(16) + "\n")
            path.chmod(0o600)
        return path

    async def _stop_activator(self) -> None:
        if self.activator is not None:
            await processes.stop(self.activator, 15)

    async def _wait_http(self, loop: asyncio.AbstractEventLoop, proc: asyncio.subprocess.Process, url: str, what: str,
                         timeout: float = 60) -> None:
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if proc.returncode is not None:
                    raise RuntimeError(f"the {what} exited with {proc.returncode}; see {self.logs / (what + '.log')}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the {what} did not start within {timeout:g}s; see {self.logs / (what + '.log')}")

    async def _start_operator(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.config.operator:
            return
        self.operator_metrics_port = self.operator_metrics_port or _free_port()
        self.operator_health_port = _free_port()
        exe = self.config.venv_bin / "modeldeploy"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "modeldeploy.cli"]
        # the cluster's Prometheus is the operator's: rollouts and autoscaling read it, as the chart's
        # prometheusUrl value does on a real cluster
        prometheus = ["--prometheus-url", self.prometheus.url] if self.prometheus else []
        # the admin tokens' key (the chart mounts one from a Secret), kept with the cluster's state;
        # models come from the node's directories, so hostPath is allowed (the chart's default is off)
        argv = [*cmd, "operator", "--metrics-port", str(self.operator_metrics_port),
                "--health-port", str(self.operator_health_port), "--bind", "127.0.0.1",
                "--server-image", "modeldeploy/model-server:local", *prometheus,
                f"--token-key-file={self._token_key()}", "--allow-host-path",
                f"--activator-url=http://127.0.0.1:{self.activator_port}",
                f"--activator-token-file={self._activator_token()}", *self.config.operator_args]
        self.operator = await processes.spawn(argv, self.client_env(), ROOT, self.logs / "operator.log")
        self._stack.push_async_callback(self._stop_operator)
        await self._wait_operator(loop)

    def _token_key(self) -> Path:
        """The operator's admin-token key file in the state directory, made once with a random key."""
        path = self.state / "token-key"
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o600)
        return path

    async def _wait_operator(self, loop: asyncio.AbstractEventLoop, timeout: float = 120) -> None:
        """Up once it serves its metrics (it does so after finding the CRD, before kopf starts)."""
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self.operator is not None and self.operator.returncode is not None:
                    raise RuntimeError(f"the operator exited with {self.operator.returncode}; see {self.logs / 'operator.log'}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"http://127.0.0.1:{self.operator_metrics_port}/metrics") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the operator did not start within {timeout:g}s; see {self.logs / 'operator.log'}")

    async def _stop_operator(self) -> None:
        if self.operator is not None:
            await processes.stop(self.operator, 15)

    async def _start_controllers(self, loop: asyncio.AbstractEventLoop) -> None:
        manager = ControllerManager(self._client("controller-manager"), loop, self.state / "volumes" / "pvc")
        self._stack.callback(manager.close)

    async def _start_agent(self, loop: asyncio.AbstractEventLoop) -> None:
        base_env = {"PATH": f"{self.config.venv_bin}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.dns is not None:  # the cluster's DNS, for pods: Service names through the HTTP proxy
            base_env.update(http_proxy=self.dns.url, no_proxy="127.0.0.1,localhost")
        config = AgentConfig(
            pods_dir=self.state / "pods", pvc_root=self.state / "volumes" / "pvc",
            node_mounts=list(self.config.node_mounts), search_dirs=[str(self.config.venv_bin)],
            base_env=base_env,
            configmap_delay_seconds=self.config.configmap_delay_seconds, crash_backoff_seconds=self.config.crash_backoff_seconds,
        )
        self.agent = NodeAgent(self._client("kubelet"), loop, config)
        await self.agent.start()
        self._stack.push_async_callback(self.agent.shutdown)

    def _client(self, component: str) -> Client:
        """An in-process client of the API server for `component` (the API server starts first)."""
        assert self.api is not None, "the API server starts first"
        return Client(self.api, component)

    # -- what users of the cluster need --
    def resolve(self, namespace: str, service: str, port: int) -> int | None:
        """A Service port (by number) -> its local port on 127.0.0.1."""
        svc = self.api.get("", "services", namespace, service) if self.api else None
        for sp in ((svc or {}).get("spec") or {}).get("ports") or []:
            if int(sp.get("port", 0)) == port and self.services is not None:
                return self.services.local_port(namespace, service, port_key(sp))
        return None

    def client_env(self) -> dict[str, str]:
        """The environment for a client of this cluster: KUBECONFIG, and Service names via the HTTP proxy."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "kubeconfig")}
        env.update(KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1", no_proxy="127.0.0.1,localhost")
        if self.dns is not None:
            env["http_proxy"] = self.dns.url
        return env

    def summary(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "kubeconfig": str(self.kubeconfig), "api": self.api.url if self.api else "",
            "prometheus": self.prometheus.url if self.prometheus else "", "http_proxy": self.dns.url if self.dns else "",
            "operator_pid": self.operator.pid if self.operator else None, "logs": str(self.logs),
            "operator_metrics": f"http://127.0.0.1:{self.operator_metrics_port}/metrics" if self.operator else "",
            "operator_health": f"http://127.0.0.1:{self.operator_health_port}/healthz" if self.operator else "",
            "activator": f"http://127.0.0.1:{self.activator_port}" if self.activator else "",
        }

    def child_pids(self) -> list[int]:
        pids = [p.pid for p in (self.operator, self.activator, self.prometheus.proc if self.prometheus else None)
                if p is not None]
        for w in (self.agent.workers.values() if self.agent else []):
            pids += [r.proc.pid for r in w.runners if r.proc is not None and r.proc.returncode is None]
        return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
