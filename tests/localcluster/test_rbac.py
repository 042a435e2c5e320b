"""RBAC on the local API server: ServiceAccount tokens are authenticated and each request is
authorized as kube-apiserver's RBAC authorizer does; the admin kubeconfig stays all-powerful.

The decisions are checked table by table (`localcluster.rbac`, pure), then over real HTTP: tokens
from the TokenRequest subresource, 401 for tokens the server did not issue (or whose ServiceAccount
or pod is gone), 403 with kube-apiserver's message, discovery for every authenticated user, a
server-side apply that creates needing `create` too, and the admin's impersonation (`kubectl --as`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from localcluster import rbac
from localcluster.fakeapi import FakeKubeAPI
from localcluster_support import KUBECTL

SA = rbac.service_account_user("team-a", "bot")
RBAC_V1 = "rbac.authorization.k8s.io/v1"


def role(kind: str, name: str, rules: list[dict], namespace: str = "") -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": RBAC_V1, "kind": kind, "metadata": meta, "rules": rules}


def binding(kind: str, name: str, role_kind: str, role_name: str, subjects: list[dict], namespace: str = "") -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": RBAC_V1, "kind": kind, "metadata": meta, "subjects": subjects,
            "roleRef": {"apiGroup": rbac.GROUP, "kind": role_kind, "name": role_name}}


SA_SUBJECT = {"kind": "ServiceAccount", "name": "bot", "namespace": "team-a"}
POLICY = [
    role("Role", "pods", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                          {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
                          {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "update"], "resourceNames": ["settings"]}],
         "team-a"),
    binding("RoleBinding", "pods", "Role", "pods", [{"kind": "ServiceAccount", "name": "bot"}], "team-a"),
    role("ClusterRole", "deployments-reader", [{"apiGroups": ["apps"], "resources": ["deployments", "*/scale"], "verbs": ["get"]}]),
    binding("RoleBinding", "deployments", "ClusterRole", "deployments-reader", [SA_SUBJECT], "team-b"),
    role("ClusterRole", "nodes", [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
                                  {"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]),
    binding("ClusterRoleBinding", "nodes", "ClusterRole", "nodes", [{"kind": "Group", "name": "system:serviceaccounts:team-a"}]),
    binding("RoleBinding", "dangling", "Role", "absent", [SA_SUBJECT], "team-c"),
]


@pytest.mark.parametrize(("attrs", "allowed"), [
    (rbac.Attributes(SA, "get", "", "pods", "", "team-a", "p"), True),
    (rbac.Attributes(SA, "list", "", "pods", "", "team-a"), True),
    (rbac.Attributes(SA, "list", "", "pods", "", ""), False),  # across namespaces needs a ClusterRoleBinding
    (rbac.Attributes(SA, "delete", "", "pods", "", "team-a", "p"), False),  # verb
    (rbac.Attributes(SA, "get", "", "pods", "log", "team-a", "p"), True),  # subresource by name
    (rbac.Attributes(SA, "get", "", "pods", "exec", "team-a", "p"), False),
    (rbac.Attributes(SA, "get", "", "pods", "", "team-b", "p"), False),  # the Role's namespace only
    (rbac.Attributes(SA, "get", "", "configmaps", "", "team-a", "settings"), True),  # resourceNames
    (rbac.Attributes(SA, "get", "", "configmaps", "", "team-a", "other"), False),
    (rbac.Attributes(SA, "list", "", "configmaps", "", "team-a"), False),  # a list names nothing
    (rbac.Attributes(SA, "get", "apps", "deployments", "", "team-b", "d"), True),  # a ClusterRole bound in a namespace
    (rbac.Attributes(SA, "get", "apps", "deployments", "", "team-a", "d"), False),
    (rbac.Attributes(SA, "get", "apps", "replicasets", "scale", "team-b", "r"), True),  # */scale
    (rbac.Attributes(SA, "get", "", "deployments", "", "team-b", "d"), False),  # API group
    (rbac.Attributes(SA, "list", "", "nodes", ""), True),  # a group subject, cluster-wide
    (rbac.Attributes(SA, "get", path="/metrics"), True),  # non-resource URL, exact
    (rbac.Attributes(SA, "get", path="/debug/pprof/heap"), True),  # and by prefix
    (rbac.Attributes(SA, "post", path="/metrics"), False),
    (rbac.Attributes(SA, "get", path="/apis/apps/v1"), True),  # the bootstrap policy: discovery
    (rbac.Attributes(SA, "get", path="/version"), True),
    (rbac.Attributes(rbac.service_account_user("team-b", "bot"), "get", "", "pods", "", "team-a", "p"), False),
])
def test_the_authorizer_decides_as_kube_apiservers(attrs: rbac.Attributes, allowed: bool) -> None:
    assert rbac.authorize([*rbac.BOOTSTRAP, *POLICY], attrs).allowed is allowed


def test_a_binding_to_a_missing_role_grants_nothing_and_says_so() -> None:
    decision = rbac.authorize(POLICY, rbac.Attributes(SA, "get", "", "pods", "", "team-c", "p"))
    assert not decision.allowed and decision.reason == 'RBAC: roles.rbac.authorization.k8s.io "absent" not found'


def test_forbidden_messages_are_kube_apiservers() -> None:
    user = 'User "system:serviceaccount:team-a:bot"'
    assert rbac.forbidden_message(rbac.Attributes(SA, "get", "apps", "deployments", "scale", "team-a", "d")) == (
        f'deployments.apps "d" is forbidden: {user} cannot get resource "deployments/scale" in API group "apps" '
        'in the namespace "team-a"')
    assert rbac.forbidden_message(rbac.Attributes(SA, "list", "", "nodes")) == (
        f'nodes is forbidden: {user} cannot list resource "nodes" in API group "" at the cluster scope')
    assert rbac.forbidden_message(rbac.Attributes(SA, "get", path="/metrics")) == f'forbidden: {user} cannot get path "/metrics"'


# -- over HTTP --
def call(fake: FakeKubeAPI, method: str, path: str, token: str | None = None, body: Any = None,
         ctype: str = "application/json", **params: str) -> requests.Response:
    headers = {"Content-Type": ctype, **({"Authorization": f"Bearer {token}"} if token is not None else {})}
    data = None if body is None else json.dumps(body)
    return requests.request(method, fake.url + path, data=data, headers=headers, params=params, timeout=10)


@pytest.fixture
def policy(fake: FakeKubeAPI) -> FakeKubeAPI:
    for ns in ("team-a", "team-b", "team-c"):
        fake.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    fake.add_object({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot", "namespace": "team-a"}})
    for obj in POLICY:
        fake.add_object(obj)
    fake.add_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "team-a"}, "data": {"a": "1"}})
    return fake


def token_for(fake: FakeKubeAPI, ns: str = "team-a", sa: str = "bot", pod: dict | None = None) -> str:
    spec = {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"]}} if pod else {}
    r = call(fake, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body={"spec": spec})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "TokenRequest"
    return str(r.json()["status"]["token"])


def test_a_service_account_token_gets_what_rbac_grants_and_403_otherwise(policy: FakeKubeAPI) -> None:
    token = token_for(policy)
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", token).status_code == 200
    assert call(policy, "GET", "/api/v1/namespaces/team-a/configmaps/settings", token).json()["data"] == {"a": "1"}
    denied = call(policy, "GET", "/api/v1/namespaces/team-b/pods", token)
    assert denied.status_code == 403
    assert denied.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'pods is forbidden: User "system:serviceaccount:team-a:bot" cannot list resource "pods" in API group "" '
                   'in the namespace "team-b"',
        "details": {"name": "", "group": "", "kind": "pods"}}
    # resourceNames: a watch pinned to the name by its field selector is the named object's
    assert call(policy, "GET", "/api/v1/namespaces/team-a/configmaps", token).status_code == 403
    assert call(policy, "GET", "/api/v1/namespaces/team-a/configmaps", token, fieldSelector="metadata.name=settings").status_code == 200
    # discovery and the OpenAPI documents for every authenticated user; other paths not
    for path in ("/api", "/apis", "/apis/apps/v1", "/version", "/openapi/v3"):
        assert call(policy, "GET", path, token).status_code == 200, path
    assert call(policy, "GET", "/logs", token).status_code == 403
    # the audit log says who made each request
    assert {a.user for a in policy.audit() if a.namespace == "team-b"} == {"system:serviceaccount:team-a:bot"}


def test_tokens_the_server_did_not_issue_or_that_outlived_their_account_or_pod_are_401(policy: FakeKubeAPI) -> None:
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", "made-up").status_code == 401
    assert call(policy, "POST", "/api/v1/namespaces/team-a/serviceaccounts/nobody/token", body={}).status_code == 404
    pod = policy.add_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
                             "spec": {"containers": [{"name": "c", "image": "x"}]}})
    bound, free = token_for(policy, pod=pod), token_for(policy)
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", bound).status_code == 200
    policy.delete(policy.resource_for("v1", "Pod"), "team-a", "p")
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", bound).status_code == 401
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", free).status_code == 200
    policy.delete(policy.resource_for("v1", "ServiceAccount"), "team-a", "bot")
    policy.add_object({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bot", "namespace": "team-a"}})
    assert call(policy, "GET", "/api/v1/namespaces/team-a/pods", free).status_code == 401  # a new account, a new uid


def test_a_server_side_apply_that_creates_needs_create(policy: FakeKubeAPI) -> None:
    policy.add_object(role("Role", "apply", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}], "team-a"))
    policy.add_object(binding("RoleBinding", "apply", "Role", "apply", [SA_SUBJECT], "team-a"))
    token = token_for(policy)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}, "data": {"a": "1"}}
    r = call(policy, "PATCH", "/api/v1/namespaces/team-a/configmaps/new", token, body, "application/apply-patch+yaml", fieldManager="t")
    assert r.status_code == 403 and r.json()["message"] == 'configmaps "new" is forbidden: '
    assert policy.get("", "configmaps", "team-a", "new") is None
    r = call(policy, "PATCH", "/api/v1/namespaces/team-a/configmaps/settings", token, {**body, "metadata": {"name": "settings"}},
             "application/apply-patch+yaml", fieldManager="t")
    assert r.status_code == 200  # patching an existing one needs patch alone


def test_the_admin_kubeconfig_may_do_anything_and_act_as_a_service_account(policy: FakeKubeAPI, tmp_path: Path) -> None:
    kubeconfig = policy.write_kubeconfig(tmp_path / "kubeconfig")

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60)

    assert kubectl("get", "pods", "-A").returncode == 0
    assert kubectl("-n", "team-a", "get", "pods", "--as=system:serviceaccount:team-a:bot").returncode == 0
    out = kubectl("-n", "team-b", "get", "pods", "--as=system:serviceaccount:team-a:bot")
    assert out.returncode == 1
    assert ('pods is forbidden: User "system:serviceaccount:team-a:bot" cannot list resource "pods" in API group "" '
            'in the namespace "team-b"') in out.stderr
    out = kubectl("get", "nodes", "--as=jane", "--as-group=system:serviceaccounts:team-a")
    assert out.returncode == 0, out.stderr
