"""The local API server's OpenAPI documents (pure): v3 (`/openapi/v3`, one document per group-version)
and v2 (`/openapi/v2`), as kube-apiserver publishes them for the kinds it serves.

Built-in kinds' schemas come from the Kubernetes definitions that `kubernetes-validate` bundles (the
same Kubernetes version the API server reports and admission validates against), turned back from
JSON Schema into OpenAPI: `#/$defs/X` references become `#/components/schemas/X` (v3, wrapped in
`allOf` where the reference has a description, as kube-apiserver writes them) or `#/definitions/X`
(v2), `[T, "null"]` types become `T`, IntOrString becomes `{type: string, format: int-or-string}` and
Quantity `{type: string}`. Their extensions stay: `x-kubernetes-group-version-kind`, the
strategic-merge keys (`x-kubernetes-patch-merge-key`, `-patch-strategy`) that `kubectl apply`
reads, list types and map keys. Custom resources' schemas are their CRD's `openAPIV3Schema` (with
`apiVersion`, `kind` and `metadata` added, as kube-apiserver adds them; for v2 without the
constructs v2 cannot say: nullable, anyOf/oneOf/allOf/not, CEL rules).

Each document holds the served kinds of its group-version, their lists, and every definition they
reference; its paths give each kind's create, update and patch operations with the
`fieldValidation` parameter, which is how kubectl and Helm learn that the server validates fields
itself (`--validate=strict` then leaves it to the server).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from typing import Any

from localcluster.admission import VALIDATE_K8S_VERSION
from localcluster.apimachinery import Obj, Resource

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"},
}
_V2_UNSAYABLE = ("nullable", "anyOf", "oneOf", "allOf", "not", "x-kubernetes-validations")


@functools.cache
def _definitions() -> dict[str, Obj]:
    from kubernetes_validate import utils

    version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(VALIDATE_K8S_VERSION)][-1]
    doc = json.loads(json.dumps(utils.schema_contents(f"kubernetes-json-schema/v{version}-local/_definitions.json",
                                                      VALIDATE_K8S_VERSION)))
    return dict(doc["$defs"])


def _convert(schema: Any, ref_prefix: str, wrap_refs: bool) -> Any:
    """kubernetes-validate's JSON Schema -> OpenAPI (v3 when wrap_refs, else v2)."""
    if isinstance(schema, list):
        return [_convert(x, ref_prefix, wrap_refs) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out: Obj = {}
    for key, value in schema.items():
        if key in ("$schema", "$id"):
            continue
        if key == "$ref":
            out[key] = ref_prefix + value.rsplit("/", 1)[-1]
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            out[key] = kinds[0] if len(kinds) == 1 else kinds
        elif key in ("properties", "patternProperties"):
            out[key] = {k: _convert(v, ref_prefix, wrap_refs) for k, v in value.items()}
        elif key in ("enum", "default", "required", "x-kubernetes-group-version-kind", "x-kubernetes-list-map-keys", "example"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = _convert(value, ref_prefix, wrap_refs)
    if wrap_refs and "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}]
    return out


def _refs(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[-1]} if isinstance(schema.get("$ref"), str) else set()
        for key, value in schema.items():
            if key not in ("enum", "default", "example"):
                found |= _refs(value)
        return found
    if isinstance(schema, list):
        return set().union(*(_refs(x) for x in schema)) if schema else set()
    return set()


def _builtin_names(resources: Iterable[Resource]) -> set[str]:
    """The definitions of the served built-in kinds (and their lists), by their GVK extension."""
    served = {(r.group, r.version, k) for r in resources if not r.custom for k in (r.kind, r.kind + "List")}
    return {name for name, d in _definitions().items()
            if any((g.get("group", ""), g.get("version", ""), g.get("kind", "")) in served
                   for g in d.get("x-kubernetes-group-version-kind") or [])}


def _closure(names: set[str]) -> set[str]:
    defs, seen, todo = _definitions(), set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        todo += list(_refs(defs[name]) - seen)
    return seen


def _definition(name: str, ref_prefix: str, v3: bool) -> Obj:
    d = _definitions()[name]
    if name in _SPECIAL:
        return {**({"description": d["description"]} if "description" in d else {}), **_SPECIAL[name]}
    return dict(_convert(d, ref_prefix, v3))


def schema_name(r: Resource) -> str:
    """kube-apiserver's definition name for a kind: io.k8s.api.<group>.<version>.<Kind> for built-ins
    (core for ""), the reversed group for custom resources (com.example.v1.Widget)."""
    if r.custom:
        return f"{'.'.join(reversed(r.group.split('.')))}.{r.version}.{r.kind}"
    found = [n for n in _builtin_names([r]) if n.endswith(f".{r.kind}")]
    return found[0] if found else f"io.k8s.api.{r.group.split('.')[0] or 'core'}.{r.version}.{r.kind}"


def _custom(r: Resource, ref_prefix: str, v3: bool) -> Obj:
    schema: Obj = copy.deepcopy(r.schema) if r.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if not v3:
        schema = dict(_strip(schema))
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."})
    props.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."})
    meta = {"$ref": f"{ref_prefix}{META}.ObjectMeta"}
    props["metadata"] = {"allOf": [meta], "description": "Standard object's metadata."} if v3 else {**meta, "description": "Standard object's metadata."}
    schema["type"] = "object"
    schema["x-kubernetes-group-version-kind"] = [{"group": r.group, "kind": r.kind, "version": r.version}]
    return schema


def _strip(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "default", "example") else _strip(v)) for k, v in schema.items() if k not in _V2_UNSAYABLE}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    return out


def _paths(resources: list[Resource], ref_prefix: str, v3: bool) -> Obj:
    param: Obj = {"name": "fieldValidation", "in": "query", "uniqueItems": True,
                  "description": "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields."}
    if v3:
        param["schema"] = {"type": "string"}
    else:
        param["type"] = "string"
    paths: Obj = {}
    for r in resources:
        prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
        coll = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        ref = {"$ref": ref_prefix + schema_name(r)}
        ok = {"200": {"description": "OK", **({"content": {"application/json": {"schema": ref}}} if v3 else {"schema": ref})}}

        def op(action: str, gvk: Obj = gvk, ok: Obj = ok) -> Obj:
            return {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": action, "parameters": [param], "responses": ok}

        paths[coll] = {"post": op("post")}
        paths[coll + "/{name}"] = {"put": op("put"), "patch": op("patch")}
    return paths


def v3(resources: Iterable[Resource], gv_parts: list[str], hash_: int) -> Obj:
    """`/openapi/v3` (the index of group-versions) or `/openapi/v3/api/v1`, `/openapi/v3/apis/G/V`."""
    served = list(resources)
    if not gv_parts:
        gvs = sorted({(r.group, r.version) for r in served})
        return {"paths": {(rel := f"apis/{g}/{v}" if g else f"api/{v}"): {"serverRelativeURL": f"/openapi/v3/{rel}?hash={hash_}"}
                          for g, v in gvs}}
    g, v = ("", gv_parts[1]) if gv_parts[0] == "api" else (gv_parts[1], gv_parts[2]) if len(gv_parts) > 2 else ("", "")
    mine = [r for r in served if (r.group, r.version) == (g, v)]
    prefix = "#/components/schemas/"
    schemas = {n: _definition(n, prefix, True) for n in sorted(_closure(_builtin_names(mine)))}
    for r in mine:
        if r.custom:
            schemas[schema_name(r)] = _custom(r, prefix, True)
            schemas.update({n: _definition(n, prefix, True) for n in _closure({f"{META}.ObjectMeta"})})
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": f"v{VALIDATE_K8S_VERSION}.0"},
            "paths": _paths(mine, prefix, True), "components": {"schemas": schemas}}


def v2(resources: Iterable[Resource]) -> Obj:
    """`/openapi/v2`: every served kind in one Swagger 2.0 document."""
    served = list(resources)
    prefix = "#/definitions/"
    definitions = {n: _definition(n, prefix, False) for n in sorted(_closure(_builtin_names(served) | {f"{META}.ObjectMeta"}))}
    for r in served:
        if r.custom:
            definitions[schema_name(r)] = _custom(r, prefix, False)
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": f"v{VALIDATE_K8S_VERSION}.0"},
            "paths": _paths(served, prefix, False), "definitions": definitions}
