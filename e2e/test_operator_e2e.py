"""The operator scenarios of tests/operator/ on a cluster: the local one, or the real one E2E_KUBECONFIG names."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from e2e_support import (
    CHILDREN,
    MD_API,
    READY_TIMEOUT,
    SKIP_READY,
    Cluster,
    OperatorProcess,
    condition,
    half_plus_two,
    wait_for,
)

pytestmark = pytest.mark.e2e
HASH = "serving.modeldeploy.io/config-hash"


def reconciled(c: Cluster, ns: str, name: str, gen: int | None = None) -> dict | None:
    obj = c.md(ns, name)
    if not obj or obj.get("status", {}).get("observedGeneration") != (gen or obj["metadata"]["generation"]):
        return None
    if not SKIP_READY and condition(obj, "Ready").get("status") != "True":
        return None
    return obj


def test_create_update_delete(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    cluster.create(half_plus_two("hp2", namespace, model={"name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}}, "versions": [123]}, versionLabels={"stable": 123}))
    obj = wait_for(lambda: reconciled(cluster, namespace, "hp2"), READY_TIMEOUT, "hp2 reconciled")
    for api_version, kind, suffix in CHILDREN:
        child = cluster.get(api_version, kind, namespace, "hp2" + suffix)
        assert child and child["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"], kind
    dep = cluster.get("apps/v1", "Deployment", namespace, "hp2")
    h0 = dep["spec"]["template"]["metadata"]["annotations"][HASH]
    gen = cluster.patch_spec(namespace, "hp2", {"versionLabels": {"stable": 123, "current": 123}})
    wait_for(lambda: reconciled(cluster, namespace, "hp2", gen), READY_TIMEOUT, "labels")
    # labels live in routing.json beside TF Serving's unchanged models.config (and are pushed to the pods)
    routing = json.loads(cluster.get("v1", "ConfigMap", namespace, "hp2-config")["data"]["routing.json"])
    assert routing["models"]["half_plus_two"]["labels"] == {"current": 123, "stable": 123}
    assert cluster.get("apps/v1", "Deployment", namespace, "hp2")["spec"]["template"]["metadata"]["annotations"][HASH] == h0
    for patch in ({"batching": {"maxBatchSize": 8}}, {"resources": {"memory": "600Mi"}}, {"replicas": 2}):
        gen = cluster.patch_spec(namespace, "hp2", patch)
        wait_for(lambda gen=gen: reconciled(cluster, namespace, "hp2", gen), READY_TIMEOUT, f"update {patch}")
    cluster.delete(MD_API, "ModelDeployment", namespace, "hp2")
    wait_for(lambda: all(cluster.get(a, k, namespace, "hp2" + s) is None for a, k, s in CHILDREN), 120, "cascade")


def test_drift_is_corrected(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    cluster.create(half_plus_two("drift", namespace))
    wait_for(lambda: reconciled(cluster, namespace, "drift"), READY_TIMEOUT, "reconciled")
    cluster.delete("apps/v1", "Deployment", namespace, "drift")
    wait_for(lambda: cluster.get("apps/v1", "Deployment", namespace, "drift"), 60, "Deployment back")
    cluster.kubectl("-n", namespace, "patch", "deployment/drift", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    wait_for(lambda: cluster.get("apps/v1", "Deployment", namespace, "drift")["spec"]["replicas"] == 1, 60, "replicas restored")


def test_invalid_specs(cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    bad = half_plus_two("bad", namespace, model={"storage": {"hostPath": {"path": "/models/x"}}, "versions": [1]}, versionLabels={"stable": 2})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    p = cluster.kubectl("apply", "-f", str(tmp_path / "bad.yaml"), check=False)
    assert p.returncode != 0 and "must name a version listed in model.versions" in p.stderr
    nopvc = half_plus_two("nopvc", namespace, model={"storage": {"pvc": {"claimName": "absent"}}})
    cluster.create(nopvc)
    obj = wait_for(lambda: condition(cluster.md(namespace, "nopvc"), "Degraded").get("status") == "True" and cluster.md(namespace, "nopvc"), 60, "StorageNotFound")
    assert condition(obj, "Ready")["reason"] == "StorageNotFound"
    assert cluster.get("apps/v1", "Deployment", namespace, "nopvc") is None
    wait_for(lambda: ("Warning", "StorageNotFound") in cluster.events(namespace, "nopvc"), 60, "Warning event")


def test_operator_restart_converges(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "op1.log", cluster.operator_env()).start()
    try:
        cluster.create(half_plus_two("restart", namespace))
        wait_for(lambda: cluster.get("v1", "ConfigMap", namespace, "restart-config"), 60, "started reconciling")
    finally:
        op.stop(signal.SIGKILL)
    gen = cluster.patch_spec(namespace, "restart", {"replicas": 2})
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "op2.log", cluster.operator_env()).start()
    try:
        wait_for(lambda: reconciled(cluster, namespace, "restart", gen), READY_TIMEOUT, "converged")
        assert cluster.get("apps/v1", "Deployment", namespace, "restart")["spec"]["replicas"] == 2
    finally:
        op.stop()


def test_many_and_kubectl(cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    docs = [half_plus_two(f"m{i}", namespace) for i in range(8)]
    (tmp_path / "many.yaml").write_text(yaml.safe_dump_all(docs))
    cluster.kubectl("apply", "-f", str(tmp_path / "many.yaml"))
    wait_for(lambda: all(reconciled(cluster, namespace, f"m{i}") for i in range(8)), READY_TIMEOUT, "all reconciled")
    out = cluster.kubectl("-n", namespace, "get", "md").stdout.splitlines()
    assert out[0].split()[:4] == ["NAME", "READY", "MODEL", "VERSIONS"] and len(out) == 9
