"""The one way the server tests start and talk to a real `model-server`: a subprocess bound to
127.0.0.1 on free ports, stopped by PID with SIGTERM (fixtures in conftest.py use it too).
Generic helpers (free_port, wait_for, stop_process) come from tests/support.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests
import support
from support import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL_SERVER = [sys.executable, "-m", "modelserver.main"]
SERVER_START_TIMEOUT_S = 120.0
SERVER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def wait_for(cond: Callable[[], Any], *, what: str = "condition", timeout: float = 60.0) -> Any:
    """support.wait_for with the server tests' longer default (model loads on a busy machine)."""
    return support.wait_for(cond, what, timeout=timeout)


class ServerProcess:
    """A real model-server subprocess: `url` (REST), `target` (gRPC), `output()` (its log)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.grpc_port = free_port()
        self.rest_port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*MODEL_SERVER, f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             "--bind_address=127.0.0.1", *args],
            stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(os.environ if env is None else env, **SERVER_ENV), cwd=REPO,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, check: Callable[[], Any], what: str, timeout: float = SERVER_START_TIMEOUT_S) -> Any:
        """Poll `check` (HTTP errors count as not yet) until truthy; fail if the server exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"model-server exited ({self.proc.returncode}) waiting for {what}:\n"
                                     f"{self.output()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                result = check()
                if result:
                    return result
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{self.output()[-3000:]}")

    def ready(self) -> bool:
        return requests.get(f"{self.url}/v1/health/ready", timeout=5).status_code == 200

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        self.wait_until(self.ready, "readiness", timeout)

    def model_state(self, name: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/v1/models/{name}", timeout=5)
        return list(r.json().get("model_version_status", [])) if r.status_code == 200 else []

    def metric(self, sample: str, path: str = "/monitoring/prometheus/metrics", **labels: str) -> float:
        """The sum of the samples named `sample` with `labels` in the server's metrics (started with
        a --monitoring_config_file that enables them at `path`)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(f"{self.url}{path}", timeout=10).text
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    def stop(self, timeout: float = 30.0) -> int:
        support.stop_process(self.proc, timeout=timeout)
        self._log.close()
        return int(self.proc.returncode)


def started(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """A ServerProcess once it is ready; stopped (by PID) when it never gets there."""
    server = ServerProcess(args, log_path, env)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def model_server(args: list[str], log_path: Path, wait_ready: bool = True) -> Iterator[ServerProcess]:
    """A ServerProcess for one `with` block (the `start_server` fixture keeps one per module)."""
    server = started(args, log_path) if wait_ready else ServerProcess(args, log_path)
    try:
        yield server
    finally:
        server.stop()


def run_server_expecting_exit(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODEL_SERVER, "--bind_address=127.0.0.1", f"--port={free_port()}",
                           f"--rest_api_port={free_port()}", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, **SERVER_ENV))


def predict_request(model: str, inputs: dict[str, Any], signature: str = "", version: int | None = None,
                    label: str | None = None) -> Any:
    """A PredictRequest built the way TF Serving's docs do (make_tensor_proto)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return req
