"""Helpers for the operator tests: paths, waiting, kubectl, and the real operator as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from localcluster.fakeapi import FakeKubeAPI
from support import stop_process

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "modeldeployments.yaml"
EXAMPLES = ROOT / "examples"
KUBECTL = Path(sys.executable).parent / "kubectl"
GROUP, PLURAL = "serving.modeldeploy.io", "modeldeployments"


class OperatorProcess:
    """The real operator (`python -m modeldeploy.cli operator`) in a subprocess."""

    def __init__(self, kubeconfig: Path, log: Path, extra: list[str] | None = None):
        self.kubeconfig, self.log, self.extra = kubeconfig, log, extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "modeldeploy.cli", "operator", "--metrics-port", "0", "--health-port", "0",
               "--resync-seconds", "2", "--model-status-url=", *self.extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    p = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {p.stderr}")
    return p


def make_namespace(api: FakeKubeAPI, name: str, pvc: str | None = "models") -> None:
    api.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    if pvc:
        api.add_object({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc, "namespace": name},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        })


def md(name: str, namespace: str, **spec: Any) -> dict:
    body = {"model": {"storage": {"pvc": {"claimName": "models", "subPath": name}}}}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": namespace}, "spec": body}
