"""Admission: custom resources against their CRD's structural schema (defaults, pruning, types,
CEL rules), built-in kinds against kubernetes-validate's strict schemas. 422 like kube-apiserver."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from localcluster.apimachinery import ApiError, Obj

VALIDATE_K8S_VERSION = "1.33"


def apply_defaults(obj: Any, schema: Obj) -> Any:
    if isinstance(obj, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in obj and "default" in sub:
                obj[key] = copy.deepcopy(sub["default"])
            if key in obj:
                obj[key] = apply_defaults(obj[key], sub)
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in obj:
            obj[key] = apply_defaults(obj[key], schema["additionalProperties"])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(x, schema["items"]) for x in obj]
    return obj


def prune(obj: Any, schema: Obj, path: str, unknown: list[str]) -> Any:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        if "properties" in schema:
            for key in list(obj):
                if key not in schema["properties"]:
                    unknown.append(f"{path}.{key}".lstrip("."))
                    del obj[key]
                else:
                    obj[key] = prune(obj[key], schema["properties"][key], f"{path}.{key}", unknown)
        elif isinstance(schema.get("additionalProperties"), dict):
            for key in obj:
                obj[key] = prune(obj[key], schema["additionalProperties"], f"{path}.{key}", unknown)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(x, schema["items"], f"{path}[{i}]", unknown) for i, x in enumerate(obj)]
    return obj


def _json_schema(schema: Any) -> Any:
    """OpenAPI v3 structural schema → JSON schema understood by jsonschema."""
    if isinstance(schema, list):
        return [_json_schema(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _json_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True and plain in out:
            out[bound] = out.pop(plain)
        elif out.get(bound) is False:
            out.pop(bound)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _cel_value(value: Any) -> Any:
    import celpy

    return celpy.json_to_cel(value)


_CEL_CACHE: dict[str, Any] = {}


def _cel_program(rule: str) -> Any:
    import celpy

    if rule not in _CEL_CACHE:
        env = celpy.Environment()
        _CEL_CACHE[rule] = env.program(env.compile(rule))
    return _CEL_CACHE[rule]


def cel_errors(obj: Any, schema: Obj, path: str) -> list[str]:
    """Evaluate every x-kubernetes-validations rule (and list-type set) below `schema`."""
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = _cel_program(rule["rule"]).evaluate({"self": _cel_value(obj)})
        except Exception as exc:  # an evaluation error is a rejection, as in kube-apiserver
            ok, rule = False, {**rule, "message": f"{rule.get('message', rule['rule'])} (evaluation error: {exc})"}
        if not bool(ok):
            errors.append(f"{path or '<root>'}: Invalid value: \"object\": {rule.get('message') or 'failed rule: ' + rule['rule']}")
    if schema.get("x-kubernetes-list-type") == "set" and isinstance(obj, list):
        seen = [json.dumps(x, sort_keys=True) for x in obj]
        if len(set(seen)) != len(seen):
            errors.append(f"{path}: Duplicate value: list-type set holds a value twice")
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                errors += cel_errors(obj[key], sub, f"{path}.{key}".lstrip("."))
        if isinstance(schema.get("additionalProperties"), dict):
            for key, value in obj.items():
                errors += cel_errors(value, schema["additionalProperties"], f"{path}.{key}".lstrip("."))
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, x in enumerate(obj):
            errors += cel_errors(x, schema["items"], f"{path}[{i}]")
    return errors


def validate_custom(obj: Obj, schema: Obj, strict: bool) -> None:
    """Default, prune and validate a custom resource in place; raise 422 like kube-apiserver."""
    import jsonschema

    kind, name = obj.get("kind", ""), obj.get("metadata", {}).get("name", "")
    apply_defaults(obj, schema)
    unknown: list[str] = []
    body = {k: v for k, v in obj.items() if k != "metadata"}
    body = prune(body, {**schema, "properties": {k: v for k, v in schema.get("properties", {}).items() if k != "metadata"}}, "", unknown)
    unknown = [u for u in unknown if u not in ("apiVersion", "kind")]
    metadata = obj.get("metadata")
    obj.clear()
    obj.update(body)
    errors: list[str] = []
    if strict and unknown:
        errors += [f'unknown field "{u}"' for u in unknown]
    validator = jsonschema.Draft7Validator(_json_schema({**schema, "properties": {k: v for k, v in schema.get("properties", {}).items() if k != "metadata"}}))
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        errors.append(f"{where}: Invalid value: {err.message}")
    obj["metadata"] = metadata
    if not errors:
        errors += cel_errors(obj, schema, "")
    if errors:
        raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: ' + "; ".join(errors),
                       {"name": name, "kind": kind, "causes": [{"message": e} for e in errors]})


_BUILTIN_VALIDATORS: dict[tuple[str, str], Any] = {}


def _builtin_validator(api_version: str, kind: str) -> Any:
    """kubernetes-validate's strict schema for a kind, compiled once (it reloads every file per call)."""
    key = (api_version, kind)
    if key not in _BUILTIN_VALIDATORS:
        import jsonschema
        from kubernetes_validate import utils
        from referencing import Registry
        from referencing import Resource as RefResource

        version = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(VALIDATE_K8S_VERSION)][-1]
        folder = f"kubernetes-json-schema/v{version}-local-strict"
        group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", VALIDATE_K8S_VERSION)
        except FileNotFoundError:
            _BUILTIN_VALIDATORS[key] = None
            return None
        defs = utils.schema_contents(f"{folder}/_definitions.json", VALIDATE_K8S_VERSION)
        registry = RefResource.from_contents(defs) @ (RefResource.from_contents(schema) @ Registry())
        _BUILTIN_VALIDATORS[key] = jsonschema.validators.Draft202012Validator(schema, registry=registry)
    return _BUILTIN_VALIDATORS[key]


def validate_builtin(obj: Obj) -> None:
    """Validate a built-in kind as `kubernetes-validate --strict` does; 422 like kube-apiserver."""
    import jsonschema

    validator = _builtin_validator(obj.get("apiVersion", ""), obj.get("kind", ""))
    if validator is None:
        return
    try:
        validator.validate(obj)
    except jsonschema.ValidationError as exc:
        name = obj.get("metadata", {}).get("name", "")
        where = ".".join(str(p) for p in exc.absolute_path)
        raise ApiError(422, "Invalid", f'{obj.get("kind")} "{name}" is invalid: {where}: {exc.message}') from None
