"""The install / upgrade / uninstall story of docs/operations.md, with Helm's own Go SDK and the real operator.

`helm install`, `helm upgrade` and `helm uninstall` (helm-python-sdk: Helm 4's Go SDK) run against the
fake API server (localcluster.fakeapi), and the operator runs as the installed Deployment says.
Checked: the release creates what the chart renders; a ModelDeployment from the docs becomes
Ready; an upgrade with a new serverImage rolls the model pods (maxUnavailable 0) and keeps the admin
tokens' key (helm lookup); uninstalling keeps the CRD, the key, the ModelDeployment and its serving
children; without an operator a deletion waits on
kopf's finalizer, and removing it by hand (the docs' `kubectl patch`) lets the model go with its
children.

As a user runs them: Helm validates the manifests against the API server's OpenAPI document (the
local API server serves v2 and v3) and keeps its release records in Secrets. RBAC kinds are
registered on the fake for this test.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from chart_support import CHART, OperatorProcess
from localcluster import fakeapi
from support import condition, wait_for

RELEASE, NS, ML = "modeldeploy", "modeldeploy-system", "ml"
GROUP, VERSION = "serving.modeldeploy.io", "v1alpha1"
RBAC = "rbac.authorization.k8s.io"
# The first ModelDeployment of docs/operations.md.
HALF_PLUS_TWO = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "ModelDeployment",
    "metadata": {"name": "half-plus-two", "namespace": ML},
    "spec": {
        "model": {
            "name": "half_plus_two",
            "storage": {"pvc": {"claimName": "models", "subPath": "half_plus_two"}},
        },
        "resources": {"gpu": 1, "cpu": "2", "memory": "8Gi"},
    },
}


@pytest.fixture
def fake() -> Iterator[Any]:
    with fakeapi.FakeKubeAPI() as api:
        for plural, kind, namespaced in (
            ("clusterroles", "ClusterRole", False),
            ("clusterrolebindings", "ClusterRoleBinding", False),
            ("roles", "Role", True),
            ("rolebindings", "RoleBinding", True),
        ):
            api.resources[(RBAC, plural)] = fakeapi.Resource(
                RBAC, "v1", plural, kind, namespaced, kind.lower()
            )
        for ns in (NS, ML):
            api.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        api.add_object(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "models", "namespace": ML},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
            }
        )
        yield api


def _ready(fake: Any) -> bool:
    """Ready, for the current spec and for the pods of the current Deployment (its config hash)."""
    md = fake.get(GROUP, "modeldeployments", ML, "half-plus-two")
    dep = fake.get("apps", "deployments", ML, "half-plus-two")
    if not md or not dep:
        return False
    current = dep["spec"]["template"]["metadata"]["annotations"]["serving.modeldeploy.io/config-hash"]
    return (
        condition(md, "Ready").get("status") == "True"
        and md["status"]["observedGeneration"] == md["metadata"]["generation"]
        and md["status"].get("configHash") == current
    )


def _server_image(fake: Any) -> str:
    dep = fake.get("apps", "deployments", ML, "half-plus-two") or {}
    containers = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("image", ""))


def test_install_upgrade_uninstall(fake: Any, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    operator: OperatorProcess | None = None
    with helm.Config(kubeconfig_path=kubeconfig, namespace=NS) as cfg:
        try:
            # helm install
            release = cfg.install(str(CHART), RELEASE, {}, namespace=NS, timeout=60)
            assert release["status"] == "deployed" and "get md my-model -w" in release["notes"]
            assert fake.get("", "secrets", NS, f"sh.helm.release.v1.{RELEASE}.v1")  # Helm's release record
            assert fake.get(
                "apiextensions.k8s.io", "customresourcedefinitions", "", f"modeldeployments.{GROUP}"
            )
            assert fake.get("", "serviceaccounts", NS, RELEASE)
            assert fake.get(RBAC, "clusterroles", "", RELEASE) and fake.get(
                RBAC, "clusterrolebindings", "", RELEASE
            )
            installed = fake.get("apps", "deployments", NS, RELEASE)
            key = fake.get("", "secrets", NS, f"{RELEASE}-token-key")  # the admin tokens' key, made by the chart
            assert key is not None and len(key["data"]["key"]) >= 64
            secrets = {key["metadata"]["name"]: key["data"]}
            operator = OperatorProcess(installed, kubeconfig, tmp_path / "operator.log", secrets).start()

            # The docs' first model becomes Ready, behind a Service with TF Serving's ports.
            fake.add_object(copy.deepcopy(HALF_PLUS_TWO))
            wait_for(lambda: _ready(fake), "half-plus-two Ready")
            assert _server_image(fake) == "ghcr.io/modeldeploy/model-server:0.1.0"
            svc = fake.get("", "services", ML, "half-plus-two")
            assert {p["port"] for p in svc["spec"]["ports"]} == {8500, 8501}

            # helm upgrade with a new server image; the Deployment's Recreate strategy: old operator
            # stops, the new one starts from the upgraded Deployment and rolls the model pods.
            release = cfg.upgrade(str(CHART), RELEASE, {"serverImage": {"tag": "0.1.1"}}, namespace=NS, timeout=60)
            assert release["revision"] == 2
            upgraded = fake.get("apps", "deployments", NS, RELEASE)
            assert (
                "--server-image=ghcr.io/modeldeploy/model-server:0.1.1"
                in upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
            )
            # the key is kept (helm lookup): the pods' tokens stay valid across the upgrade
            assert fake.get("", "secrets", NS, f"{RELEASE}-token-key")["data"] == key["data"]
            operator.stop()
            operator = OperatorProcess(upgraded, kubeconfig, tmp_path / "operator.log", secrets).start()
            wait_for(
                lambda: _server_image(fake) == "ghcr.io/modeldeploy/model-server:0.1.1",
                "the model pods to roll",
            )
            rolling = fake.get("apps", "deployments", ML, "half-plus-two")["spec"]["strategy"]
            assert rolling["rollingUpdate"]["maxUnavailable"] == 0
            wait_for(lambda: _ready(fake), "half-plus-two Ready after the upgrade")
            operator.stop()
            operator = None

            # helm uninstall: the operator and its RBAC go; the CRD and the serving model stay.
            cfg.uninstall(RELEASE, timeout=60)
        except AssertionError as e:
            raise AssertionError(
                f"{e}\n--- operator log ---\n{operator.logs() if operator else ''}"
            ) from None
        finally:
            if operator is not None:
                operator.stop()
    assert fake.get("apps", "deployments", NS, RELEASE) is None
    assert (
        fake.get(RBAC, "clusterroles", "", RELEASE) is None
        and fake.get("", "serviceaccounts", NS, RELEASE) is None
    )
    assert fake.get("apiextensions.k8s.io", "customresourcedefinitions", "", f"modeldeployments.{GROUP}")
    # the key stays too (helm.sh/resource-policy: keep): a reinstalled operator derives the same tokens
    assert fake.get("", "secrets", NS, f"{RELEASE}-token-key")["data"] == key["data"]
    assert (
        _ready(fake)
        and fake.get("apps", "deployments", ML, "half-plus-two")
        and fake.get("", "services", ML, "half-plus-two")
    )

    # Without an operator, deleting the model waits on kopf's finalizer ...
    md_resource = fake.resource_for(f"{GROUP}/{VERSION}", "ModelDeployment")
    fake.delete(md_resource, ML, "half-plus-two")
    md = fake.get(GROUP, "modeldeployments", ML, "half-plus-two")
    assert md["metadata"]["deletionTimestamp"] and md["metadata"]["finalizers"] == [f"{GROUP}/finalizer"]
    # ... until the finalizer is removed by hand; then its children go with it.
    fake.update(md_resource, ML, "half-plus-two", {**md, "metadata": {**md["metadata"], "finalizers": []}})
    wait_for(
        lambda: fake.get(GROUP, "modeldeployments", ML, "half-plus-two") is None, "the ModelDeployment to go"
    )
    wait_for(
        lambda: fake.get("apps", "deployments", ML, "half-plus-two") is None, "its Deployment to be collected"
    )
    assert fake.get("", "services", ML, "half-plus-two") is None
