"""A small Kubernetes RBAC evaluator over rendered manifests (pure functions, no cluster).

It follows the RBAC authorizer's matching rules for what the chart uses: a request is allowed when
some rule bound to the service account matches its API group, resource (`resource/subresource` for
subresources) and verb; a ClusterRole bound by a ClusterRoleBinding applies everywhere, a Role (or a
ClusterRole) bound by a RoleBinding only in the binding's namespace; cluster-wide requests (list or
watch across all namespaces, cluster-scoped resources) need a ClusterRoleBinding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str  # "" for cluster-wide or cluster-scoped requests

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Grant:
    namespace: str | None  # None: everywhere (ClusterRoleBinding)
    rule: Obj


def rule_matches(rule: Obj, req: Request) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    return (
        not rule.get("resourceNames")
        and not rule.get("nonResourceURLs")
        and has("apiGroups", req.group)
        and has("resources", req.full_resource)
        and has("verbs", req.verb)
    )


def grants_for(objects: Iterable[Obj], sa_name: str, sa_namespace: str) -> list[Grant]:
    objs = list(objects)
    roles = {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
    }
    out: list[Grant] = []
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
        if not any({k: s.get(k) for k in subject} == subject for s in b.get("subjects") or []):
            continue
        ref = b["roleRef"]
        role_ns = b["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, (
            f"{b['kind']} {b['metadata']['name']} refers to a missing {ref['kind']} {ref['name']}"
        )
        scope = None if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        out.extend(Grant(scope, rule) for rule in role.get("rules") or [])
    return out


def allowed(grants: Iterable[Grant], req: Request) -> bool:
    return any(
        rule_matches(g.rule, req)
        and (g.namespace is None or (req.namespace and g.namespace == req.namespace))
        for g in grants
    )


def granted_permissions(grants: Iterable[Grant]) -> set[tuple[str | None, str, str, str]]:
    """(scope, group, resource, verb) for every combination a rule spells out."""
    return {
        (g.namespace, group, resource, verb)
        for g in grants
        for group in g.rule.get("apiGroups") or []
        for resource in g.rule.get("resources") or []
        for verb in g.rule.get("verbs") or []
    }


def used_by(permission: tuple[str | None, str, str, str], requests: Iterable[Request]) -> bool:
    scope, group, resource, verb = permission
    return any(
        r.group == group
        and r.full_resource == resource
        and r.verb == verb
        and (scope is None or r.namespace == scope)
        for r in requests
    )


def requests_from_audit(audit: Iterable[Any]) -> list[Request]:
    """The authorization requests behind an audit log (entries with verb, apiGroup, resource,
    subresource, namespace, name, code), in order.

    A server-side apply (PATCH) that creates its object is also authorized as `create` by
    kube-apiserver, which answers it 201 Created (as the fake API server does): such a PATCH counts
    as both.
    """
    out: list[Request] = []
    for a in audit:
        out.append(Request(a.verb, a.apiGroup, a.resource, a.subresource, a.namespace))
        if a.verb == "patch" and a.code == 201 and not a.subresource:
            out.append(Request("create", a.apiGroup, a.resource, "", a.namespace))
    return out
