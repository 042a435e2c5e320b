"""Helpers for the Helm chart tests: render the chart offline with helm-python-sdk (Helm 4's Go SDK).

A module of its own (not conftest) so that test files can import it by a name no other test area uses.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from support import free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "modeldeploy"
RELEASE = "md"
NAMESPACE = "modeldeploy-system"

# chart-testing's convention: one values file per optional feature in the chart's ci/ folder; each
# is linted, rendered and validated (test_helm_chart.py). ci/full-values.yaml switches every option
# on, with non-default settings where a value changes the output.
CI_VALUES: dict[str, dict[str, Any]] = {
    p.name: yaml.safe_load(p.read_text()) for p in sorted((CHART / "ci").glob("*-values.yaml"))}
FULL_VALUES: dict[str, Any] = CI_VALUES["full-values.yaml"]

NAMESPACED_VALUES: dict[str, Any] = {
    **FULL_VALUES,
    "scope": {"mode": "namespaced", "watchNamespaces": ["team-a", "team-b"]},
}


def render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print it."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)


def objects(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every Kubernetes object of a release: templates (not NOTES.txt, not hooks: Helm creates those
    only at their hook, such as `helm test`'s) plus the CRDs in crds/.

    Rendered once per (values, namespace) in a test session; callers get their own copy."""
    return copy.deepcopy(_objects(json.dumps(values or {}, sort_keys=True), namespace))


@functools.lru_cache(maxsize=64)
def _objects(values_json: str, namespace: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path, text in sorted(render(json.loads(values_json), namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        out.extend(doc for doc in yaml.safe_load_all(text) if doc and not _hook(doc))
    with helm.Chart.load(CHART) as chart:
        for crd in chart.crds:
            out.extend(doc for doc in yaml.safe_load_all(crd["data"]) if doc)
    return out


def _hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in ((doc.get("metadata") or {}).get("annotations") or {})


def hooks(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The chart's hook objects (`helm test`'s Service and pod), as rendered."""
    out: list[dict[str, Any]] = []
    for path, text in sorted(render(values, namespace).items()):
        if not path.endswith("NOTES.txt"):
            out.extend(doc for doc in yaml.safe_load_all(text) if doc and _hook(doc))
    return out


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's Deployment (with activator.enabled the chart renders the activator's too)."""
    found = [d for d in by_kind(objs, "Deployment")
             if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "operator"]
    assert len(found) == 1, f"expected one operator Deployment, found {len(found)}"
    return found[0]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


class OperatorProcess:
    """`modeldeploy operator` started as the chart's Deployment starts it: the container's args (from a
    rendered or an installed Deployment), on free loopback ports, against KUBECONFIG, with its Secret
    volumes as the kubelet mounts them (files from `secrets`, name -> the Secret's base64 `data`, or
    without it a random key per item, as the chart makes its token key; in a directory beside the
    log, and the args that name the mount path name that directory). Stopped by PID."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, log: Path,
                 secrets: dict[str, dict[str, str]] | None = None):
        pod = deployment["spec"]["template"]["spec"]
        (self.container,) = pod["containers"]
        self.health_port, self.metrics_port = free_port(), free_port()
        self.files: dict[Path, bytes] = {}
        mounted: dict[str, str] = {}  # the container's mount path -> the directory here
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for m in self.container.get("volumeMounts") or []:
            source = volumes[m["name"]].get("secret")
            if source is None:
                continue
            if secrets is None:  # not given: the Secret as the chart makes it (a random key under each item)
                data = {i["key"]: base64.b64encode(os.urandom(32).hex().encode()).decode() for i in source.get("items") or []}
            else:
                data = secrets.get(source["secretName"])
                assert data is not None, f"Secret {source['secretName']} is not there: the kubelet would not start the pod"
            where = log.parent / f"{log.stem}-{m['name']}"
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            self.files.update({where / i["path"]: base64.b64decode(data[i["key"]]) for i in items})
            mounted[m["mountPath"].rstrip("/") + "/"] = f"{where}/"
        args = []
        for a in self.container["args"]:
            if a.startswith("--health-port="):
                a = f"--health-port={self.health_port}"
            elif a.startswith("--metrics-port="):
                a = f"--metrics-port={self.metrics_port}"
            for path, here in mounted.items():
                a = a.replace(path, here)
            args.append(a)
        # The image's ENTRYPOINT is `modeldeploy operator` (operator/Dockerfile).
        self.command = [sys.executable, "-m", "modeldeploy.cli", "operator", *args, "--bind=127.0.0.1"]
        self.kubeconfig, self.log = kubeconfig, log
        self.proc: subprocess.Popen[bytes] | None = None
        # the container's env as the kubelet gives it (values, and the downward API's namespace)
        self.env: dict[str, str] = {}
        for e in self.container.get("env") or []:
            if "value" in e:
                self.env[e["name"]] = str(e["value"])
            elif ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.namespace":
                self.env[e["name"]] = deployment["metadata"].get("namespace", "default")

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}{self.container['livenessProbe']['httpGet']['path']}"

    def spawn(self) -> None:
        """Writes the mounted files and starts the process, as the Deployment's pod would."""
        for path, content in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        env = {**os.environ, **self.env, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def start(self) -> OperatorProcess:
        self.spawn()
        wait_for(
            lambda: http_get(self.health_url)[0] == 200 or self.proc is None or self.proc.poll() is not None,
            "the liveness endpoint",
        )
        assert self.proc.poll() is None, self.logs()
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
