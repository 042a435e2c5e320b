"""A pod's identity on the local cluster: every namespace gets a ServiceAccount `default`, the node
agent projects a token of the pod's ServiceAccount (found through KUBECONFIG, as a client finds the
in-cluster config), the API server enforces RBAC on it, and pods whose restartPolicy lets them end
finish Succeeded or Failed. Real processes on a cluster in a background thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster_support import ThreadCluster
from support import wait_for

# What the pod runs: the `kubernetes` client with the configuration it finds (KUBECONFIG), a list of
# ConfigMaps in its namespace and one in another; it prints both outcomes and exits 0 when both match
# what argv[1] and argv[2] expect ("200" or "403").
CLIENT = """
import os, sys
from kubernetes import client, config
config.load_kube_config()
api = client.CoreV1Api()
def outcome(ns):
    try:
        api.list_namespaced_config_map(ns)
        return "200"
    except client.ApiException as exc:
        print(exc.body)
        return str(exc.status)
got = [outcome(os.environ["POD_NAMESPACE"]), outcome("other")]
print("token file:", open(sys.argv[3]).read().startswith("localcluster-sa."), "outcomes:", got)
sys.exit(0 if got == sys.argv[1:3] else 1)
"""
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@pytest.fixture
def lc(tmp_path: Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(tmp_path / "state") as c:
        for ns in ("team", "other"):
            c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        yield c


def pod(name: str, expect: tuple[str, str], account: str = "reader", **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team"},
            "spec": {"restartPolicy": "Never", "serviceAccountName": account, **spec, "containers": [{
                "name": "c", "image": "python", "command": [sys.executable, "-c", CLIENT, *expect, SA_TOKEN],
                "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}


def phase(lc: ThreadCluster, name: str) -> str:
    return str(((lc.api.get("", "pods", "team", name) or {}).get("status") or {}).get("phase", ""))


def test_a_pod_calls_the_api_as_its_service_account_with_what_rbac_grants(lc: ThreadCluster) -> None:
    wait_for(lambda: lc.api.get("", "serviceaccounts", "other", "default"), "the default ServiceAccount of a new namespace")
    lc.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": "team"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm", "namespace": "team"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "cm", "namespace": "team"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader"}]},
        pod("reads", ("200", "403")),
    )
    wait_for(lambda: phase(lc, "reads") in ("Succeeded", "Failed"), "the pod to finish")
    log = lc.kubectl("-n", "team", "logs", "reads")
    assert phase(lc, "reads") == "Succeeded", log
    assert "token file: True outcomes: ['200', '403']" in log
    # A pod that expects the other answers ends Failed (exit 1), and is not restarted (Never).
    lc.apply(pod("wrong", ("403", "200")))
    wait_for(lambda: phase(lc, "wrong") in ("Succeeded", "Failed"), "the second pod to finish")
    status = lc.api.get("", "pods", "team", "wrong")["status"]
    assert status["phase"] == "Failed" and status["containerStatuses"][0]["restartCount"] == 0
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 1
    # Only the requests of the ServiceAccount were authorized by RBAC (and one of them denied).
    denied = [a for a in lc.api.audit() if a.code == 403]
    assert denied and {a.user for a in denied} == {"system:serviceaccount:team:reader"}


def test_without_its_service_account_a_pod_waits_and_without_automount_it_has_no_token(lc: ThreadCluster) -> None:
    lc.apply(pod("waits", ("200", "403"), account="later"))
    wait_for(lambda: any(e.get("reason") == "FailedMount" and "later" in e.get("message", "")
                         for e in lc.api.list_objects("", "events", "team")), "a FailedMount event")
    assert phase(lc, "waits") == "Pending"
    lc.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "later", "namespace": "team"}})
    wait_for(lambda: phase(lc, "waits") in ("Succeeded", "Failed"), "the pod to start once its account exists")
    # `later` may not list ConfigMaps at all: 403 in both namespaces.
    lc.apply(pod("denied", ("403", "403"), account="later"))
    wait_for(lambda: phase(lc, "denied") in ("Succeeded", "Failed"), "the pod to finish")
    assert phase(lc, "denied") == "Succeeded", lc.kubectl("-n", "team", "logs", "denied", check=False)
    lc.apply(pod("anonymous", ("200", "403"), account="later", automountServiceAccountToken=False))
    wait_for(lambda: phase(lc, "anonymous") in ("Succeeded", "Failed"), "the pod without a token to finish")
    assert phase(lc, "anonymous") == "Failed"  # no KUBECONFIG: the client finds no configuration
    assert "ConfigException" in lc.kubectl("-n", "team", "logs", "anonymous")  # a completed pod's log stays readable
    lc.kubectl("-n", "team", "delete", "pod", "anonymous")
    assert "not found" in lc.kubectl("-n", "team", "logs", "anonymous", check=False)
