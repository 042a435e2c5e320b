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
RESYNC_SECONDS = 2  # the operator's periodic re-check in these tests (each run is spread by ±10%)


TOKEN_KEY = b"0123456789abcdef-test-token-key"  # the operators' key in these tests (--token-key-file)


class OperatorProcess:
    """The real operator (`python -m modeldeploy.cli operator`) in a subprocess, with its token key
    in a file beside its log (`TOKEN_KEY`: the tests derive the pods' tokens from it)."""

    def __init__(self, kubeconfig: Path, log: Path, extra: list[str] | None = None):
        self.kubeconfig, self.log, self.extra = kubeconfig, log, extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.key_file = log.with_name(log.name + ".token-key")

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        self.key_file.write_bytes(TOKEN_KEY)
        cmd = [sys.executable, "-m", "modeldeploy.cli", "operator", "--metrics-port", "0", "--health-port", "0",
               "--resync-seconds", str(RESYNC_SECONDS), "--model-status-url=", f"--token-key-file={self.key_file}",
               *self.extra]
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


class RecordingKube:
    """A stand-in for modeldeploy.clients.kube.Kube in unit tests of the reconcile (no API server): it keeps
    the objects written, answers like the API server (resourceVersions, 404s) and records calls."""

    def __init__(self, claims: tuple[str, ...] = ("models",), reject: tuple[str, ...] = ()):
        from modeldeploy.clients.kube import KubeError

        self.KubeError = KubeError
        self.claims, self.reject = set(claims), set(reject)  # PVCs that exist; kinds whose apply is refused (422)
        self.objects: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.rv = 100

    def _stamp(self, obj: dict) -> dict:
        self.rv += 1
        out = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        return out

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict | None:
        self.calls.append(("get", kind))
        if kind == "PersistentVolumeClaim":
            return {"metadata": {"name": name}} if name in self.claims else None
        return self.objects.get((kind, name))

    def create(self, obj: dict) -> dict:
        self.calls.append(("create", obj["kind"]))
        if obj["kind"] in self.reject:
            raise self.KubeError(422, "Invalid", f'{obj["kind"]} "{obj["metadata"]["name"]}" is invalid: rejected by the test')
        if (obj["kind"], obj["metadata"]["name"]) in self.objects:
            raise self.KubeError(409, "AlreadyExists", f'{obj["kind"]} "{obj["metadata"]["name"]}" already exists')
        out = self._stamp(obj)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = out
        return out

    def drop_create_entry(self, obj: dict) -> dict | None:
        return None  # this stand-in reports no managedFields

    def apply(self, obj: dict) -> dict:
        self.calls.append(("apply", obj["kind"]))
        if obj["kind"] in self.reject:
            raise self.KubeError(422, "Invalid", f'{obj["kind"]} "{obj["metadata"]["name"]}" is invalid: rejected by the test')
        before = self.objects.get((obj["kind"], obj["metadata"]["name"]))
        if before is not None and {k: v for k, v in before.items() if k != "metadata"} == {k: v for k, v in obj.items() if k != "metadata"}:
            return before  # a no-op apply keeps the resourceVersion
        out = self._stamp(obj)
        self.objects[(obj["kind"], obj["metadata"]["name"])] = out
        return out

    def patch_status(self, namespace: str, name: str, status: dict, resource_version: str | None = None) -> dict:
        self.calls.append(("patch_status", "ModelDeployment"))
        body = self.objects[("ModelDeployment", name)]
        merged = {k: v for k, v in {**(body.get("status") or {}), **status}.items() if v is not None}
        out = self._stamp({**body, "status": merged})
        self.objects[("ModelDeployment", name)] = out
        return out

    def patch_finalizers(self, namespace: str, name: str, finalizers: list[str], resource_version: str | None) -> dict:
        self.calls.append(("patch_finalizers", "ModelDeployment"))
        body = self.objects[("ModelDeployment", name)]
        out = self._stamp({**body, "metadata": {**body["metadata"], "finalizers": finalizers}})
        self.objects[("ModelDeployment", name)] = out
        return out

    def post_event(self, obj: dict, etype: str, reason: str, message: str, component: str, instance: str = "") -> dict:
        self.calls.append(("post_event", reason))
        self.events.append((etype, reason, message))
        return {}
