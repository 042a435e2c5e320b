"""Deployments, ReplicaSets, pods as processes, Services: the local cluster as Kubernetes does it.

The pods run tests/localcluster/podserver.py (real processes on loopback, steered through files);
the cluster runs in a background thread (no operator, no Prometheus: see e2e/ for those).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster.objects import HOST_PORTS_ANNOTATION, controller_uid, pod_ready, running_pid, terminating
from localcluster_support import ThreadCluster, alive, container, deployment, get, owned, service
from support import wait_for


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    d = tmp_path / "node-models"
    d.mkdir()
    return d


@pytest.fixture
def lc(tmp_path: Path, node_dir: Path) -> Iterator[ThreadCluster]:
    with ThreadCluster(tmp_path / "state", node_mounts=[("/models", str(node_dir))]) as c:
        yield c


def test_a_deployment_becomes_ready_pods_behind_a_service(lc: ThreadCluster, node_dir: Path) -> None:
    lc.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": "default"},
         "data": {"greeting": "models at /models/x, data at /data"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "default"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        service("web"),
        deployment("web", replicas=2, containers=[container(
            env={"READY_FILE": "/models/ready", "FILES": "/etc/web/greeting", "HOME": "/scratch", "APP": "web", "WHO": "$(APP)-pod"},
            volumeMounts=[{"name": "config", "mountPath": "/etc/web"}, {"name": "scratch", "mountPath": "/scratch"},
                          {"name": "models", "mountPath": "/models"}, {"name": "data", "mountPath": "/data", "subPath": "sub"}])],
            volumes=[{"name": "config", "configMap": {"name": "web-config"}}, {"name": "scratch", "emptyDir": {}},
                     {"name": "models", "hostPath": {"path": "/models", "type": "Directory"}},
                     {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]),
    )
    dep = lc.api.get("apps", "deployments", "default", "web")
    rs = wait_for(lambda: owned(lc.api.list_objects("apps", "replicasets", "default"), dep), "a ReplicaSet")[0]
    assert rs["metadata"]["name"] == f"web-{rs['metadata']['labels']['pod-template-hash']}"
    pods = wait_for(lambda: (ps := lc.pods("web")) and len(ps) == 2 and all(running_pid(p) for p in ps) and ps, "2 running pods")
    for p in pods:
        assert controller_uid(p) == rs["metadata"]["uid"] and p["spec"]["nodeName"] == "local"
        assert p["metadata"]["labels"]["pod-template-hash"] == rs["metadata"]["labels"]["pod-template-hash"]
        assert not pod_ready(p), "ready before its readiness probe passed"
    assert lc.api.get("apps", "deployments", "default", "web")["status"].get("readyReplicas", 0) == 0
    (node_dir / "ready").write_text("")
    wait_for(lambda: lc.ready_pods("web", 2), "2 ready pods")
    status = wait_for(lambda: (s := lc.api.get("apps", "deployments", "default", "web")["status"]).get("availableReplicas") == 2 and s, "available")
    assert {k: status[k] for k in ("replicas", "readyReplicas", "updatedReplicas", "availableReplicas", "observedGeneration")} == {
        "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "observedGeneration": 1}
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Available": "True", "Progressing": "True"}
    # Through the Service: every connection to one ready pod, round-robin.
    url = lc.service_url("web")
    assert {get(url).text for _ in range(4)} == {f"hello from {p['metadata']['name']}" for p in lc.pods("web")}
    info = get(f"{url}/info").json()
    pod = next(p for p in lc.pods("web") if p["metadata"]["name"] == info["env"]["HOSTNAME"])
    host_port = json.loads(pod["metadata"]["annotations"][HOST_PORTS_ANNOTATION])["8080"]
    assert info["argv"][-1] == f"--port={host_port}" and host_port != 8080
    scratch = info["env"]["HOME"]
    assert scratch.startswith(str(lc.cluster.state / "pods")) and Path(scratch).is_dir()
    assert info["env"]["WHO"] == "web-pod"  # $(VAR) from the variables declared before it
    pvc_dir = lc.cluster.state / "volumes" / "pvc" / "default" / "data"
    ((config_path, greeting),) = info["files"].items()  # FILES named /etc/web/greeting: the env is translated too
    assert config_path.startswith(info["cwd"]) and config_path.endswith("/volumes/config/greeting")
    assert greeting == f"models at {node_dir}/x, data at {pvc_dir}/sub"  # and so is the ConfigMap's content
    assert lc.api.get("", "persistentvolumeclaims", "default", "data")["status"]["phase"] == "Bound"
    out = lc.kubectl("get", "pods", "-o", "wide")
    assert "1/1" in out and "Running" in out and "127.0.0.1" in out and "local" in out
    assert "listening on 127.0.0.1" in lc.kubectl("logs", pod["metadata"]["name"])
    assert "web" in lc.kubectl("get", "endpointslices")
    # A headless Service (clusterIP: None) gets EndpointSlices with each pod's port, and no proxy
    headless = service("web")
    headless["metadata"]["name"] = "web-direct"
    headless["spec"]["clusterIP"] = "None"
    lc.apply(headless)
    def direct_endpoints() -> list[str] | None:
        eps = sorted(ep["addresses"][0] + f":{s['ports'][0]['port']}"
                     for s in lc.api.list_objects("discovery.k8s.io", "endpointslices", "default")
                     if s["metadata"]["labels"].get("kubernetes.io/service-name") == "web-direct"
                     for ep in s["endpoints"])
        return eps if len(eps) == 2 else None

    direct = wait_for(direct_endpoints, "the headless Service's slices, one endpoint per pod")
    assert all(d.startswith("127.0.0.1:") and not d.endswith(":8080") for d in direct)
    assert lc.cluster.services is not None and lc.cluster.services.local_port("default", "web-direct", "http") is None
    described = lc.kubectl("describe", "pod", pod["metadata"]["name"])
    assert "Status:       Running" in described and "Scheduled" in described and "Started container app" in described


def test_scale_up_and_down_and_a_rolling_update_within_bounds(lc: ThreadCluster) -> None:
    lc.apply(service("roll"), deployment("roll", replicas=1))
    wait_for(lambda: lc.ready_pods("roll", 1), "1 ready pod", timeout=60)
    lc.kubectl("scale", "deployment/roll", "--replicas=3")
    wait_for(lambda: lc.ready_pods("roll", 3), "3 ready pods", timeout=60)
    lc.kubectl("scale", "deployment/roll", "--replicas=1")
    wait_for(lambda: lc.ready_pods("roll", 1) and len(lc.pods("roll", include_terminating=True)) == 1, "back to 1", timeout=60)
    lc.kubectl("scale", "deployment/roll", "--replicas=3")
    wait_for(lambda: lc.ready_pods("roll", 3), "3 again", timeout=60)
    # Every pod event of the rollout, seen in order: never above 3 + maxSurge 1, never below 3 ready.
    samples: list[tuple[int, int]] = []
    lock = threading.Lock()

    def sample(etype: str, plural: str, obj: dict) -> None:
        active = lc.pods("roll")
        with lock:
            samples.append((len(active), sum(1 for p in active if pod_ready(p))))

    unsubscribe = lc.call(lambda: lc.api.subscribe({("", "pods")}, sample, lc.loop))
    try:
        lc.kubectl("set", "env", "deployment/roll", "VERSION=2")
        dep = lc.api.get("apps", "deployments", "default", "roll")
        wait_for(lambda: (s := lc.api.get("apps", "deployments", "default", "roll")["status"]).get("updatedReplicas") == 3
                 and s.get("replicas") == 3 and s.get("availableReplicas") == 3 and s["observedGeneration"] == dep["metadata"]["generation"],
                 "rollout complete", timeout=90)
    finally:
        unsubscribe()
    with lock:
        assert samples and max(total for total, _ in samples) <= 4 and min(ready for _, ready in samples) >= 3, samples
    pods = lc.pods("roll")
    assert all({"name": "VERSION", "value": "2"} in p["spec"]["containers"][0]["env"] for p in pods)
    rss = owned(lc.api.list_objects("apps", "replicasets", "default"), dep)
    assert sorted(r["spec"]["replicas"] for r in rss) == [0, 3]
    assert "successfully rolled out" in lc.kubectl("rollout", "status", "deployment/roll", "--timeout=30s")


def test_a_crashed_process_restarts_with_back_off_and_leaves_the_service_meanwhile(lc: ThreadCluster) -> None:
    lc.apply(service("crash"), deployment("crash", replicas=1))
    (pod,) = wait_for(lambda: lc.ready_pods("crash", 1), "ready", timeout=60)
    name, first_pid = pod["metadata"]["name"], running_pid(pod)
    assert first_pid and alive(first_pid)
    import os
    import signal

    os.kill(first_pid, signal.SIGKILL)
    gone = wait_for(lambda: (p := lc.api.get("", "pods", "default", name)) and not pod_ready(p) and p, "not ready after the crash")
    assert gone["metadata"]["name"] == name  # the same pod: its container restarts
    p = wait_for(lambda: (p := lc.api.get("", "pods", "default", name)) and pod_ready(p) and p, "ready again", timeout=30)
    status = p["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 137
    os.kill(running_pid(p), signal.SIGKILL)  # type: ignore[arg-type]
    backoff = wait_for(lambda: ((lc.api.get("", "pods", "default", name)["status"]["containerStatuses"][0]["state"].get("waiting") or {})
                                .get("reason") == "CrashLoopBackOff"), "CrashLoopBackOff")
    assert backoff
    p = wait_for(lambda: (p := lc.api.get("", "pods", "default", name)) and pod_ready(p) and p, "ready after the back-off", timeout=30)
    assert p["status"]["containerStatuses"][0]["restartCount"] == 2
    reasons = {e["reason"] for e in lc.api.list_objects("", "events", "default") if e["involvedObject"]["name"] == name}
    assert {"Scheduled", "Started", "BackOff"} <= reasons


def test_a_failing_liveness_probe_restarts_the_container(lc: ThreadCluster, tmp_path: Path) -> None:
    dead = tmp_path / "dead"
    lc.apply(deployment("live", containers=[container(env={"DEAD_FILE": str(dead)})]))
    (pod,) = wait_for(lambda: lc.ready_pods("live", 1), "ready", timeout=60)
    dead.write_text("")
    restarted = wait_for(lambda: lc.api.get("", "pods", "default", pod["metadata"]["name"])["status"]["containerStatuses"][0]["restartCount"] >= 1,
                         "a restart", timeout=30)
    dead.unlink()
    assert restarted
    wait_for(lambda: lc.ready_pods("live", 1), "ready again", timeout=30)
    messages = [e["message"] for e in lc.api.list_objects("", "events", "default") if e["involvedObject"]["name"] == pod["metadata"]["name"]]
    assert any("failed liveness probe, will be restarted" in m for m in messages)


def test_deletion_runs_pre_stop_then_sigterm_then_sigkill_after_the_grace_period(lc: ThreadCluster, tmp_path: Path) -> None:
    term = tmp_path / "term"
    lc.apply(service("stop"), deployment("stop", grace=4, containers=[container(
        env={"TERM_FILE": str(term), "IGNORE_TERM": "1"}, lifecycle={"preStop": {"sleep": {"seconds": 1}}})]))
    (pod,) = wait_for(lambda: lc.ready_pods("stop", 1), "ready", timeout=60)
    name, pid = pod["metadata"]["name"], running_pid(pod)
    assert pid
    started = time.monotonic()
    lc.kubectl("delete", "pod", name, "--wait=false")
    p = wait_for(lambda: (p := lc.api.get("", "pods", "default", name)) and terminating(p) and p, "terminating")
    assert p["metadata"]["deletionGracePeriodSeconds"] == 4
    slices = lc.api.list_objects("discovery.k8s.io", "endpointslices", "default")
    wait_for(lambda: all(not e["conditions"]["ready"] for s in lc.api.list_objects("discovery.k8s.io", "endpointslices", "default")
                         for e in s["endpoints"] if e["targetRef"]["name"] == name), f"endpoint not ready ({slices})")
    wait_for(term.exists, "SIGTERM")
    assert time.monotonic() - started >= 1.0, "SIGTERM before the preStop hook ended"
    assert alive(pid)  # it ignores SIGTERM...
    wait_for(lambda: not alive(pid), "SIGKILL after the grace period", timeout=15)
    assert time.monotonic() - started >= 3.5  # ...until the grace period (4 s, preStop included) ran out
    wait_for(lambda: lc.api.get("", "pods", "default", name) is None, "the pod object deleted")
    wait_for(lambda: lc.ready_pods("stop", 1), "a replacement pod", timeout=60)  # the ReplicaSet replaces it


def test_deleting_the_deployment_removes_its_replicasets_pods_and_processes(lc: ThreadCluster) -> None:
    lc.apply(deployment("gc", replicas=2, grace=2))
    pods = wait_for(lambda: lc.ready_pods("gc", 2), "ready", timeout=60)
    pids = [running_pid(p) for p in pods]
    lc.kubectl("delete", "deployment", "gc")
    wait_for(lambda: not lc.pods("gc", include_terminating=True) and not lc.api.list_objects("apps", "replicasets", "default"), "all gone", timeout=30)
    assert not any(alive(p) for p in pids if p)


def test_configmap_volumes_follow_changes_after_the_configured_delay(tmp_path: Path) -> None:
    with ThreadCluster(tmp_path / "state", configmap_delay_seconds=2.0) as lc:
        lc.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default"}, "data": {"k": "one"}},
                 deployment("cfg", containers=[container(volumeMounts=[{"name": "c", "mountPath": "/etc/cfg"}])],
                            volumes=[{"name": "c", "configMap": {"name": "cfg"}}]))
        (pod,) = wait_for(lambda: lc.ready_pods("cfg", 1), "ready", timeout=60)
        worker = next(iter(lc.cluster.agent.workers.values()))  # type: ignore[union-attr]
        path = worker.dir / "volumes" / "c" / "k"
        assert path.read_text() == "one" and path.is_symlink()  # the kubelet's layout: k -> ..data/k
        changed = time.monotonic()
        cm = lc.api.get("", "configmaps", "default", "cfg")
        lc.api.update(lc.api.resources[("", "configmaps")], "default", "cfg", {**cm, "data": {"k": "two"}})
        wait_for(lambda: path.read_text() == "two", "the new content", timeout=15)
        assert time.monotonic() - changed >= 2.0


def test_pods_the_node_cannot_run_wait_with_a_reason(lc: ThreadCluster) -> None:
    lc.apply(deployment("gpu", containers=[container(resources={"limits": {"nvidia.com/gpu": "1"}})]),
             deployment("nocm", containers=[container(volumeMounts=[{"name": "c", "mountPath": "/etc/x"}])],
                        volumes=[{"name": "c", "configMap": {"name": "later"}}]))
    gpu = wait_for(lambda: (ps := lc.pods("gpu")) and ps[0]["status"].get("conditions") and ps[0], "gpu pod status")
    assert gpu["status"]["phase"] == "Pending" and not gpu["spec"].get("nodeName")
    assert gpu["status"]["conditions"][0]["message"] == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    wait_for(lambda: any(e["reason"] == "FailedMount" and 'configmap "later" not found' in e["message"]
                         for e in lc.api.list_objects("", "events", "default")), "FailedMount")
    assert not any(pod_ready(p) for p in lc.pods("nocm"))
    lc.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later", "namespace": "default"}, "data": {"a": "b"}})
    wait_for(lambda: lc.ready_pods("nocm", 1), "started once the ConfigMap exists", timeout=60)
