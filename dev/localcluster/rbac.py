"""Kubernetes RBAC, as kube-apiserver's RBAC authorizer decides (pure functions over plain objects).

A request (`Attributes`: the user and its groups, the verb, and either an API group, resource,
subresource, namespace and name, or a non-resource path) is allowed when a rule of a role bound to
the user matches it:

- a **ClusterRoleBinding** grants its ClusterRole's rules everywhere: every namespace, cluster-scoped
  resources, requests across all namespaces, and non-resource URLs;
- a **RoleBinding** grants its Role's (or a ClusterRole's) resource rules in its own namespace only;
- subjects: `User` (by name), `Group` (by name: `system:serviceaccounts`,
  `system:serviceaccounts:<namespace>`, `system:authenticated`, ...) and `ServiceAccount` (name and
  namespace; in a RoleBinding a subject without a namespace means the binding's);
- a resource rule matches when its `apiGroups`, `resources` (`resource`, `resource/subresource`,
  `*/subresource` or `*`) and `verbs` match, and, when it lists `resourceNames`, the request names
  one of them (a list, watch or create names nothing, so such a rule never grants them, except a
  list or watch whose field selector asks for `metadata.name=<one of them>`); a non-resource rule
  matches a path exactly or by a prefix ending in `*`.

A binding to a missing role grants nothing; the denial's reason names it, as kube-apiserver's does.
Aggregated ClusterRoles (`aggregationRule`) are not filled in (the local cluster has no aggregation
controller). `forbidden` builds kube-apiserver's 403 message.

The local API server (`httpapi`) enforces this for ServiceAccount tokens; `tests/helm/rbac_eval.py`
uses the same matching to check the chart's rules against an audit log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
GROUP = "rbac.authorization.k8s.io"
SERVICEACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()


def service_account_user(namespace: str, name: str) -> User:
    """The identity kube-apiserver gives a ServiceAccount token's bearer."""
    return User(f"{SERVICEACCOUNT_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


@dataclass(frozen=True)
class Attributes:
    """What is authorized: a resource request (resource set) or a non-resource one (path set)."""

    user: User
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""  # "" for cluster-scoped resources and requests across all namespaces
    name: str = ""
    path: str = ""  # a non-resource request's path (/api, /apis/apps/v1, /version, /openapi/v3, ...)
    version: str = ""

    @property
    def resource_request(self) -> bool:
        return bool(self.resource)


@dataclass(frozen=True)
class Grant:
    """A rule and where it applies: `namespace` None means everywhere (a ClusterRoleBinding)."""

    namespace: str | None
    rule: Obj
    source: str = ""


@dataclass
class Decision:
    allowed: bool
    reason: str = ""  # why not, when RBAC had something to say (a binding to a missing role)
    errors: list[str] = field(default_factory=list)


# -- rule matching (rbac/v1 helpers: VerbMatches, APIGroupMatches, ResourceMatches, ...) --
def _has(values: Iterable[str] | None, value: str) -> bool:
    values = list(values or [])
    return "*" in values or value in values


def resource_matches(rule: Obj, resource: str, subresource: str) -> bool:
    combined = f"{resource}/{subresource}" if subresource else resource
    for r in rule.get("resources") or []:
        if r in ("*", combined):
            return True
        if subresource and r == f"*/{subresource}":
            return True
    return False


def non_resource_url_matches(rule: Obj, path: str) -> bool:
    for url in rule.get("nonResourceURLs") or []:
        if url == "*" or url == path or (url.endswith("*") and path.startswith(url[:-1])):
            return True
    return False


def rule_allows(rule: Obj, a: Attributes) -> bool:
    if not _has(rule.get("verbs"), a.verb):
        return False
    if not a.resource_request:
        return non_resource_url_matches(rule, a.path)
    names = rule.get("resourceNames") or []
    return (_has(rule.get("apiGroups"), a.group) and resource_matches(rule, a.resource, a.subresource)
            and (not names or a.name in names))


# -- bindings --
def subject_matches(subject: Obj, user: User, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return user.name == f"{SERVICEACCOUNT_PREFIX}{ns}:{subject.get('name')}"
    return False


def _key(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", "")


def grants(objects: Iterable[Obj], user: User) -> tuple[list[Grant], list[str]]:
    """The rules bound to `user` by the (Cluster)RoleBindings among `objects`, and the errors met
    (bindings to roles that do not exist)."""
    objs = list(objects)
    roles = {_key(o): o for o in objs if o.get("kind") in ("Role", "ClusterRole")}
    out: list[Grant] = []
    errors: list[str] = []
    for b in objs:
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        b_ns = (b.get("metadata") or {}).get("namespace", "") if b["kind"] == "RoleBinding" else ""
        if not any(subject_matches(s, user, b_ns) for s in b.get("subjects") or []):
            continue
        ref = b.get("roleRef") or {}
        if b["kind"] == "ClusterRoleBinding" and ref.get("kind") != "ClusterRole":
            continue
        role = roles.get((ref.get("kind", ""), b_ns if ref.get("kind") == "Role" else "", ref.get("name", "")))
        if role is None:
            plural = "roles" if ref.get("kind") == "Role" else "clusterroles"
            errors.append(f'{plural}.{GROUP} "{ref.get("name", "")}" not found')
            continue
        scope = None if b["kind"] == "ClusterRoleBinding" else b_ns
        source = f'{b["kind"]} "{(b.get("metadata") or {}).get("name", "")}"'
        out.extend(Grant(scope, rule, source) for rule in role.get("rules") or [])
    return out, errors


def grant_applies(g: Grant, a: Attributes) -> bool:
    """A RoleBinding's rules apply to resource requests in its namespace only."""
    if g.namespace is None:
        return True
    return a.resource_request and a.namespace == g.namespace


def authorize(objects: Iterable[Obj], a: Attributes) -> Decision:
    """As the RBAC authorizer visits them: every ClusterRoleBinding, and the RoleBindings of the
    request's namespace (so only their errors count)."""
    ns = a.namespace if a.resource_request else ""
    relevant = [o for o in objects if o.get("kind") != "RoleBinding" or (ns and (o.get("metadata") or {}).get("namespace") == ns)]
    found, errors = grants(relevant, a.user)
    if any(grant_applies(g, a) and rule_allows(g.rule, a) for g in found):
        return Decision(True)
    return Decision(False, f"RBAC: {'; '.join(errors)}" if errors else "", errors)


# -- kube-apiserver's answers --
def forbidden_message(a: Attributes, reason: str = "") -> str:
    """The message of kube-apiserver's 403 (responsewriters.forbiddenMessage, wrapped by
    apierrors.NewForbidden)."""
    if not a.resource_request:
        text = f'User "{a.user.name}" cannot {a.verb} path "{a.path}"'
    else:
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
        text = f'User "{a.user.name}" cannot {a.verb} resource "{resource}" in API group "{a.group}" {where}'
    if reason:
        text = f"{text}: {reason}"
    qualified = f"{a.resource}.{a.group}" if a.group else a.resource
    if not a.resource_request:
        return f"forbidden: {text}"
    return f'{qualified} "{a.name}" is forbidden: {text}' if a.name else f"{qualified} is forbidden: {text}"


# What kube-apiserver's bootstrap policy gives every authenticated user (and the names it has):
# discovery, the version and health endpoints, the OpenAPI documents.
BOOTSTRAP: list[Obj] = [
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]},
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": "system:discovery", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
                                    "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRole", "metadata": {"name": "system:public-info-viewer", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "rules": [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]},
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "cluster-admin"},
     "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": "system:masters"}]},
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:discovery", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "system:discovery"},
     "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": "system:authenticated"}]},
    {"apiVersion": f"{GROUP}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:public-info-viewer", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
     "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "system:public-info-viewer"},
     "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": "system:authenticated"},
                  {"apiGroup": GROUP, "kind": "Group", "name": "system:unauthenticated"}]},
]
