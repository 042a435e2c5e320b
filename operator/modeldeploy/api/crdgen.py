"""Generate the ModelDeployment CRD from the pydantic models (`make crds`).

`python -m modeldeploy.api.crdgen --out crds` writes `crds/modeldeployments.yaml`. The conversion turns
pydantic's JSON schema into a Kubernetes structural schema: `$ref`s inlined, `Optional` unions
collapsed, titles dropped, int-or-string quantities marked, CEL rules kept as
`x-kubernetes-validations`. A test regenerates the CRD and fails when the committed file differs.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from modeldeploy.api import v1alpha1 as api

_DROP = {"title"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(x, defs) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target.update(rest)
        return _inline(target, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k not in _DROP and k != "$defs"}


def _structural(node: Any) -> Any:
    """Rewrite a JSON schema node into a structural OpenAPI v3 schema node."""
    if isinstance(node, list):
        return [_structural(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if node.get("x-kubernetes-int-or-string"):  # a quantity, unless the field names its own string pattern and bounds
        number: dict[str, Any] = {"type": "integer"}
        for k in ("minimum", "maximum"):
            if node.get(f"x-{k}") is not None:
                number[k] = node[f"x-{k}"]
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True, "anyOf": [
            number, {"type": "string", "pattern": node.get("x-string-pattern", api.QUANTITY_PATTERN)}]}
        for k in ("description", "default"):
            if node.get(k) is not None:
                out[k] = node[k]
        return out
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            merged = dict(options[0])
            merged.update({k: v for k, v in node.items() if k != "default" or v is not None})
            node = merged
        else:
            node["anyOf"] = options
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain], node[bound] = node[bound], True  # OpenAPI v3.0 spelling
    if node.get("default", 0) is None:
        node.pop("default")
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key])
    if "anyOf" in node:
        node["anyOf"] = [_structural(x) for x in node["anyOf"]]
    return node


def schema_of(model: type[api.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(_inline(raw, raw.get("$defs", {})))


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".status.modelName"},
    {"name": "Versions", "type": "string", "jsonPath": ".status.versionsSummary"},
    {"name": "Labels", "type": "string", "jsonPath": ".status.labelsSummary", "priority": 1},
    {"name": "Stable", "type": "integer", "jsonPath": ".status.versionLabels.stable"},
    {"name": "Canary", "type": "integer", "jsonPath": ".status.versionLabels.canary"},
    {"name": "Traffic", "type": "string", "jsonPath": ".status.trafficSummary"},
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
    {"name": "Weight", "type": "integer", "jsonPath": ".status.rollout.weight"},
    {"name": "Autoscaler", "type": "string", "jsonPath": ".status.autoscaler.summary"},
    # scale to zero (wide: `kubectl get md -o wide`): the condition, the requests held now, the last cold start
    {"name": "Zero", "type": "string", "jsonPath": '.status.conditions[?(@.type=="ScaledToZero")].status', "priority": 1},
    {"name": "Held", "type": "integer", "jsonPath": ".status.scaleToZero.heldRequests", "priority": 1},
    {"name": "ColdStart", "type": "number", "jsonPath": ".status.scaleToZero.lastColdStart.seconds", "priority": 1},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.desiredReplicas"},
    {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def build_crd() -> dict[str, Any]:
    spec_schema = schema_of(api.ModelDeploymentSpec)
    status_schema = schema_of(api.ModelDeploymentStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "modeldeploy", "app.kubernetes.io/part-of": "modeldeploy"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["all", "modeldeploy"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    # scale: `kubectl scale md`, and an HPA or KEDA aimed at the ModelDeployment itself,
                    # set spec.replicas (without spec.autoscaling) and read status.replicas/selector
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas",
                                                           "statusReplicasPath": ".status.replicas",
                                                           "labelSelectorPath": ".status.selector"}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A TensorFlow model served by model-server pods, managed by the modeldeploy operator.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [api.NAME_RULE],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    header = "# Generated by `make crds` (python -m modeldeploy.api.crdgen) from modeldeploy/api/v1alpha1.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy.api.crdgen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="crds", help="output directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{api.PLURAL}.yaml"
    path.write_text(render_yaml())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
