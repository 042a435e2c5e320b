"""Progressive rollouts end to end (`make e2e`), on the local cluster with its real Prometheus
scraping real model-server pods, short steps (seconds):

- a healthy new version is promoted through every step by itself;
- a version that refuses a share of its requests, and one that is slow, are each rolled back by
  themselves; from the client's side, after the rollback no request fails and none reaches it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from e2e_support import MD_API, READY_TIMEOUT, ClientThreads, Cluster, OperatorProcess, condition, wait_for

pytestmark = pytest.mark.e2e
MODEL = "rollout"


def rollout_md(name: str, ns: str, prometheus: str) -> dict:
    return {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns}, "spec": {
        "model": {"name": MODEL, "storage": {"hostPath": {"path": "/models/rollout"}}, "versions": [1, 2, 3, 4]},
        "versionLabels": {"stable": 1}, "resources": {"cpu": "100m", "memory": "512Mi"}, "replicas": 1,
        "warmup": {"generate": {"batchSizes": [1]}},
        "rollout": {"steps": [20, 50, 100], "stepSeconds": 4, "prometheus": {"url": prometheus},
                    "analysis": {"intervalSeconds": 3, "minRequests": 20, "maxErrorRate": 0.05, "maxLatencyRatio": 4,
                                 "failureThreshold": 2}}}}


class Traffic(ClientThreads):
    """Two clients sending unlabelled predictions, one in five with x = 150 (which version 3 refuses);
    every answer's version, and every failure, with the time the request was sent."""

    def __init__(self, cluster: Cluster, ns: str, service: str, model: str = MODEL):
        super().__init__(2)
        self.url = f"{cluster.service_url(ns, service)}/v1/models/{model}:predict"
        self.answers: list[tuple[float, int]] = []
        self._sent = [0, 0]  # requests per thread

    def connect(self, i: int) -> Any:
        return requests.Session()

    def request(self, i: int, conn: Any) -> None:
        self._sent[i] += 1
        x = 150.0 if (self._sent[i] + i) % 5 == 0 else 2.0
        sent = time.monotonic()  # requests are judged by when they were sent
        r = conn.post(self.url, json={"instances": [x]}, timeout=30)
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} v{r.headers.get('X-Model-Version')}")
        with self._lock:
            self.answers.append((sent, int(r.headers["X-Model-Version"])))

    def since(self, t0: float) -> tuple[list[int], list[str]]:
        with self._lock:
            versions = [v for t, v in self.answers if t >= t0]
        return versions, self.failures_since(t0)


def rollout_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return ((cluster.md(ns, name) or {}).get("status") or {}).get("rollout") or {}


def version_state(md: dict[str, Any], version: int) -> str | None:
    return next((v.get("state") for v in (md.get("status") or {}).get("versions") or [] if v.get("version") == version), None)


def rolled_back_event(cluster: Cluster, ns: str, name: str, version: int) -> bool:
    """Whether the Warning Event RolledBack of `version`'s rollout has been posted."""
    out = cluster.kube.request("GET", f"/api/v1/namespaces/{ns}/events",
                               query={"fieldSelector": f"involvedObject.name={name}"})
    return any(e.get("type") == "Warning" and e.get("reason") == "RolledBack"
               and f"version {version} rolled back" in e.get("message", "") for e in out.get("items", []))


def roll(cluster: Cluster, ns: str, name: str, to: int, traffic: Traffic, end: str) -> dict[str, Any]:
    """Move stable to `to` and follow the rollout until its phase is `end`; the weights it went through."""
    gen = cluster.patch_spec(ns, name, {"versionLabels": {"stable": to}})
    weights: list[int] = []

    def done() -> dict[str, Any] | None:
        st = rollout_status(cluster, ns, name)
        if st.get("toVersion") == to and st.get("generation") == gen and (not weights or weights[-1] != st.get("weight")):
            weights.append(int(st.get("weight", 0)))
        return st if st.get("toVersion") == to and st.get("phase") == end else None

    try:
        st = wait_for(done, 240, f"the rollout to version {to} {end}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {json.dumps((cluster.md(ns, name) or {}).get('status'))}") from None
    return {**st, "weights": weights}


def test_a_healthy_version_is_promoted_and_bad_ones_are_rolled_back(cluster: Cluster, namespace: str,
                                                                    operator: OperatorProcess) -> None:
    prometheus = cluster.prometheus()
    cluster.create(rollout_md("prog", namespace, prometheus))
    wait_for(lambda: condition(cluster.md(namespace, "prog"), "Ready").get("status") == "True", READY_TIMEOUT, "Ready")
    with Traffic(cluster, namespace, "prog") as traffic:
        wait_for(lambda: len(traffic.answers) >= 50, 60, "traffic flowing")

        ok = roll(cluster, namespace, "prog", 2, traffic, "Succeeded")
        assert {20, 50} <= set(ok["weights"]) and ok["failedChecks"] == 0, ok  # stepped, not jumped
        t0 = time.monotonic()
        wait_for(lambda: len(traffic.since(t0)[0]) >= 50, 60, "traffic on the promoted version")
        versions, failures = traffic.since(t0)
        assert set(versions) == {2} and not failures
        md = cluster.md(namespace, "prog")
        assert md["status"]["routing"]["labels"]["stable"] == 2 and condition(md, "Degraded")["status"] == "False"

        for bad, why in ((3, "errors: more errors"), (4, "latency: slower")):
            st = roll(cluster, namespace, "prog", bad, traffic, "Failed")
            assert why in st["message"], st
            md = cluster.md(namespace, "prog")
            assert condition(md, "Degraded")["reason"] == "RolledBack" and why in condition(md, "Degraded")["message"]
            assert md["status"]["routing"]["labels"]["stable"] == 2  # all traffic back on the old version
            # the Event is posted after the status is written: waited for, and this version's own
            # (the first bad version's RolledBack Event is still there when the second fails)
            wait_for(lambda bad=bad: rolled_back_event(cluster, namespace, "prog", bad), 30,
                     f"the RolledBack Event of version {bad}")
            # the rolled-back version is unloaded, though model.versions lists it
            wait_for(lambda bad=bad: version_state(cluster.md(namespace, "prog"), bad) != "Available", 60,
                     f"version {bad} unloaded")
            t0 = time.monotonic()
            wait_for(lambda t0=t0: len(traffic.since(t0)[0]) >= 50, 60, "traffic after the rollback")
            versions, failures = traffic.since(t0)
            assert set(versions) == {2} and not failures, (set(versions), failures[:5], cluster.md(namespace, "prog")["status"])
    print(f"\nrollout weights to version 2: {ok['weights']}")


def test_the_rollout_state_survives_an_operator_restart(cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
    prometheus = cluster.prometheus()
    doc = rollout_md("restart", namespace, prometheus)
    doc["spec"]["rollout"]["stepSeconds"] = 6
    cluster.create(doc)
    wait_for(lambda: condition(cluster.md(namespace, "restart"), "Ready").get("status") == "True", READY_TIMEOUT, "Ready")
    with Traffic(cluster, namespace, "restart") as traffic:
        wait_for(lambda: len(traffic.answers) >= 30, 60, "traffic flowing")
        cluster.patch_spec(namespace, "restart", {"versionLabels": {"stable": 2}})
        wait_for(lambda: rollout_status(cluster, namespace, "restart").get("weight") == 50, 120, "the second step")
        operator.stop()
        operator.start()
        st = wait_for(lambda: (s := rollout_status(cluster, namespace, "restart")).get("phase") == "Succeeded" and s,
                      180, "promotion after the restart")
        events = [(e.get("reason"), e.get("message", "")) for e in cluster.kube.request(
            "GET", f"/api/v1/namespaces/{namespace}/events").get("items", [])]
        assert st["toVersion"] == 2 and st["failedChecks"] == 0, (json.dumps(st), events)
        # resumed where it was: one start, each step entered once
        assert [r for r, _m in events].count("RolloutStarted") == 1, events
        assert sorted(m for r, m in events if r == "RolloutStep") == [
            "step 1/3: 20% to version 2", "step 2/3: 50% to version 2", "step 3/3: 100% to version 2"], events
    assert json.dumps(st)  # plain data in status


def test_a_shadow_judges_the_new_version_before_any_user_sees_it(cluster: Cluster, namespace: str,
                                                                  operator: OperatorProcess) -> None:
    """rollout.shadow: half_plus_two 1 -> 123 (the same answers) passes its shadow phase and then
    steps; rollout 1 -> 2 (x + 3 instead of 0.5x + 2) diverges and is rolled back while it shadows:
    no user request is ever answered by version 2."""
    prometheus = cluster.prometheus()
    shadow = {"percent": 50, "seconds": 6}
    same = rollout_md("same", namespace, prometheus)
    same["spec"]["model"] = {"name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}},
                             "versions": [1, 123]}
    same["spec"]["rollout"] = {**same["spec"]["rollout"], "steps": [50, 100], "shadow": shadow}
    same["spec"]["rollout"]["analysis"]["maxDivergence"] = 0.001
    cluster.create(same)
    wait_for(lambda: condition(cluster.md(namespace, "same"), "Ready").get("status") == "True", READY_TIMEOUT, "Ready")
    with Traffic(cluster, namespace, "same", model="half_plus_two") as traffic:
        wait_for(lambda: len(traffic.answers) >= 30, 60, "traffic flowing")
        ok = roll(cluster, namespace, "same", 123, traffic, "Succeeded")
        assert ok["failedChecks"] == 0 and 50 in ok["weights"], ok
    events = cluster.events(namespace, "same")
    assert ("Normal", "RolloutShadow") in events and ("Normal", "RolloutStep") in events

    diverging = rollout_md("diverging", namespace, prometheus)
    diverging["spec"]["rollout"] = {**diverging["spec"]["rollout"], "shadow": shadow}
    diverging["spec"]["rollout"]["analysis"]["maxDivergence"] = 0.001
    cluster.create(diverging)
    wait_for(lambda: condition(cluster.md(namespace, "diverging"), "Ready").get("status") == "True", READY_TIMEOUT,
             "Ready")
    with Traffic(cluster, namespace, "diverging") as traffic:
        wait_for(lambda: len(traffic.answers) >= 30, 60, "traffic flowing")
        t0 = time.monotonic()
        st = roll(cluster, namespace, "diverging", 2, traffic, "Failed")
        assert "divergence" in st["message"] and st["weight"] == 0, st
        wait_for(lambda: len(traffic.since(t0)[0]) >= 30, 60, "traffic after the rollback")
        versions, failures = traffic.since(t0)
        assert set(versions) == {1}, set(versions)  # no user ever got version 2's answer
        # version 3 refuses one request in five of the Traffic's; versions 1 and 2 answer them all
        assert not failures, failures[:5]
