"""A small, faithful fake kube-apiserver for tests (aiohttp, in a background thread).

There is no real API server on the test machines, so the real kopf operator and the real kubectl
run against this one. It behaves like kube-apiserver wherever modeldeploy relies on it:

- discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`, `/version`) incl. CRDs registered at runtime
  (creating a CustomResourceDefinition serves its resource, with short names and printer columns);
- CRUD: GET/LIST (label and field selectors), POST (generateName, AlreadyExists), PUT (resourceVersion
  precondition, 409 Conflict), DELETE (finalizers, deletionTimestamp, ownerReference cascade GC with
  Background/Foreground/Orphan propagation), PATCH as JSON merge patch, JSON patch (a failed `test`
  gives 422), strategic merge patch (lists of named items merged by name; 415 for custom resources),
  and server-side apply (`application/apply-patch+yaml`, per-field-manager: fields a manager applied
  before and leaves out now are removed; lists are atomic);
- `metadata.uid/resourceVersion/creationTimestamp/generation` stamped; generation bumps on spec
  changes only; the status subresource is isolated (the main resource ignores status, `/status`
  changes only status);
- watch with resume: `?watch=true&resourceVersion=N` replays every event after N (410 Gone once the
  history has been compacted with `compact()`), label/field selectors, `timeoutSeconds`;
- validation: custom resources against their CRD's structural schema (defaults applied, unknown
  fields pruned or rejected with `fieldValidation=Strict`, types, enums, bounds, patterns, required,
  `x-kubernetes-list-type: set`, and the CEL rules in `x-kubernetes-validations`, evaluated with
  cel-python); built-in kinds with `kubernetes-validate --strict` (422 with the reason);
- server-side printing (`Accept: ...;as=Table`) so `kubectl get md` shows the CRD's printer columns;
- an optional Deployment controller stand-in (`simulate_deployments=True`): it reports every
  Deployment's pods as ready shortly after each change (`set_deployment_ready` overrides it).

Every resource request is recorded in an audit log of (verb, apiGroup, resource, subresource,
namespace, name, userAgent, code): `fake.audit()` returns it, `fake.write_audit(path)` writes JSON,
`fake.audit_rules(user_agent_prefix)` returns the distinct (verb, group, resource, subresource)
tuples, e.g. to check a Helm chart's RBAC against what the operator really calls.

Usage::

    from localcluster.fakeapi import FakeKubeAPI

    with FakeKubeAPI() as fake:                 # serves http://127.0.0.1:<free port>
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        fake.apply_yaml(Path("crds/modeldeployments.yaml").read_text())
        ...  # run kopf / kubectl with KUBECONFIG=kubeconfig
        fake.get("apps", "deployments", "ns", "name")    # direct access, not audited
        fake.audit_rules("modeldeploy")

Known gaps (not relied on): no authn/authz, no admission webhooks, no pods/scheduling, watches do not
send DELETED when an object stops matching a label selector, SSA reports no field conflicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    has_status: bool = False
    schema: Obj | None = None
    printer_columns: list[Obj] = field(default_factory=list)
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class AuditEntry:
    verb: str
    apiGroup: str
    resource: str
    subresource: str
    namespace: str
    name: str
    userAgent: str
    code: int


BUILTINS = [
    Resource("", "v1", "namespaces", "Namespace", False, "namespace", ["ns"], has_status=True),
    Resource("", "v1", "configmaps", "ConfigMap", True, "configmap", ["cm"]),
    Resource("", "v1", "services", "Service", True, "service", ["svc"], has_status=True),
    Resource("", "v1", "events", "Event", True, "event", ["ev"]),
    Resource("", "v1", "pods", "Pod", True, "pod", ["po"], has_status=True),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, "persistentvolumeclaim", ["pvc"], has_status=True),
    Resource("", "v1", "secrets", "Secret", True, "secret"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ["sa"]),
    Resource("apps", "v1", "deployments", "Deployment", True, "deployment", ["deploy"], has_status=True),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, "poddisruptionbudget", ["pdb"], has_status=True),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, "horizontalpodautoscaler", ["hpa"], has_status=True),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False, "customresourcedefinition", ["crd", "crds"], has_status=True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    Resource("events.k8s.io", "v1", "events", "Event", True, "event", ["ev"]),
]
# Kinds that carry metadata.generation (everything with a spec).
_NO_GENERATION = {"configmaps", "events", "secrets", "serviceaccounts", "leases"}
VALIDATE_K8S_VERSION = "1.33"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- pure helpers ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    """Strategic merge patch, approximated: lists whose items all have a `name` merge by name."""
    if isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        result = copy.deepcopy(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                result.pop(k, None)
            else:
                merged = strategic_merge(result.get(k), v)
                if merged is None:
                    result.pop(k, None)
                else:
                    result[k] = merged
        return result
    if isinstance(patch, list) and isinstance(target, list) and all(
        isinstance(x, dict) and "name" in x for x in patch + target
    ):
        by_name = {x["name"]: copy.deepcopy(x) for x in target}
        order = [x["name"] for x in target]
        for item in patch:
            if item.get("$patch") == "delete":
                by_name.pop(item["name"], None)
                continue
            if item["name"] not in by_name:
                order.append(item["name"])
            by_name[item["name"]] = strategic_merge(by_name.get(item["name"]), item)
        return [by_name[n] for n in order if n in by_name]
    return copy.deepcopy(patch)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Leaf paths of a JSON object (lists are atomic leaves)."""
    if isinstance(obj, dict) and obj:
        out: set[tuple[str, ...]] = set()
        for k, v in obj.items():
            out |= _paths(v, (*prefix, k))
        return out
    return {prefix}


def _remove_path(obj: Obj, path: tuple[str, ...]) -> None:
    node: Any = obj
    parents = []
    for k in path[:-1]:
        if not isinstance(node, dict) or k not in node:
            return
        parents.append((node, k))
        node = node[k]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, k in reversed(parents):  # drop maps left empty by the removal
        if parent[k] == {}:
            del parent[k]
        else:
            break


def server_side_apply(live: Obj | None, intent: Obj, previous_intent: Obj | None) -> Obj:
    """Apply `intent` for one field manager: merge it in, drop what that manager owned before and left out."""
    result = copy.deepcopy(live) if live else {}
    if previous_intent:
        for path in _paths(previous_intent) - _paths(intent):
            if path and path[0] != "metadata" or path[:2] in {("metadata", "labels"), ("metadata", "annotations")}:
                _remove_path(result, path)
    return _deep_merge(result, intent)


def _deep_merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            out[k] = _deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(top)


Pred = Callable[[dict[str, str]], bool]


def _pred(key: str, op: str, values: frozenset[str]) -> Pred:
    def check(labels: dict[str, str]) -> bool:
        if op == "in":
            return labels.get(key) in values
        if op == "notin":
            return labels.get(key) not in values
        if op == "exists":
            return key in labels
        if op == "!exists":
            return key not in labels
        if op == "!=":
            return labels.get(key) not in values
        return labels.get(key) in values  # = and ==

    return check


def parse_label_selector(text: str) -> list[Pred]:
    """kube label selector syntax: a=b, a==b, a!=b, a in (x,y), a notin (x), a, !a."""
    preds: list[Pred] = []
    for raw in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        term = raw.strip().strip(",").strip()
        if not term:
            continue
        m = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", term)
        if m:
            preds.append(_pred(m.group(1), m.group(2), frozenset(v.strip() for v in m.group(3).split(","))))
            continue
        m = re.match(r"^([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)$", term)
        if m:
            preds.append(_pred(m.group(1), m.group(2), frozenset([m.group(3)])))
        elif term.startswith("!"):
            preds.append(_pred(term[1:].strip(), "!exists", frozenset()))
        else:
            preds.append(_pred(term, "exists", frozenset()))
    return preds


def matches(obj: Obj, label_preds: list[Pred], field_sel: str) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    if not all(p(labels) for p in label_preds):
        return False
    for term in filter(None, (field_sel or "").split(",")):
        m = re.match(r"^([\w.]+)\s*(==|!=|=)\s*(.*)$", term)
        if not m:
            continue
        path, op, val = m.groups()
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        actual = "" if node is None else str(node)
        if (actual == val) == (op == "!="):
            return False
    return True


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The subset of kubectl JSONPath used by printer columns: .a.b, .a[0], .a[?(@.k=="v")].b."""
    nodes = [obj]
    for step in re.findall(r"\.[\w-]+|\[\?\(@\.[\w-]+\s*==\s*['\"][^'\"]*['\"]\)\]|\[\d+\]|\[\*\]", path):
        nxt: list[Any] = []
        for node in nodes:
            if step.startswith("."):
                if isinstance(node, dict) and step[1:] in node:
                    nxt.append(node[step[1:]])
            elif step == "[*]":
                if isinstance(node, list):
                    nxt.extend(node)
            elif step.startswith("[?"):
                m = re.match(r"\[\?\(@\.([\w-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]", step)
                assert m
                if isinstance(node, list):
                    nxt.extend(x for x in node if isinstance(x, dict) and str(x.get(m.group(1))) == m.group(2))
            else:
                i = int(step[1:-1])
                if isinstance(node, list) and i < len(node):
                    nxt.append(node[i])
        nodes = nxt
    return nodes


def age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


# --- structural schema: defaulting, pruning, validation ---------------------------------------------


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


# --- the server -------------------------------------------------------------------------------------


Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


class FakeKubeAPI:
    """The fake API server. Start with `start()` (or as a context manager); stop with `stop()`."""

    def __init__(self, simulate_deployments: bool = True, validate_builtins: bool = True):
        self.simulate_deployments = simulate_deployments
        self.validate_builtins = validate_builtins
        self.resources: dict[tuple[str, str], Resource] = {}
        for r in BUILTINS:
            self.resources[(r.group, r.plural)] = r
        self.objects: dict[Key, Obj] = {}
        self.applied: dict[tuple[Key, str, str], Obj] = {}  # (key, manager, subresource) -> last intent
        self.history: list[tuple[int, str, str, str, Obj]] = []  # (rv, type, group, plural, object)
        self.compacted_rv = 0
        self.rv = 0
        self.lock = threading.RLock()
        self._audit: list[AuditEntry] = []
        self._watchers: list[tuple[str, str, asyncio.Queue[Any]]] = []
        self._deployment_overrides: dict[tuple[str, str], int] = {}
        self.fail_next: list[tuple[str, str, int]] = []  # (verb, plural, code): inject one transient error
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # -- lifecycle --
    def start(self) -> FakeKubeAPI:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        started = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            self.loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock)
            self.loop.run_until_complete(site.start())
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="fake-kube-apiserver", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        if self.loop and self._thread:
            for _, _, q in list(self._watchers):
                self.loop.call_soon_threadsafe(q.put_nowait, None)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        path = Path(path)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    # -- audit --
    def audit(self) -> list[AuditEntry]:
        with self.lock:
            return list(self._audit)

    def audit_rules(self, user_agent_prefix: str = "") -> set[tuple[str, str, str, str]]:
        return {
            (a.verb, a.apiGroup, a.resource, a.subresource)
            for a in self.audit()
            if a.userAgent.startswith(user_agent_prefix)
        }

    def write_audit(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps([asdict(a) for a in self.audit()], indent=1))

    def clear_audit(self) -> None:
        with self.lock:
            self._audit.clear()

    # -- direct access for tests (not audited) --
    def resource_for(self, api_version: str, kind: str) -> Resource:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for r in self.resources.values():
            if r.group == group and r.kind == kind:
                return r
        raise ApiError(404, "NotFound", f"no resource for {api_version} {kind}")

    def add_object(self, obj: Obj) -> Obj:
        r = self.resource_for(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace", "default") if r.namespaced else ""
        return self.create(r, ns, copy.deepcopy(obj))

    def apply_yaml(self, text: str, namespace: str = "default") -> list[Obj]:
        out = []
        for doc in yaml.safe_load_all(text):
            if doc:
                r = self.resource_for(doc["apiVersion"], doc["kind"])
                if r.namespaced:
                    doc["metadata"].setdefault("namespace", namespace)
                out.append(self.create(r, doc["metadata"].get("namespace", "") if r.namespaced else "", doc))
        return out

    def get(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self.objects.get((group, plural, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list_objects(self, group: str, plural: str, namespace: str | None = None) -> list[Obj]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self.objects.items())
                if g == group and p == plural and (namespace is None or ns == namespace)
            ]

    def set_deployment_ready(self, namespace: str, name: str, ready: int) -> None:
        """Pretend `ready` pods of a Deployment are ready (overrides simulate_deployments)."""
        with self.lock:
            self._deployment_overrides[(namespace, name)] = ready
            obj = self.objects.get(("apps", "deployments", namespace, name))
            if obj:
                self._write_deployment_status(namespace, name)

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resourceVersions get 410 Gone."""
        with self.lock:
            self.compacted_rv = self.rv
            self.history.clear()

    # -- core operations --
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, etype: str, r: Resource, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = copy.deepcopy(obj)
        self.history.append((rv, etype, r.group, r.plural, snapshot))
        if self.loop is None:
            return
        for group, plural, q in list(self._watchers):
            if group == r.group and plural == r.plural:
                self.loop.call_soon_threadsafe(q.put_nowait, (rv, etype, snapshot))

    def _admit(self, r: Resource, obj: Obj, strict: bool) -> None:
        if r.custom and r.schema:
            validate_custom(obj, r.schema, strict)
        elif self.validate_builtins and not r.custom:
            validate_builtin(obj)

    def create(self, r: Resource, namespace: str, obj: Obj, strict: bool = False, dry_run: bool = False) -> Obj:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{r.kind} is invalid: metadata.name: Required value")
            if r.namespaced:
                if meta.get("namespace", namespace) != namespace:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
                meta["namespace"] = namespace
                if r.plural != "events" and ("", "namespaces", "", namespace) not in self.objects:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            key = (r.group, r.plural, namespace, name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{r.plural}.{r.group} "{name}" already exists'.replace(". ", " "),
                               {"name": name, "group": r.group, "kind": r.plural})
            obj["apiVersion"], obj["kind"] = r.api_version, r.kind
            if r.has_status and r.custom:
                obj.pop("status", None)
            meta.update({"uid": str(uuid.uuid4()), "creationTimestamp": now()})
            meta.pop("resourceVersion", None)
            meta.pop("deletionTimestamp", None)
            if r.plural not in _NO_GENERATION:
                meta["generation"] = 1
            self._admit(r, obj, strict)
            if dry_run:
                return obj
            meta["resourceVersion"] = self._bump()
            self.objects[key] = obj
            if r.plural == "customresourcedefinitions":
                self._register_crd(obj)
            self._emit("ADDED", r, obj)
            self._after_write(r, obj)
            return copy.deepcopy(obj)

    def update(self, r: Resource, namespace: str, name: str, new: Obj, subresource: str = "", strict: bool = False) -> Obj:
        with self.lock:
            key = (r.group, r.plural, namespace, name)
            old = self.objects.get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found', {"name": name, "kind": r.plural})
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been modified; please apply your changes to the latest version and try again',
                               {"name": name, "kind": r.plural})
            new = copy.deepcopy(new)
            new["apiVersion"], new["kind"] = r.api_version, r.kind
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            for k in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "generation"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            meta["name"] = name
            if subresource == "status":
                merged = copy.deepcopy(old)
                merged["status"] = new.get("status")
                if merged["status"] is None:
                    merged.pop("status")
                new = merged
            elif r.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            self._admit(r, new, strict)  # status writes are validated (and pruned) too
            spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            if "generation" in old["metadata"] and spec_of(new) != spec_of(old):
                meta["generation"] = old["metadata"]["generation"] + 1
            if new == {**old, "metadata": {**old["metadata"], "resourceVersion": new["metadata"].get("resourceVersion", old["metadata"]["resourceVersion"])}}:
                return copy.deepcopy(old)  # no-op writes do not bump resourceVersion
            if old["metadata"].get("deletionTimestamp") and not meta.get("finalizers"):
                meta["resourceVersion"] = self._bump()
                self.objects[key] = new
                self._finish_delete(r, key, "Background")
                return copy.deepcopy(new)
            meta["resourceVersion"] = self._bump()
            self.objects[key] = new
            if r.plural == "customresourcedefinitions":
                self._register_crd(new)
            self._emit("MODIFIED", r, new)
            self._after_write(r, new)
            return copy.deepcopy(new)

    def delete(self, r: Resource, namespace: str, name: str, propagation: str = "Background") -> Obj:
        with self.lock:
            key = (r.group, r.plural, namespace, name)
            obj = self.objects.get(key)
            if obj is None:
                raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found', {"name": name, "kind": r.plural})
            if propagation == "Foreground":
                obj = copy.deepcopy(obj)
                obj["metadata"].setdefault("finalizers", [])
                if "foregroundDeletion" not in obj["metadata"]["finalizers"]:
                    obj["metadata"]["finalizers"].append("foregroundDeletion")
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    obj = copy.deepcopy(obj)
                    obj["metadata"]["deletionTimestamp"] = now()
                    obj["metadata"]["deletionGracePeriodSeconds"] = 0
                    obj["metadata"]["resourceVersion"] = self._bump()
                    self.objects[key] = obj
                    self._emit("MODIFIED", r, obj)
                if propagation == "Foreground":
                    self._collect(obj["metadata"]["uid"], "Background")
                    fins = [f for f in obj["metadata"]["finalizers"] if f != "foregroundDeletion"]
                    return self.update(r, namespace, name, {**obj, "metadata": {**obj["metadata"], "finalizers": fins}})
                return copy.deepcopy(obj)
            return self._finish_delete(r, key, propagation)

    def _finish_delete(self, r: Resource, key: Key, propagation: str) -> Obj:
        obj = self.objects.pop(key)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", r, obj)
        for applied_key in [a for a in self.applied if a[0] == key]:
            del self.applied[applied_key]
        if r.plural == "namespaces":
            for k in [k for k in self.objects if k[2] == key[3] and k[2]]:
                if k in self.objects:
                    self._finish_delete(self.resources[(k[0], k[1])], k, "Background")
        self._collect(obj["metadata"]["uid"], propagation)
        return copy.deepcopy(obj)

    def _collect(self, owner_uid: str, propagation: str) -> None:
        """The garbage collector: dependents of a deleted owner go too (or are orphaned)."""
        for key, dep in list(self.objects.items()):
            refs = dep["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            res = self.resources[(key[0], key[1])]
            rest = [ref for ref in refs if ref.get("uid") != owner_uid]
            if propagation == "Orphan" or rest:
                new = copy.deepcopy(dep)
                new["metadata"]["ownerReferences"] = rest
                if not rest:
                    del new["metadata"]["ownerReferences"]
                self.update(res, key[2], key[3], new)
            elif key in self.objects:
                self.delete(res, key[2], key[3], "Background")

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        version = next((v for v in spec["versions"] if v.get("storage")), spec["versions"][0])
        names = spec["names"]
        self.resources[(spec["group"], names["plural"])] = Resource(
            spec["group"], version["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
            names.get("singular", names["kind"].lower()), list(names.get("shortNames", [])),
            list(names.get("categories", [])), "status" in (version.get("subresources") or {}),
            (version.get("schema") or {}).get("openAPIV3Schema"), list(version.get("additionalPrinterColumns", [])), True,
        )
        status = {
            "acceptedNames": names,
            "storedVersions": [version["name"]],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        }
        if crd.get("status") != status:
            crd["status"] = status

    def _orphaned(self, obj: Obj) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return False
        uids = {o["metadata"]["uid"] for o in self.objects.values()}
        return all(ref.get("uid") not in uids for ref in refs)

    def _collect_orphan(self, r: Resource, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.objects.get((r.group, r.plural, namespace, name))
            if obj is not None and self._orphaned(obj):
                self.delete(r, namespace, name, "Background")

    # -- the Deployment controller stand-in --
    def _after_write(self, r: Resource, obj: Obj) -> None:
        if self._orphaned(obj) and self.loop is not None:
            # As the real garbage collector: a dependent whose owners are all gone is deleted.
            ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self._collect_orphan, r, ns, name)
        if r.plural == "deployments" and (self.simulate_deployments or self._deployment_overrides):
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self._write_deployment_status, ns, name)

    def _write_deployment_status(self, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.objects.get(("apps", "deployments", namespace, name))
            if obj is None:
                return
            wanted = obj["spec"].get("replicas", 1)
            ready = min(wanted, self._deployment_overrides.get((namespace, name), wanted if self.simulate_deployments else 0))
            gen = obj["metadata"]["generation"]
            status = {
                "observedGeneration": gen,
                "replicas": wanted,
                "updatedReplicas": wanted,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "unavailableReplicas": wanted - ready,
                "conditions": [
                    {"type": "Available", "status": "True" if ready >= wanted else "False",
                     "reason": "MinimumReplicasAvailable" if ready >= wanted else "MinimumReplicasUnavailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" if ready >= wanted else "ReplicaSetUpdated"},
                ],
            }
            if obj.get("status") != status:
                self.update(self.resources[("apps", "deployments")], namespace, name, {**obj, "status": status}, subresource="status")

    # -- HTTP --
    def _record(self, request: web.Request, verb: str, r: Resource | None, sub: str, ns: str, name: str, code: int) -> None:
        if r is None:
            return
        with self.lock:
            self._audit.append(AuditEntry(verb, r.group, r.plural, sub, ns, name, request.headers.get("User-Agent", ""), code))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb, r, sub, ns, name = "", None, "", "", ""
        try:
            parts = [p for p in request.path.split("/") if p]
            if not parts or parts[0] not in ("api", "apis"):
                if request.path == "/version":
                    return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})
                if parts[:2] == ["openapi", "v3"]:
                    return web.json_response(self._openapi_v3(parts[2:]))
                if request.path in ("/healthz", "/livez", "/readyz"):
                    return web.Response(text="ok")
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            discovery = self._discovery(parts)
            if discovery is not None:
                return web.json_response(discovery)
            r, ns, name, sub = self._route(parts)
            verb = self._verb(request.method, name, request.query)
            injected = next((f for f in self.fail_next if f[0] == verb and f[1] == r.plural), None)
            if injected:
                self.fail_next.remove(injected)
                raise ApiError(injected[2], "InternalError" if injected[2] >= 500 else "Conflict", "injected failure")
            if verb == "watch":
                self._record(request, verb, r, sub, ns, name, 200)
                return await self._watch(request, r, ns)
            body = await self._dispatch(request, verb, r, ns, name, sub)
            self._record(request, verb, r, sub, ns, name, 201 if verb == "create" else 200)
            if verb in ("list",) and "as=Table" in request.headers.get("Accept", ""):
                body = self._table(r, body["items"], body["metadata"])
            elif verb == "get" and "as=Table" in request.headers.get("Accept", ""):
                body = self._table(r, [body], {"resourceVersion": body["metadata"]["resourceVersion"]})
            return web.json_response(body, status=201 if verb == "create" else 200)
        except ApiError as exc:
            self._record(request, verb, r, sub, ns, name, exc.code)
            return web.json_response(exc.status(), status=exc.code)

    def _discovery(self, parts: list[str]) -> Obj | None:
        with self.lock:
            if parts == ["api"]:
                return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}]}
            if parts == ["apis"]:
                return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in sorted({r.group for r in self.resources.values() if r.group})]}
            if parts[0] == "apis" and len(parts) == 2:
                return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
            gv = ("", parts[1]) if parts[0] == "api" and len(parts) == 2 else (parts[1], parts[2]) if parts[0] == "apis" and len(parts) == 3 else None
            if gv is None:
                return None
            resources = []
            for r in self.resources.values():
                if (r.group, r.version) != gv:
                    continue
                verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
                entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs}
                if r.short_names:
                    entry["shortNames"] = r.short_names
                if r.categories:
                    entry["categories"] = r.categories
                resources.append(entry)
                if r.has_status:
                    resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]})
            if not resources:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "/".join(x for x in gv if x), "resources": resources}

    def _openapi_v3(self, gv_parts: list[str]) -> Obj:
        """Just enough OpenAPI v3 for kubectl: it learns that fieldValidation is supported."""
        with self.lock:
            gvs = sorted({(r.group, r.version) for r in self.resources.values()})
            if not gv_parts:
                index = {}
                for g, v in gvs:
                    rel = f"apis/{g}/{v}" if g else f"api/{v}"
                    index[rel] = {"serverRelativeURL": f"/openapi/v3/{rel}?hash={self.rv}"}
                return {"paths": index}
            g, v = ("", gv_parts[1]) if gv_parts[0] == "api" else (gv_parts[1], gv_parts[2])
            paths: dict[str, Any] = {}
            schemas: dict[str, Any] = {}
            for r in self.resources.values():
                if (r.group, r.version) != (g, v):
                    continue
                gvk = [{"group": r.group, "version": r.version, "kind": r.kind}]
                param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}]
                prefix = f"/apis/{g}/{v}" if g else f"/api/{v}"
                coll = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
                ext = {"x-kubernetes-group-version-kind": gvk[0]}
                paths[coll] = {"post": {**ext, "x-kubernetes-action": "post", "parameters": param, "responses": {}}}
                paths[coll + "/{name}"] = {
                    "put": {**ext, "x-kubernetes-action": "put", "parameters": param, "responses": {}},
                    "patch": {**ext, "x-kubernetes-action": "patch", "parameters": param, "responses": {}},
                }
                schema = copy.deepcopy(r.schema) if r.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                schema["x-kubernetes-group-version-kind"] = gvk
                schemas[f"{'.'.join(reversed(r.group.split('.'))) if r.group else 'io.k8s.api.core'}.{r.version}.{r.kind}"] = schema
            return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": schemas}}

    def _group(self, group: str) -> Obj:
        versions = sorted({r.version for r in self.resources.values() if r.group == group})
        if not versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _route(self, parts: list[str]) -> tuple[Resource, str, str, str]:
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self.resources.get((group, rest[2]))
            if candidate and candidate.namespaced:
                ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        r = self.resources.get((group, rest[0]))
        if r is None or r.version != version:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not (sub == "status" and r.has_status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return r, ns, name, sub

    @staticmethod
    def _verb(method: str, name: str, query: Any) -> str:
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())

    async def _dispatch(self, request: web.Request, verb: str, r: Resource, ns: str, name: str, sub: str) -> Obj:
        q = request.query
        strict = q.get("fieldValidation") == "Strict"
        dry_run = q.get("dryRun") == "All"
        if verb == "get":
            obj = self.get(r.group, r.plural, ns, name)
            if obj is None:
                raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found'.replace(". ", " "), {"name": name, "group": r.group, "kind": r.plural})
            return obj
        if verb == "list":
            preds = parse_label_selector(q.get("labelSelector", ""))
            with self.lock:
                items = [o for o in self.list_objects(r.group, r.plural, ns if r.namespaced and ns else None) if matches(o, preds, q.get("fieldSelector", ""))]
                return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": {"resourceVersion": str(self.rv)}, "items": items}
        if verb == "deletecollection":
            preds = parse_label_selector(q.get("labelSelector", ""))
            items = [o for o in self.list_objects(r.group, r.plural, ns or None) if matches(o, preds, q.get("fieldSelector", ""))]
            for o in items:
                with contextlib.suppress(ApiError):
                    self.delete(r, ns, o["metadata"]["name"])
            return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": {"resourceVersion": str(self.rv)}, "items": items}
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if verb == "delete":
            opts = json.loads(raw) if raw else {}
            propagation = q.get("propagationPolicy") or opts.get("propagationPolicy") or ("Orphan" if opts.get("orphanDependents") else "Background")
            return self.delete(r, ns, name, propagation)
        try:
            body = yaml.safe_load(raw) if ctype.endswith("yaml") else json.loads(raw or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"cannot decode the body: {exc}") from None
        if verb == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            return self.create(r, ns, body, strict, dry_run)
        if verb == "update":
            return self.update(r, ns, name, body, sub, strict)
        if verb == "patch":
            return self._patch(r, ns, name, sub, ctype, body, q, strict)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported")

    def _patch(self, r: Resource, ns: str, name: str, sub: str, ctype: str, patch: Any, q: Any, strict: bool) -> Obj:
        import jsonpatch

        with self.lock:
            key = (r.group, r.plural, ns, name)
            live = self.get(r.group, r.plural, ns, name)
            if ctype == "application/apply-patch+yaml":
                manager = q.get("fieldManager")
                if not manager:
                    raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                if not isinstance(patch, dict):
                    raise ApiError(400, "BadRequest", "apply patch must be an object")
                patch.setdefault("metadata", {}).setdefault("name", name)
                if r.namespaced:
                    patch["metadata"].setdefault("namespace", ns)
                intent = copy.deepcopy(patch)
                intent["metadata"].pop("resourceVersion", None)
                prev = self.applied.get((key, manager, sub))
                if live is None:
                    if sub:
                        raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found')
                    result = self.create(r, ns, copy.deepcopy(intent), strict)
                else:
                    want_rv = patch["metadata"].get("resourceVersion")
                    if want_rv and want_rv != live["metadata"]["resourceVersion"]:
                        raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been modified; please apply your changes to the latest version and try again')
                    base = {k: v for k, v in live.items()}
                    new = server_side_apply(base, intent, prev)
                    new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                    result = self.update(r, ns, name, new, sub, strict)
                self.applied[(key, manager, sub)] = intent
                return result
            if live is None:
                raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found'.replace(". ", " "), {"name": name, "group": r.group, "kind": r.plural})
            if ctype == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(live, patch)
                except jsonpatch.JsonPatchTestFailed as exc:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
            elif ctype == "application/merge-patch+json":
                new = merge_patch(live, patch)
            elif ctype == "application/strategic-merge-patch+json":
                if r.custom:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
                new = strategic_merge(live, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            patch_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            new.setdefault("metadata", {})["resourceVersion"] = patch_rv or live["metadata"]["resourceVersion"]
            return self.update(r, ns, name, new, sub, strict)

    async def _watch(self, request: web.Request, r: Resource, ns: str) -> web.StreamResponse:
        q = request.query
        preds = parse_label_selector(q.get("labelSelector", ""))
        field_sel = q.get("fieldSelector", "")
        since = q.get("resourceVersion", "")
        timeout = float(q.get("timeoutSeconds", "1800"))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self.lock:
            if since not in ("", "0") and int(since) < self.compacted_rv:
                backlog: list[tuple[int, str, Obj]] | None = None
            elif since in ("", "0") or q.get("sendInitialEvents") == "true":
                backlog = [(self.rv, "ADDED", o) for o in self.list_objects(r.group, r.plural, ns or None)]
            else:
                backlog = [(rv, t, o) for rv, t, g, p, o in self.history if g == r.group and p == r.plural and rv > int(since)]
            watcher = (r.group, r.plural, queue)
            self._watchers.append(watcher)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            if backlog is None:
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})").status()
                await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return resp
            for item in backlog:
                queue.put_nowait(item)
            if q.get("sendInitialEvents") == "true":
                # WatchList (kubectl >= 1.32): initial state, then a bookmark marking its end.
                bookmark = {"kind": r.kind, "apiVersion": r.api_version,
                            "metadata": {"resourceVersion": str(self.rv), "annotations": {"k8s.io/initial-events-end": "true"}}}
                queue.put_nowait((self.rv, "BOOKMARK", bookmark))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                _, etype, obj = item
                if etype != "BOOKMARK":
                    if ns and obj["metadata"].get("namespace") != ns:
                        continue
                    if not matches(obj, preds, field_sel):
                        continue
                await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self.lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)
        return resp

    def _table(self, r: Resource, items: list[Obj], list_meta: Obj) -> Obj:
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "name", "priority": 0}]
        extra = r.printer_columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        for c in extra:
            columns.append({"name": c["name"], "type": "string" if c["type"] == "date" else c["type"], "format": c.get("format", ""), "description": c.get("description", ""), "priority": c.get("priority", 0)})
        rows = []
        for o in items:
            cells: list[Any] = [o["metadata"]["name"]]
            for c in extra:
                found = jsonpath(o, c["jsonPath"])
                value = found[0] if found else None
                if c["type"] == "date":
                    value = age(value)
                elif value is None:
                    value = "<none>" if c["type"] == "string" else None
                cells.append(value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows}


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
