"""The end-to-end scenarios (`make e2e`): on the local cluster, or on the cluster E2E_KUBECONFIG names.

1. the canary example: applied, pods Ready only after warmup, predictions through the Service, Ready in `kubectl get md`;
2. scale 1 -> 3 -> 1 under continuous load through the Service: zero failed requests;
3. a pod's server process killed: replaced, and the Service skips it meanwhile;
4. the ModelDeployment deleted: its pods, Service, ConfigMap and processes are gone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from e2e_support import (
    CHILDREN,
    READY_TIMEOUT,
    ROOT,
    Cluster,
    Load,
    OperatorProcess,
    condition,
    half_plus_two,
    process_alive,
    running_pid,
    wait_for,
)

pytestmark = pytest.mark.e2e


def ready(cluster: Cluster, ns: str, name: str, replicas: int | None = None) -> dict | None:
    """The ModelDeployment once Ready for its generation (with exactly `replicas` live pods, if given)."""
    obj = cluster.md(ns, name)
    if not obj or obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    if condition(obj, "Ready").get("status") != "True":
        return None
    if replicas is not None:
        pods = [p for p in cluster.pods(ns, name) if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != replicas or len(cluster.pods(ns, name)) != replicas:
            return None
    return obj


def pod_ready(pod: dict) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def test_1_the_canary_example_serves_after_warmup(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    doc = yaml.safe_load((ROOT / "examples" / "local-canary.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    cluster.create(doc)
    wait_for(lambda: ready(cluster, namespace, "local-canary", 1), READY_TIMEOUT, "the example Ready")
    (pod,) = cluster.pods(namespace, "local-canary")
    log = cluster.kubectl("-n", namespace, "logs", pod["metadata"]["name"]).stdout
    warmed = re.findall(r"^(\S+ \S+),\d+ .*version (\d) warmed up", log, re.M)
    assert sorted(v for _, v in warmed) == ["1", "2"], log
    became_ready = condition(pod, "Ready")["lastTransitionTime"]
    ready_at = time.mktime(time.strptime(became_ready, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert all(ready_at >= int(time.mktime(time.strptime(t, "%Y-%m-%d %H:%M:%S"))) for t, _ in warmed)
    assert cluster.predict(namespace, "local-canary", "two_versions", [1.0, 2.0, 5.0], label="stable") == [2.5, 3.0, 4.5]
    assert cluster.predict(namespace, "local-canary", "two_versions", [1.0, 2.0, 5.0], label="canary") == [4.0, 5.0, 8.0]
    rows = cluster.kubectl("-n", namespace, "get", "md").stdout.splitlines()
    assert rows[1].split()[:2] == ["local-canary", "True"]


def test_2_scaling_under_load_fails_no_request(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    cluster.create(half_plus_two("scale", namespace, replicas=1))
    wait_for(lambda: ready(cluster, namespace, "scale", 1), READY_TIMEOUT, "1 replica")
    with Load(cluster, namespace, "scale", "half_plus_two") as load:
        wait_for(lambda: load.ok >= 20, 60, "load flowing")
        cluster.patch_spec(namespace, "scale", {"replicas": 3})
        wait_for(lambda: ready(cluster, namespace, "scale", 3), READY_TIMEOUT, "3 replicas")
        served_at_3 = load.ok
        cluster.patch_spec(namespace, "scale", {"replicas": 1})
        wait_for(lambda: ready(cluster, namespace, "scale", 1), READY_TIMEOUT, "back to 1 replica, the others gone")
        wait_for(lambda: load.ok >= served_at_3 + 20, 60, "load still flowing")
    assert load.failures == [], load.failures[:5]
    assert load.ok > 100


def test_3_a_killed_server_is_replaced_and_skipped_meanwhile(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    cluster.create(half_plus_two("kill", namespace, replicas=2))
    wait_for(lambda: ready(cluster, namespace, "kill", 2), READY_TIMEOUT, "2 replicas")
    victim = cluster.pods(namespace, "kill")[0]
    name = victim["metadata"]["name"]
    pid = running_pid(victim)
    cluster.kill_server(victim)
    wait_for(lambda: not pod_ready(cluster.pod(namespace, name) or {}), 60, "the pod not ready")
    slices = cluster.kube.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")["items"]
    wait_for(lambda: all(not e["conditions"].get("ready") for s in cluster.kube.request(
        "GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices")["items"]
        for e in s.get("endpoints") or [] if (e.get("targetRef") or {}).get("name") == name), 30, f"its endpoint not ready ({slices})")
    # Meanwhile every request through the Service reaches the other pod.
    for _ in range(30):
        assert cluster.predict(namespace, "kill", "half_plus_two", [1.0]) == [2.5]
    replaced = wait_for(lambda: (p := cluster.pod(namespace, name)) and pod_ready(p) and p, READY_TIMEOUT, "ready again")
    assert replaced["status"]["containerStatuses"][0]["restartCount"] >= 1
    if pid is not None:
        assert not process_alive(pid)
    wait_for(lambda: ready(cluster, namespace, "kill", 2), READY_TIMEOUT, "2 ready replicas again")


def test_4_deleting_the_model_deployment_removes_everything(cluster: Cluster, namespace: str, operator: OperatorProcess, tmp_path: Path) -> None:
    cluster.create(half_plus_two("gone", namespace, replicas=2))
    wait_for(lambda: ready(cluster, namespace, "gone", 2), READY_TIMEOUT, "2 replicas")
    pids = [running_pid(p) for p in cluster.pods(namespace, "gone")]
    cluster.kubectl("-n", namespace, "delete", "md", "gone", "--timeout=60s")  # waits for the operator to drop its finalizer
    assert cluster.md(namespace, "gone") is None
    wait_for(lambda: all(cluster.get(a, k, namespace, "gone" + s) is None for a, k, s in CHILDREN), 120, "its children gone")
    wait_for(lambda: cluster.pods(namespace, "gone") == [], 120, "its pods gone")
    assert [p for p in pids if p is not None and process_alive(p)] == []
