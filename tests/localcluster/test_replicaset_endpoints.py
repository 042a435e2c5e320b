"""The ReplicaSet and EndpointSlice controllers' decisions (localcluster.replicaset, .endpoints)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from localcluster import endpoints, replicaset
from localcluster.objects import HOST_PORTS_ANNOTATION

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
      "metadata": {"name": "web-abc", "namespace": "ns", "uid": "rs-uid", "generation": 2},
      "spec": {"replicas": 2, "minReadySeconds": 5, "selector": {"matchLabels": {"app": "web"}},
               "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}, "annotations": {"a": "b"}},
                            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8501}]}]}}}}


def pod(name: str, *, ready_for: float | None = None, node: str = "local", phase: str = "Running", restarts: int = 0,
        created: str = "2026-01-01T11:00:00Z", owner: str = "rs-uid", deleting: bool = False, ports: dict | None = None,
        labels: dict | None = None, ns: str = "ns") -> dict:
    conditions = []
    if ready_for is not None:
        since = (NOW - dt.timedelta(seconds=ready_for)).strftime("%Y-%m-%dT%H:%M:%SZ")
        conditions.append({"type": "Ready", "status": "True", "lastTransitionTime": since})
    meta: dict = {"name": name, "namespace": ns, "uid": f"uid-{name}", "creationTimestamp": created,
                  "labels": labels or {"app": "web"}, "ownerReferences": [{"uid": owner, "controller": True, "kind": "ReplicaSet", "name": "web-abc"}]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    if ports is not None:
        meta["annotations"] = {HOST_PORTS_ANNOTATION: json.dumps({str(k): v for k, v in ports.items()})}
    return {"metadata": meta, "spec": {"nodeName": node, **RS["spec"]["template"]["spec"]},
            "status": {"phase": phase, "conditions": conditions, "podIP": "127.0.0.1",
                       "containerStatuses": [{"name": "c", "restartCount": restarts}]}}


@pytest.mark.parametrize(("pods", "first"), [
    ([pod("ready", ready_for=100), pod("unready")], "unready"),
    ([pod("scheduled", ready_for=1), pod("unscheduled", node="", phase="Pending")], "unscheduled"),
    ([pod("running"), pod("pending", phase="Pending")], "pending"),
    ([pod("old", ready_for=100), pod("young", ready_for=10)], "young"),        # ready for a shorter time first
    ([pod("calm", ready_for=10), pod("crashy", ready_for=10, restarts=3)], "crashy"),
    ([pod("older", ready_for=10, created="2026-01-01T10:00:00Z"), pod("newer", ready_for=10)], "newer"),
])
def test_deletion_order(pods: list[dict], first: str) -> None:
    assert replicaset.deletion_order(pods)[0]["metadata"]["name"] == first


def test_plan_counts_only_active_pods_it_controls() -> None:
    pods = [pod("a", ready_for=100), pod("gone", deleting=True), pod("done", phase="Succeeded"), pod("other", owner="x")]
    assert replicaset.plan_replicaset(RS, pods) == (1, [])
    pods += [pod("b", ready_for=100), pod("c")]
    assert replicaset.plan_replicaset(RS, pods) == (0, ["c"])


def test_status_counts_availability_after_min_ready_seconds() -> None:
    pods = [pod("a", ready_for=100), pod("b", ready_for=2), pod("c")]
    status = replicaset.replicaset_status(RS, pods, NOW)
    assert status == {"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 2, "availableReplicas": 1, "observedGeneration": 2}
    assert replicaset.next_available_in(RS, pods, NOW) == pytest.approx(3.05)
    assert replicaset.next_available_in(RS, pods[:1], NOW) is None


def test_new_pods_carry_the_template_and_the_owner() -> None:
    p = replicaset.pod_for(RS)
    assert p["metadata"]["generateName"] == "web-abc-"
    assert p["metadata"]["labels"] == {"app": "web", "pod-template-hash": "abc"}
    assert p["metadata"]["annotations"] == {"a": "b"}
    assert p["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid",
                                                 "controller": True, "blockOwnerDeletion": True}]
    assert p["spec"] == RS["spec"]["template"]["spec"] and p["status"]["phase"] == "Pending"


SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
       "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8501, "targetPort": "http"},
                                                    {"name": "direct", "port": 80, "targetPort": 8501}]}}


def _eps(slices: list[dict]) -> list[tuple[str, tuple, dict]]:
    return [(e["targetRef"]["name"], tuple(p["port"] for p in s["ports"]), e["conditions"]) for s in slices for e in s["endpoints"]]


@pytest.mark.parametrize(("pods", "expected"), [
    ([pod("a", ready_for=9, ports={8501: 41000})], [("a", (41000, 41000), {"ready": True, "serving": True, "terminating": False})]),
    ([pod("a", ports={8501: 41000})], [("a", (41000, 41000), {"ready": False, "serving": False, "terminating": False})]),
    ([pod("a", ready_for=9, deleting=True, ports={8501: 41000})], [("a", (41000, 41000), {"ready": False, "serving": True, "terminating": True})]),
    ([pod("a", ready_for=9)], []),                                                       # no host ports yet
    ([pod("a", ready_for=9, ports={8501: 41000}, labels={"app": "db"})], []),           # not selected
    ([pod("a", ready_for=9, ports={8501: 41000}, ns="other")], []),                     # another namespace
    ([pod("a", ready_for=9, ports={8501: 41000}, phase="Failed")], []),
])
def test_slices(pods: list[dict], expected: list) -> None:
    assert _eps(endpoints.desired_slices(SVC, pods)) == expected


def test_pods_with_different_ports_get_different_slices() -> None:
    slices = endpoints.desired_slices(SVC, [pod("a", ready_for=9, ports={8501: 41000}), pod("b", ready_for=9, ports={8501: 42000})])
    assert len(slices) == 2 and len({s["metadata"]["name"] for s in slices}) == 2
    s = slices[0]
    assert s["metadata"]["labels"] == {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    assert s["metadata"]["ownerReferences"][0]["uid"] == "svc-uid" and s["addressType"] == "IPv4"
    assert s["ports"] == [{"name": "http", "port": s["ports"][0]["port"], "protocol": "TCP"},
                          {"name": "direct", "port": s["ports"][0]["port"], "protocol": "TCP"}]
    found = endpoints.endpoints_of(slices, "http")
    assert sorted(p for _, p, _ in found) == [41000, 42000]
    assert endpoints.desired_slices({**SVC, "spec": {**SVC["spec"], "selector": None}}, [pod("a", ready_for=9, ports={8501: 41000})]) == []
