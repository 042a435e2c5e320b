"""Authentication and authorization of the local API server's HTTP requests.

- **Who**: the admin kubeconfig's token (`ADMIN_TOKEN`, what `write_kubeconfig` writes) and requests
  without a token are the cluster's administrator (group `system:masters`: everything is allowed),
  as `make run`'s kubectl and the tests have always been. A token the API server issued to a
  ServiceAccount (`Tokens.issue`, the TokenRequest subresource `serviceaccounts/<name>/token`, which
  the node agent calls for each pod as the kubelet does) is that ServiceAccount
  (`system:serviceaccount:<namespace>:<name>`, groups `system:serviceaccounts`,
  `system:serviceaccounts:<namespace>`, `system:authenticated`) while the ServiceAccount exists (the
  same one: by uid) and, for a token bound to a pod, while that pod exists. Any other token is 401
  Unauthorized. The administrator may act as another user with kubectl's `--as` / `--as-group`
  (the `Impersonate-User` and `Impersonate-Group` headers).
- **What they may do**: everything for the administrator; otherwise what RBAC grants (`rbac`: the
  Roles, ClusterRoles and bindings stored in the API server, plus kube-apiserver's bootstrap policy
  for discovery, `/version`, health and the OpenAPI documents), else 403 with kube-apiserver's
  message.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

from localcluster import rbac
from localcluster.apimachinery import ApiError, Obj

ADMIN_TOKEN = "fake-token"
ADMIN = rbac.User("kubernetes-admin", ("system:masters", "system:authenticated"))
RBAC_PLURALS = ("clusterroles", "clusterrolebindings", "roles", "rolebindings")


@dataclass(frozen=True)
class Issued:
    namespace: str
    service_account: str
    sa_uid: str
    pod: str = ""  # the pod it is bound to (name and uid), if any
    pod_uid: str = ""


class Tokens:
    """The tokens this API server issued to ServiceAccounts, and the requests' users and decisions.

    `store` is the API server's store (`get`, `list_objects`); kept apart from it so that the
    store's verbs stay those of etcd and the registry."""

    def __init__(self, store: Any):
        self.store = store
        self._issued: dict[str, Issued] = {}
        self._lock = threading.Lock()

    def issue(self, namespace: str, service_account: str, pod: Obj | None = None) -> str:
        """A token for the ServiceAccount (404 if it does not exist), bound to `pod` if given."""
        sa = self.store.get("", "serviceaccounts", namespace, service_account)
        if sa is None:
            raise ApiError(404, "NotFound", f'serviceaccounts "{service_account}" not found',
                           {"name": service_account, "kind": "serviceaccounts"})
        meta = (pod or {}).get("metadata") or {}
        token = "localcluster-sa." + secrets.token_urlsafe(32)
        with self._lock:
            self._issued[token] = Issued(namespace, service_account, sa["metadata"]["uid"], meta.get("name", ""), meta.get("uid", ""))
        return token

    def _valid(self, issued: Issued) -> bool:
        sa = self.store.get("", "serviceaccounts", issued.namespace, issued.service_account)
        if sa is None or sa["metadata"]["uid"] != issued.sa_uid:
            return False
        if issued.pod_uid:
            pod = self.store.get("", "pods", issued.namespace, issued.pod)
            return pod is not None and pod["metadata"]["uid"] == issued.pod_uid
        return True

    def user(self, headers: Any) -> rbac.User:
        """The request's user, from its bearer token (401 for a token that is not valid here)."""
        header = headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not token or token == ADMIN_TOKEN:
            return self._impersonated(headers) or ADMIN
        with self._lock:
            issued = self._issued.get(token)
        if issued is None or not self._valid(issued):
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return rbac.service_account_user(issued.namespace, issued.service_account)

    @staticmethod
    def _impersonated(headers: Any) -> rbac.User | None:
        name = headers.get("Impersonate-User", "")
        if not name:
            return None
        groups = list(headers.getall("Impersonate-Group", []) if hasattr(headers, "getall") else [])
        if name.startswith(rbac.SERVICEACCOUNT_PREFIX) and name.count(":") == 3:
            ns = name.split(":")[2]
            groups += ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
        return rbac.User(name, tuple(dict.fromkeys([*groups, "system:authenticated"])))

    def check(self, attrs: rbac.Attributes) -> None:
        """403 with kube-apiserver's message unless the request is allowed."""
        if "system:masters" in attrs.user.groups:
            return
        objects = [o for plural in RBAC_PLURALS for o in self.store.list_objects(rbac.GROUP, plural)]
        decision = rbac.authorize([*rbac.BOOTSTRAP, *objects], attrs)
        if not decision.allowed:
            details = {"name": attrs.name, "group": attrs.group, "kind": attrs.resource} if attrs.resource_request else None
            raise ApiError(403, "Forbidden", rbac.forbidden_message(attrs, decision.reason), details)

    def check_create_on_apply(self, attrs: rbac.Attributes) -> None:
        """A server-side apply that creates its object needs `create` too (kube-apiserver's
        withAuthorization: its 403 carries RBAC's reason alone, usually empty)."""
        if "system:masters" in attrs.user.groups:
            return
        create = rbac.Attributes(attrs.user, "create", attrs.group, attrs.resource, "", attrs.namespace, attrs.name,
                                 version=attrs.version)
        objects = [o for plural in RBAC_PLURALS for o in self.store.list_objects(rbac.GROUP, plural)]
        decision = rbac.authorize([*rbac.BOOTSTRAP, *objects], create)
        if not decision.allowed:
            qualified = f"{attrs.resource}.{attrs.group}" if attrs.group else attrs.resource
            raise ApiError(403, "Forbidden", f'{qualified} "{attrs.name}" is forbidden: {decision.reason}',
                           {"name": attrs.name, "group": attrs.group, "kind": attrs.resource})
