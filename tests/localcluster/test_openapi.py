"""The local API server's OpenAPI documents: what kubectl and Helm's SDK read from /openapi/v3 (and
older clients from /openapi/v2): the built-in kinds' real schemas with their strategic-merge keys,
custom resources from their CRDs, and the fieldValidation parameter that tells them the server
validates fields itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests
from localcluster.fakeapi import FakeKubeAPI
from localcluster_support import KUBECTL


def test_v3_serves_each_group_versions_kinds_with_their_schemas(fake: FakeKubeAPI) -> None:
    index = requests.get(f"{fake.url}/openapi/v3", timeout=10).json()["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/serving.modeldeploy.io/v1alpha1", "apis/rbac.authorization.k8s.io/v1"} <= set(index)
    apps = requests.get(fake.url + index["apis/apps/v1"]["serverRelativeURL"], timeout=10).json()
    schemas = apps["components"]["schemas"]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name" and containers["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}
    assert schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"] == [{"group": "apps", "kind": "Deployment", "version": "v1"}]
    assert schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"] == "int-or-string"
    patch = apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    md = requests.get(fake.url + index["apis/serving.modeldeploy.io/v1alpha1"]["serverRelativeURL"], timeout=10).json()
    schema = md["components"]["schemas"]["io.modeldeploy.serving.v1alpha1.ModelDeployment"]
    assert "versionLabels" in schema["properties"]["spec"]["properties"]
    assert schema["properties"]["metadata"]["allOf"] == [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]


def test_v2_is_one_swagger_document_in_json(fake: FakeKubeAPI) -> None:
    doc = requests.get(f"{fake.url}/openapi/v2", headers={"Accept": "application/json"}, timeout=10).json()
    assert doc["swagger"] == "2.0"
    assert {"io.k8s.api.apps.v1.Deployment", "io.modeldeploy.serving.v1alpha1.ModelDeployment"} <= set(doc["definitions"])
    assert doc["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"]["$ref"] == "#/definitions/io.k8s.api.core.v1.PodSpec"
    protobuf_only = requests.get(f"{fake.url}/openapi/v2", headers={"Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"}, timeout=10)
    assert protobuf_only.status_code == 406


def test_kubectl_explains_built_in_and_custom_kinds(fake: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")

    def explain(field: str) -> str:
        p = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), "explain", field], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    assert "maxUnavailable" in explain("deployment.spec.strategy.rollingUpdate")
    assert "canary" in explain("md.spec.traffic")
