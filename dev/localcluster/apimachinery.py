"""Kubernetes API machinery as pure functions: errors, resource types, patches, selectors, JSONPath.

Nothing here does I/O; the fake API server's store (`store`) and its HTTP front end (`httpapi`) use them.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    scale: Obj | None = None  # a custom resource's scale subresource (specReplicasPath, ...)

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
    user: str = ""  # who made it (the administrator, or a ServiceAccount by its token)


BUILTINS = [
    Resource("", "v1", "namespaces", "Namespace", False, "namespace", ["ns"], has_status=True),
    Resource("", "v1", "configmaps", "ConfigMap", True, "configmap", ["cm"]),
    Resource("", "v1", "services", "Service", True, "service", ["svc"], has_status=True),
    Resource("", "v1", "events", "Event", True, "event", ["ev"]),
    Resource("", "v1", "pods", "Pod", True, "pod", ["po"], has_status=True),
    Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, "persistentvolumeclaim", ["pvc"], has_status=True),
    Resource("", "v1", "secrets", "Secret", True, "secret"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ["sa"]),
    Resource("", "v1", "nodes", "Node", False, "node", ["no"], has_status=True),
    Resource("apps", "v1", "deployments", "Deployment", True, "deployment", ["deploy"], has_status=True),
    Resource("apps", "v1", "replicasets", "ReplicaSet", True, "replicaset", ["rs"], has_status=True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, "endpointslice"),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, "networkpolicy", ["netpol"]),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, "poddisruptionbudget", ["pdb"], has_status=True),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, "horizontalpodautoscaler", ["hpa"], has_status=True),
    Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False, "customresourcedefinition", ["crd", "crds"], has_status=True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    Resource("events.k8s.io", "v1", "events", "Event", True, "event", ["ev"]),
    Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, "clusterrole"),
    Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, "clusterrolebinding"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role", True, "role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True, "rolebinding"),
]
# Kinds that carry metadata.generation (everything with a spec).
_NO_GENERATION = {"configmaps", "events", "secrets", "serviceaccounts", "leases", "endpointslices", "nodes",
                  "clusterroles", "clusterrolebindings", "roles", "rolebindings"}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    try:  # RFC 3339, with or without fractions (kopf's Events carry microseconds)
        then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=dt.UTC)
    secs = max(0, int((dt.datetime.now(dt.UTC) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"
