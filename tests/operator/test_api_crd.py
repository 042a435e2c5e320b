"""The API models, the generated CRD (drift, structure, CEL rules), the examples and the docs' reference (docs/operator.md)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from localcluster.fakeapi import ApiError, validate_custom
from modeldeploy.api import crdgen
from modeldeploy.api import v1alpha1 as api
from operator_support import CRD_FILE, EXAMPLES, ROOT
from pydantic import ValidationError

CRD = yaml.safe_load(CRD_FILE.read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def admit(spec: dict[str, Any]) -> dict[str, Any]:
    """What kube-apiserver would store (defaults applied), or ApiError (422) as it would answer."""
    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "x"}, "spec": copy.deepcopy(spec)}
    validate_custom(obj, SCHEMA, strict=True)
    return obj


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == crdgen.render_yaml(), "crds/ is stale: run `make crds`"


def test_crd_is_a_valid_structural_crd() -> None:
    kubernetes_validate.validate(CRD, "1.33", strict=True)
    names = CRD["spec"]["names"]
    assert (CRD["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "serving.modeldeploy.io", "ModelDeployment", "modeldeployments", ["md"])
    version = CRD["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"}}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Ready", "Versions", "Labels", "Replicas", "Available"}

    def walk(node: dict[str, Any], path: str) -> None:
        # structural: every node has a type, unless int-or-string or preserve-unknown-fields
        if not node.get("x-kubernetes-int-or-string") and not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" in node, f"{path} has no type"
        assert "$ref" not in node and "allOf" not in node and "title" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            return
        assert "anyOf" not in node, f"{path}: anyOf only for int-or-string"
        if node.get("x-kubernetes-list-type") == "map":  # map keys must be required in the items
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"].get("required", [])), path
        if node.get("type") == "object" and "additionalProperties" in node and "x-kubernetes-validations" in node:
            assert "maxProperties" in node, f"{path}: CEL over a map needs maxProperties (cost budget)"
        if node.get("type") == "array" and node.get("x-kubernetes-list-type") == "set":
            assert "maxItems" in node, f"{path}: bounded for CEL cost"
        for k, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{k}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[{key}]")

    walk(SCHEMA["properties"]["spec"], "spec")
    walk(SCHEMA["properties"]["status"], "status")


def test_defaults_come_from_the_schema() -> None:
    stored = admit({"model": {"storage": {"pvc": {"claimName": "m"}}}})["spec"]
    assert stored["replicas"] == 1 and stored["warmup"] == {"enabled": True, "requestIterations": 1}
    assert stored["resources"]["gpu"] == 0 and stored["server"]["configPollSeconds"] == 1
    # The schema's defaults and the models' defaults agree.
    assert api.ModelDeploymentSpec.model_validate(stored) == api.ModelDeploymentSpec.model_validate({"model": {"storage": {"pvc": {"claimName": "m"}}}})


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema_and_the_models(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == api.API_VERSION and doc["kind"] == api.KIND
    stored = admit(doc["spec"])
    api.ModelDeploymentSpec.model_validate(stored["spec"])


def test_minimal_example_asks_for_a_gpu() -> None:
    doc = yaml.safe_load((EXAMPLES / "minimal-gpu.yaml").read_text())
    assert doc["spec"]["resources"]["gpu"] >= 1


PVC = {"storage": {"pvc": {"claimName": "m"}}}
REJECTED = {
    "no storage": ({"model": {"storage": {}}}, "exactly one of storage"),
    "two storages": ({"model": {"storage": {"pvc": {"claimName": "m"}, "hostPath": {"path": "/x"}}}}, "exactly one of storage"),
    "label on unlisted version": ({"model": {**PVC, "versions": [1]}, "versionLabels": {"stable": 2}}, "must name a version listed"),
    "canary without labels": ({"model": PVC, "traffic": {"canary": 10}}, "needs versionLabels"),
    "min > max": ({"model": PVC, "autoscaling": {"minReplicas": 5, "maxReplicas": 2, "target": 1}}, "minReplicas must be <= maxReplicas"),
    "allowed sizes": ({"model": PVC, "batching": {"maxBatchSize": 32, "allowedBatchSizes": [8, 16]}}, "must equal batching.maxBatchSize"),
    "allowed sizes with splitting": ({"model": PVC, "batching": {"maxBatchSize": 64, "enableLargeBatchSplitting": True, "maxExecutionBatchSize": 16, "allowedBatchSizes": [8, 64]}}, "maxExecutionBatchSize when enableLargeBatchSplitting"),
    "execution batch > max": ({"model": PVC, "batching": {"maxBatchSize": 8, "maxExecutionBatchSize": 16}}, "must not exceed batching.maxBatchSize"),
    "duplicate versions": ({"model": {**PVC, "versions": [1, 1]}}, "Duplicate value"),
    "negative replicas": ({"model": PVC, "replicas": -1}, "replicas"),
    "bad enum": ({"model": PVC, "autoscaling": {"mode": "magic", "maxReplicas": 2, "target": 1}}, "magic"),
    "bad quantity": ({"model": PVC, "resources": {"memory": "lots"}}, "memory"),
    "unknown field": ({"model": PVC, "replica": 2}, 'unknown field "spec.replica"'),
    "missing model": ({}, "model"),
    "uri and pvc": ({"model": {"storage": {"uri": "s3://models/m", "pvc": {"claimName": "m"}}}}, "exactly one of storage"),
    "uri the server cannot read": ({"model": {"storage": {"uri": "ftp://models/m"}}}, "spec.model.storage.uri"),
    "uri with a signature": ({"model": {"storage": {"uri": "s3://models/m?X-Amz-Signature=1"}}}, "spec.model.storage.uri"),
    "uri with a password": ({"model": {"storage": {"uri": "https://u:p@models.example.com/m"}}}, "spec.model.storage.uri"),
    "one-letter bucket": ({"model": {"storage": {"uri": "s3://b/m"}}}, "spec.model.storage.uri"),
    "zero front-end workers": ({"model": PVC, "server": {"frontendWorkers": 0}}, "frontendWorkers"),
    "many front-end workers": ({"model": PVC, "server": {"frontendWorkers": "many"}}, "frontendWorkers"),
    "credentials without uri": ({"model": {"storage": {"pvc": {"claimName": "m"}, "credentials": {
        "serviceAccountName": "reader"}}}}, "storage.credentials and storage.cacheSizeLimit need storage.uri"),
}


@pytest.mark.parametrize("case", REJECTED)
def test_schema_and_cel_rules_reject_real_mistakes(case: str) -> None:
    spec, message = REJECTED[case]
    with pytest.raises(ApiError) as err:
        admit(spec)
    assert err.value.code == 422 and message in err.value.message
    # The models reject the same specs (so an outdated CRD in a cluster cannot let them through).
    with pytest.raises(ValidationError):
        api.ModelDeploymentSpec.model_validate(spec)


@pytest.mark.parametrize("workers", [1, 2, 64, "auto", "8"])
def test_front_end_workers_a_number_or_auto(workers: int | str) -> None:
    admit({"model": PVC, "server": {"frontendWorkers": workers}})
    api.ModelDeploymentSpec.model_validate({"model": PVC, "server": {"frontendWorkers": workers}})


def test_models_reject_what_cel_does_not_express() -> None:
    spec = {"model": PVC, "rollout": {"steps": [50, 25]}}
    admit(spec)  # the schema lets it through ...
    with pytest.raises(ValidationError, match="strictly increasing"):
        api.ModelDeploymentSpec.model_validate(spec)  # ... the operator reports it in status


def _reference_fields(model: type[api.BaseModel], prefix: str = "spec") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        out.add(path)
        ann = info.annotation
        for candidate in getattr(ann, "__args__", (ann,)):
            if isinstance(candidate, type) and issubclass(candidate, api.BaseModel):
                out |= _reference_fields(candidate, path)
    return out


def test_readme_reference_lists_every_spec_field() -> None:
    section = (ROOT / "docs" / "operator.md").read_text()
    documented = set(re.findall(r"`(spec\.[A-Za-z0-9_.]+)`", section))
    missing = _reference_fields(api.ModelDeploymentSpec) - documented
    assert not missing, f"docs/operator.md reference lacks: {sorted(missing)}"
    unknown = documented - _reference_fields(api.ModelDeploymentSpec)
    assert not unknown, f"docs/operator.md documents fields that do not exist: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["1model", "My-Model", "a.b", "x" * 64, "ends-"])
def test_names_that_cannot_name_a_service_are_rejected(name: str) -> None:
    from modeldeploy.controller.reconcile import parse_spec

    obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": {"model": PVC}}
    with pytest.raises(ApiError, match="DNS-1035"):
        validate_custom(obj, SCHEMA, strict=True)
    assert parse_spec(obj).reason == "InvalidSpec"  # an outdated CRD cannot sneak it past the operator


def test_good_names_pass() -> None:
    for name in ("a", "model-1", "x" * 63):
        obj = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": {"model": PVC}}
        validate_custom(obj, SCHEMA, strict=True)
