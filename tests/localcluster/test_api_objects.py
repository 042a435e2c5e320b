"""What the fake API server learnt for the local cluster, as kube-apiserver does it: graceful pod
deletion, status writes that bump resourceVersion, new kinds in discovery, pods/log and scale
subresources, kubectl's server-side tables (also in `kubectl get -w`), in-process watchers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from localcluster.fakeapi import FakeKubeAPI
from support import wait_for

KUBECTL = Path(sys.executable).parent / "kubectl"


def kubectl(fake: FakeKubeAPI, tmp_path: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ, KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    p = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p.stdout + p.stderr


def pod(name: str, node: str = "", grace: int = 7) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "x"}], "terminationGracePeriodSeconds": grace}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def test_pods_on_a_node_are_deleted_gracefully(fake: FakeKubeAPI, tmp_path: Path) -> None:
    pods = fake.resources[("", "pods")]
    fake.add_object(pod("unbound"))
    fake.add_object(pod("bound", node="local"))
    fake.delete(pods, "default", "unbound")
    assert fake.get("", "pods", "default", "unbound") is None  # never scheduled: gone at once
    kubectl(fake, tmp_path, "delete", "pod", "bound", "--wait=false")
    live = fake.get("", "pods", "default", "bound")
    assert live["metadata"]["deletionTimestamp"] and live["metadata"]["deletionGracePeriodSeconds"] == 7
    rv = live["metadata"]["resourceVersion"]
    fake.update(pods, "default", "bound", {"metadata": {"name": "bound"}, "status": {"phase": "Running"}}, subresource="status")
    live = fake.get("", "pods", "default", "bound")
    assert live is not None, "a status write must not end a graceful deletion"
    assert int(live["metadata"]["resourceVersion"]) > int(rv), "status writes bump resourceVersion"
    assert live["metadata"]["deletionGracePeriodSeconds"] == 7
    kubectl(fake, tmp_path, "delete", "pod", "bound", "--grace-period=2", "--wait=false")
    assert fake.get("", "pods", "default", "bound")["metadata"]["deletionGracePeriodSeconds"] == 2  # shortened
    fake.delete(pods, "default", "bound", grace=0)  # what the kubelet sends once the containers stopped
    assert fake.get("", "pods", "default", "bound") is None


def test_force_deletion_and_finalizers(fake: FakeKubeAPI, tmp_path: Path) -> None:
    fake.add_object(pod("forced", node="local"))
    kubectl(fake, tmp_path, "delete", "pod", "forced", "--grace-period=0", "--force")
    assert fake.get("", "pods", "default", "forced") is None
    p = pod("held", node="local")
    p["metadata"]["finalizers"] = ["example.com/hold"]
    fake.add_object(p)
    fake.delete(fake.resources[("", "pods")], "default", "held", grace=0)
    held = fake.get("", "pods", "default", "held")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["example.com/hold"]
    fake.update(fake.resources[("", "pods")], "default", "held", {**held, "metadata": {**held["metadata"], "finalizers": []}})
    assert fake.get("", "pods", "default", "held") is None


def test_new_kinds_are_served_and_printed(fake: FakeKubeAPI, tmp_path: Path) -> None:
    resources = kubectl(fake, tmp_path, "api-resources", "-o", "name")
    for name in ("pods", "replicasets.apps", "endpointslices.discovery.k8s.io", "nodes", "horizontalpodautoscalers.autoscaling", "events"):
        assert name in resources.split()
    p = pod("web-1", node="local")
    p["status"] = {"phase": "Running", "podIP": "127.0.0.1",
                   "containerStatuses": [{"name": "c", "ready": True, "restartCount": 2, "state": {"running": {}}, "image": "x", "imageID": ""}]}
    fake.add_object(p)
    header, row = kubectl(fake, tmp_path, "get", "pods", "-o", "wide").splitlines()[:2]
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert row.split()[:4] == ["web-1", "1/1", "Running", "2"] and row.split()[5:] == ["127.0.0.1", "local"]
    fake.add_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default",
                     "annotations": {"localcluster.modeldeploy.io/ports": json.dumps({"http": 40001})}},
                     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8501}]}})
    assert "8501:40001/TCP" in kubectl(fake, tmp_path, "get", "svc", "web")


def test_logs_and_scale_subresources(fake: FakeKubeAPI, tmp_path: Path) -> None:
    fake.add_object(pod("logged", node="local"))
    out = kubectl(fake, tmp_path, "logs", "logged", check=False)
    assert "waiting to start" in out  # no node agent: no log yet
    fake.log_source = lambda ns, name, container, tail: "one\ntwo\n" if (ns, name, container) == ("default", "logged", "c") else None
    assert kubectl(fake, tmp_path, "logs", "logged") == "one\ntwo\n"
    fake.add_object({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"},
                     "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                              "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
    kubectl(fake, tmp_path, "scale", "deployment/d", "--replicas=4")
    live = fake.get("apps", "deployments", "default", "d")
    assert live["spec"]["replicas"] == 4 and live["metadata"]["generation"] == 2
    scale = json.loads(kubectl(fake, tmp_path, "get", "--raw", "/apis/apps/v1/namespaces/default/deployments/d/scale"))
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 4} and scale["status"]["selector"] == "app=d"


def test_watch_events_come_as_tables_when_kubectl_asks(fake: FakeKubeAPI, tmp_path: Path) -> None:
    fake.add_object(pod("w", node="local"))
    env = dict(os.environ, KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    watch = subprocess.Popen([str(KUBECTL), "get", "pods", "-w", "--request-timeout=30s"], env=env, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        wait_for(lambda: any(a.verb == "watch" and a.resource == "pods" for a in fake.audit()), "the watch")
        p = fake.get("", "pods", "default", "w")
        p["status"] = {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 5, "state": {"running": {}},
                                                                   "image": "x", "imageID": ""}]}
        fake.update(fake.resources[("", "pods")], "default", "w", p, subresource="status")
        wait_for(lambda: any(line.split()[:4] == ["w", "1/1", "Running", "5"] for line in lines), "the watched row", timeout=20)
    finally:
        watch.terminate()
        watch.wait(10)


async def test_in_process_watchers_see_every_change_in_order(fake: FakeKubeAPI) -> None:
    seen: list[tuple[str, str, str]] = []
    got = asyncio.Event()

    def on_event(etype: str, plural: str, obj: dict) -> None:
        seen.append((etype, plural, obj["metadata"]["name"]))
        if etype == "DELETED":
            got.set()

    unsubscribe = fake.subscribe({("", "configmaps")}, on_event, asyncio.get_running_loop())
    cms = fake.resources[("", "configmaps")]
    fake.add_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}, "data": {"k": "1"}})
    fake.add_object(pod("ignored"))
    cm = fake.get("", "configmaps", "default", "a")
    fake.update(cms, "default", "a", {**cm, "data": {"k": "2"}})
    fake.delete(cms, "default", "a")
    await asyncio.wait_for(got.wait(), 5)
    unsubscribe()
    fake.add_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "default"}})
    await asyncio.sleep(0)  # let a (wrongly) scheduled callback run before checking it did not
    assert seen == [("ADDED", "configmaps", "a"), ("MODIFIED", "configmaps", "a"), ("DELETED", "configmaps", "a")]
