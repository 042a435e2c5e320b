"""Helpers for the e2e scenarios: the cluster they run on (the local cluster, or the real one
E2E_KUBECONFIG names), kubectl, the operator process, the local cluster's process, traffic through
a Service."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from kubernetes import client, config
from localcluster.objects import HOST_PORTS_ANNOTATION, SERVICE_PORTS_ANNOTATION, running_pid
from modeldeploy.clients.kube import Kube, KubeError, path_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generic test helpers (tests/support.py)
from support import condition as condition  # noqa: E402 - re-exported for the scenarios
from support import stop_process  # noqa: E402
from support import wait_for as _wait_for  # noqa: E402

KUBECTL = Path(sys.executable).parent / "kubectl"
GROUP = "serving.modeldeploy.io"
MD_API = f"{GROUP}/v1alpha1"
SERVER_IMAGE = os.environ.get("E2E_SERVER_IMAGE", "modeldeploy/model-server:e2e")
SKIP_READY = os.environ.get("E2E_SKIP_READY") == "1"
READY_TIMEOUT = float(os.environ.get("E2E_READY_TIMEOUT", "300"))
# What the operator makes of a ModelDeployment: (apiVersion, kind, suffix of its name).
CHILDREN = [("v1", "ConfigMap", "-config"), ("apps/v1", "Deployment", ""), ("v1", "Service", ""), ("policy/v1", "PodDisruptionBudget", "")]


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """tests/support.py's poll, at a real cluster's pace (every 0.5 s)."""
    return _wait_for(predicate, what, timeout=timeout, interval=0.5)


class Cluster:
    """A cluster by its kubeconfig; `local` holds what the local cluster recorded (run.json) when it is one."""

    def __init__(self, kubeconfig: Path, local: dict[str, Any] | None = None):
        self.kubeconfig, self.local = kubeconfig, local
        self._forwards: dict[tuple[str, str, int], tuple[subprocess.Popen[str], int]] = {}
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.kube = Kube(client.ApiClient(cfg))

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        p = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {p.stderr}")
        return p

    def create(self, obj: dict) -> dict:
        if obj["kind"] == "Namespace":
            return self.kube.request("POST", "/api/v1/namespaces", body=obj)
        return self.kube.request("POST", path_for(obj["apiVersion"], obj["kind"], obj["metadata"]["namespace"]), body=obj)

    def get(self, api_version: str, kind: str, ns: str, name: str) -> dict | None:
        return self.kube.get(api_version, kind, ns, name)

    def md(self, ns: str, name: str) -> dict | None:
        return self.get(MD_API, "ModelDeployment", ns, name)

    def patch_spec(self, ns: str, name: str, spec: dict) -> int:
        out = self.kube.request("PATCH", path_for(MD_API, "ModelDeployment", ns, name), body={"spec": spec},
                                content_type="application/merge-patch+json")
        return int(out["metadata"]["generation"])

    def delete(self, api_version: str, kind: str, ns: str, name: str) -> None:
        try:
            self.kube.request("DELETE", path_for(api_version, kind, ns, name))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def events(self, ns: str, name: str) -> list[tuple[str, str]]:
        out = self.kube.request("GET", f"/api/v1/namespaces/{ns}/events", query={"fieldSelector": f"involvedObject.name={name}"})
        return [(e.get("type"), e.get("reason")) for e in out.get("items", [])]

    def pod(self, ns: str, name: str) -> dict | None:
        try:
            return self.kube.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, ns: str, md_name: str) -> list[dict]:
        out = self.kube.request("GET", f"/api/v1/namespaces/{ns}/pods",
                                query={"labelSelector": f"serving.modeldeploy.io/model-deployment={md_name}"})
        return list(out.get("items", []))

    def operator_env(self) -> dict[str, str]:
        """On the local cluster, Service names resolve through its HTTP proxy (the operator's model-status probe)."""
        if self.local is None or not self.local.get("http_proxy"):
            return {}
        return {"http_proxy": self.local["http_proxy"], "no_proxy": "127.0.0.1,localhost"}

    # -- traffic through a Service --
    def predict(self, ns: str, service: str, model: str, instances: list[float], label: str = "", timeout: float = 10) -> list[float]:
        """A REST prediction through the Service: its local port (a new connection each time, so the
        per-connection balancing spreads them), or the API server's service proxy on a real cluster."""
        path = f"v1/models/{model}" + (f"/labels/{label}" if label else "") + ":predict"
        body = {"instances": instances}
        if self.local is not None:
            resp = requests.post(f"{self.service_url(ns, service)}/{path}", json=body, timeout=timeout)
            resp.raise_for_status()
            return list(resp.json()["predictions"])
        out = self.kube.request("POST", f"/api/v1/namespaces/{ns}/services/{service}:http/proxy/{path}", body=body, timeout=timeout)
        return list(out["predictions"])

    def prometheus(self) -> str:
        """The Prometheus that scrapes this cluster's model-server pods: the local cluster's own (it
        always starts one, so a missing one is a failure), or E2E_PROMETHEUS_URL on a real cluster
        (without it, the scenarios that need Prometheus are skipped, saying so)."""
        import pytest

        if self.local is not None:
            url = self.local.get("prometheus")
            assert url, f"the local cluster recorded no Prometheus: {self.local}"
            return str(url)
        url = os.environ.get("E2E_PROMETHEUS_URL", "")
        if not url:
            pytest.skip("needs a Prometheus scraping the cluster's pods: set E2E_PROMETHEUS_URL")
        return url

    def service_url(self, ns: str, service: str, port: str = "http") -> str:
        svc = self.get("v1", "Service", ns, service) or {}
        ports = json.loads(((svc.get("metadata") or {}).get("annotations") or {}).get(SERVICE_PORTS_ANNOTATION) or "{}")
        if port not in ports:
            raise AssertionError(f"service {ns}/{service} has no local port {port!r} yet")
        return f"http://127.0.0.1:{ports[port]}"

    def pod_request(self, pod: dict, method: str, path: str, body: Any = None,
                    headers: dict[str, str] | None = None, port: int = 8501) -> requests.Response:
        """An HTTP request to one pod's own server (no Service): its local host port here; on a real
        cluster, through `kubectl port-forward` (started once per pod and port, stopped at exit)."""
        if self.local is not None:
            mapping = json.loads((pod["metadata"].get("annotations") or {}).get(HOST_PORTS_ANNOTATION) or "{}")
            local = mapping[str(port)]
        else:
            local = self._forward(pod, port)
        return requests.request(method, f"http://127.0.0.1:{local}{path}", json=body, headers=headers or {}, timeout=10)

    def _forward(self, pod: dict, port: int) -> int:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"], port)
        if key not in self._forwards:
            env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
            proc = subprocess.Popen([str(KUBECTL), "-n", key[0], "port-forward", f"pod/{key[1]}", f"0:{port}"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            line = proc.stdout.readline() if proc.stdout else ""  # "Forwarding from 127.0.0.1:NNNNN -> 8501"
            if "Forwarding from" not in line:
                proc.kill()
                raise AssertionError(f"kubectl port-forward {key[1]}: {line}")
            self._forwards[key] = (proc, int(line.split("127.0.0.1:")[1].split()[0]))
            atexit.register(stop_process, proc)
        return self._forwards[key][1]

    def kill_server(self, pod: dict) -> None:
        """Kill a pod's model-server process: SIGKILL by its PID here; on a real cluster, SIGTERM to
        the container's PID 1 through `kubectl exec` (PID 1 ignores a SIGKILL from inside)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if self.local is not None:
            pid = running_pid(pod)
            assert pid, f"no running container in {name}"
            os.kill(pid, signal.SIGKILL)
        else:
            self.kubectl("-n", ns, "exec", name, "--", "sh", "-c", "kill -TERM 1")


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class OperatorProcess:
    def __init__(self, kubeconfig: Path, namespace: str, log: Path, env: dict[str, str] | None = None):
        self.kubeconfig, self.namespace, self.log, self.env = kubeconfig, namespace, log, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), **self.env)
        cmd = [sys.executable, "-m", "modeldeploy.cli", "operator", "--namespace", self.namespace, "--server-image", SERVER_IMAGE,
               "--metrics-port", "0", "--health-port", "0", "--resync-seconds", "5"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig, timeout=20)
        self.proc = None


class LocalRun:
    """`python -m localcluster` (what `make run` starts) as a subprocess: its printed lines, its
    recorded state, and its orderly stop."""

    def __init__(self, state_dir: Path, args: list[str], log: Path):
        self.state_dir, self.args, self.log = state_dir, args, log
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "localcluster", "--state-dir", str(self.state_dir), *self.args]

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "e2e"), os.environ.get("PYTHONPATH")])))

    def start(self) -> LocalRun:
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=subprocess.PIPE, stderr=self.log.open("ab"),
                                     text=True, cwd=ROOT, preexec_fn=_stop_with_parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_printed(self, timeout: float = 600) -> list[str]:
        """Until it printed everything (the last line names the logs); fails early if it exits."""
        def done() -> list[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"localcluster exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            return list(self.lines) if any(line.startswith("Logs in ") for line in self.lines) else None
        return _wait_for(done, "the local cluster's printed lines", timeout=timeout, interval=0.2)

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / "run.json").read_text()))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode


def _stop_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, however it dies (the cluster then stops in order)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def build_models(out: Path) -> Path:
    """The scenarios' SavedModels (e2e/models.py), built once per directory."""
    if not (out / ".complete").exists():
        subprocess.run([sys.executable, str(ROOT / "e2e" / "models.py"), str(out)], check=True, capture_output=True, timeout=600)
    return out


def wait_local_ready(run: LocalRun, timeout: float = 120) -> dict[str, Any]:
    """Until a local cluster started with --no-example has recorded its state."""
    run.wait_printed(timeout)
    return run.info()


def half_plus_two(name: str, ns: str, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "model": {"name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}}},
        "resources": {"cpu": "100m", "memory": "512Mi"},
        "warmup": {"enabled": False},
    }
    body.update(spec)
    return {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns}, "spec": body}


class ClientThreads:
    """Client threads sending requests back to back until the `with` block ends. A subclass gives
    `request(i, conn)` (one request from thread `i`; it raises on anything wrong) and may give
    `connect(i)` (what thread `i` keeps between requests: a session, a channel; closed at the end).
    `ok` counts the requests that succeeded; every failure is kept with the time it was sent."""

    def __init__(self, threads: int, join_timeout: float = 60):
        self.ok = 0
        self._failed: list[tuple[float, str]] = []  # (monotonic time the request was sent, what failed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._join_timeout = join_timeout
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def connect(self, i: int) -> Any:
        return None

    def request(self, i: int, conn: Any) -> None:
        raise NotImplementedError

    def _run(self, i: int) -> None:
        conn = self.connect(i)
        try:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    self.request(i, conn)
                except Exception as exc:  # noqa: BLE001 - every failure is what the scenario counts
                    with self._lock:
                        self._failed.append((sent, f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"))
                else:
                    with self._lock:
                        self.ok += 1
        finally:
            if conn is not None and hasattr(conn, "close"):
                conn.close()

    @property
    def failures(self) -> list[str]:
        with self._lock:
            return [f for _t, f in self._failed]

    def failures_since(self, t0: float) -> list[str]:
        """The failures of requests sent at or after `t0` (time.monotonic())."""
        with self._lock:
            return [f for t, f in self._failed if t >= t0]

    def __enter__(self) -> Any:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self._join_timeout)


class Load(ClientThreads):
    """Continuous REST predictions through a Service from a few threads; counts what failed."""

    def __init__(self, cluster: Cluster, ns: str, service: str, model: str, threads: int = 3):
        super().__init__(threads, join_timeout=30)
        self.cluster, self.ns, self.service, self.model = cluster, ns, service, model

    def request(self, i: int, conn: Any) -> None:
        assert self.cluster.predict(self.ns, self.service, self.model, [1.0, 2.0]) == [2.5, 3.0]
