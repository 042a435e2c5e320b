"""Canary traffic end to end (`make e2e`): on the local cluster, or on the cluster E2E_KUBECONFIG names.

- a weight change, a promotion and a rollback with `kubectl patch`, under continuous REST and gRPC
  load through the Service on 2 pods (each one process, and each with two front-end workers): zero failed requests, every answer from version 1 or 2, and the
  time from each patch until every pod answers by the new table (printed; the goal is 2 s);
- a canary version that fails to load never receives traffic, and status says why.

Each pod is asked directly (its own REST port) with a routing key chosen so that the old and the new
table send it to different labels: the pod answers by the new table exactly when the key's label flips.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from e2e_support import MD_API, READY_TIMEOUT, ClientThreads, Cluster, OperatorProcess, condition, wait_for
from modelserver.core.routing import bucket

pytestmark = pytest.mark.e2e
MODEL = "two_versions"  # version 1: 0.5x + 2, version 2: x + 3
ANSWERS = {1: [2.5, 3.0], 2: [4.0, 5.0]}  # for [1, 2]


def canary_md(name: str, ns: str, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "model": {"name": MODEL, "storage": {"hostPath": {"path": "/models/two_versions"}}, "versions": [1, 2]},
        "versionLabels": {"stable": 1, "canary": 2}, "traffic": {"canary": 10},
        "resources": {"cpu": "100m", "memory": "512Mi"}, "replicas": 2,
    }
    body.update(spec)
    return {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns}, "spec": body}


def key_between(lo: int, hi: int) -> str:
    """A routing key whose bucket (of 100) is in [lo, hi): stable below the stable weight, canary above."""
    return next(k for i in range(10_000) if lo <= bucket((k := f"user-{i}").encode(), 100) < hi)


def routed(obj: dict | None) -> dict:
    return ((obj or {}).get("status") or {}).get("routing") or {}


def settled(cluster: Cluster, ns: str, name: str, pods: int) -> dict | None:
    """The ModelDeployment once its generation is observed and its table is live on `pods` pods."""
    obj = cluster.md(ns, name)
    r = routed(obj)
    if not obj or obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]:
        return None
    if condition(obj, "Ready").get("status") != "True" or r.get("livePods") != pods or r.get("waiting"):
        return None
    return obj


class GrpcClient:
    """One gRPC channel to a Service, sending the same Predict of [1, 2] with TF Serving's stubs."""

    def __init__(self, target: str):
        import grpc
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self._channel = grpc.insecure_channel(target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._req = predict_pb2.PredictRequest()
        self._req.model_spec.name = MODEL
        self._req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)))

    def predict(self) -> Any:
        return self._stub.Predict(self._req, 10.0)

    def close(self) -> None:
        self._channel.close()


class MixedLoad(ClientThreads):
    """Unlabelled predictions through the Service: 2 REST threads (a connection per request) and 2
    gRPC threads (one channel each); every answer's version and every failure recorded."""

    def __init__(self, cluster: Cluster, ns: str, service: str):
        super().__init__(4, join_timeout=30)
        self.cluster, self.ns, self.service = cluster, ns, service
        self.versions: dict[int, int] = {}
        self._url = f"{cluster.service_url(ns, service)}/v1/models/{MODEL}:predict"

    def _record(self, version: int, answer: list[float]) -> None:
        with self._lock:
            self.versions[version] = self.versions.get(version, 0) + 1
        if ANSWERS.get(version) != [round(a, 4) for a in answer]:
            raise AssertionError(f"version {version} answered {answer}")

    def connect(self, i: int) -> Any:
        return None if i < 2 else GrpcClient(self.cluster.service_url(self.ns, self.service, "grpc").removeprefix("http://"))

    def request(self, i: int, conn: Any) -> None:
        if conn is None:  # REST
            r = requests.post(self._url, json={"instances": [1.0, 2.0]}, timeout=10)
            r.raise_for_status()
            self._record(int(r.headers["X-Model-Version"]), r.json()["predictions"])
        else:
            out = conn.predict()
            self._record(out.model_spec.version.value, list(out.outputs["y"].float_val))

    @property
    def answered(self) -> int:
        with self._lock:
            return sum(self.versions.values())


def pod_label(cluster: Cluster, pod: dict, key: str) -> str | None:
    """The label a pod's own server gives a request with routing key `key`."""
    r = cluster.pod_request(pod, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0]}, {"X-Model-Route-Key": key})
    return r.headers.get("X-Model-Label") if r.status_code == 200 else None


def pod_stable_version(cluster: Cluster, pod: dict) -> int | None:
    r = cluster.pod_request(pod, "GET", f"/v1/models/{MODEL}/labels/stable")
    return int(r.json()["model_version_status"][0]["version"]) if r.status_code == 200 else None


def time_until_every_pod(cluster: Cluster, ns: str, name: str, patch: dict, check: Any) -> float:
    """`kubectl patch` the spec, then seconds until `check(pod)` holds on every ready pod."""
    started = time.monotonic()
    cluster.kubectl("-n", ns, "patch", "md", name, "--type=merge", "-p", json.dumps({"spec": patch}))
    pods = [p for p in cluster.pods(ns, name) if condition(p, "Ready").get("status") == "True"]
    assert len(pods) == 2
    wait_for(lambda: all(check(p) for p in pods), 60, "every pod answering by the new table")
    return time.monotonic() - started


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "frontend-workers"])
def test_weights_a_promotion_and_a_rollback_under_load_lose_nothing(cluster: Cluster, namespace: str,
                                                                     operator: OperatorProcess, workers: int) -> None:
    """Also with two front-end workers per pod (spec.server.frontendWorkers): every worker of every
    pod answers by the new table, and no request fails."""
    spec: dict[str, Any] = {"server": {"frontendWorkers": workers}} if workers > 1 else {}
    cluster.create(canary_md("flip", namespace, **spec))
    obj = wait_for(lambda: settled(cluster, namespace, "flip", 2), READY_TIMEOUT, "2 pods with the table live")
    if workers > 1:
        from modelserver.contract import METRICS_PATH

        for pod in cluster.pods(namespace, "flip"):
            text = cluster.pod_request(pod, "GET", METRICS_PATH).text
            assert "\nmodelserver_frontend_workers 2.0\n" in text  # each pod runs its two workers
    assert routed(obj)["delivery"] == "Push" and routed(obj)["weights"] == {"stable": 90, "canary": 10}
    moved_by_50 = key_between(50, 90)  # stable at 90/10, canary at 50/50
    timings: dict[str, float] = {}
    with MixedLoad(cluster, namespace, "flip") as load:
        wait_for(lambda: load.answered >= 50, 60, "load flowing")
        timings["weight 10% -> 50%"] = time_until_every_pod(
            cluster, namespace, "flip", {"traffic": {"canary": 50}}, lambda p: pod_label(cluster, p, moved_by_50) == "canary")
        seen = load.answered
        wait_for(lambda: load.answered >= seen + 50, 60, "load at 50%")
        timings["promote (stable -> 2)"] = time_until_every_pod(
            cluster, namespace, "flip", {"versionLabels": {"stable": 2, "canary": None}, "traffic": {"canary": 0}},
            lambda p: pod_stable_version(cluster, p) == 2)
        wait_for(lambda: settled(cluster, namespace, "flip", 2), 60, "the promotion live everywhere")
        seen = load.answered
        wait_for(lambda: load.answered >= seen + 50, 60, "load after the promotion")
        timings["roll back (stable -> 1)"] = time_until_every_pod(
            cluster, namespace, "flip", {"versionLabels": {"stable": 1}}, lambda p: pod_stable_version(cluster, p) == 1)
        seen = load.answered
        wait_for(lambda: load.answered >= seen + 50, 60, "load after the rollback")
    print("\ntime from kubectl patch until every pod answers by the new table: "
          + ", ".join(f"{k}: {v:.2f} s" for k, v in timings.items()))
    assert not load.failures, load.failures[:5]
    assert set(load.versions) == {1, 2} and load.answered > 200


def test_a_canary_that_fails_to_load_never_gets_traffic(cluster: Cluster, namespace: str,
                                                         operator: OperatorProcess) -> None:
    cluster.create(canary_md("broken", namespace, replicas=1, traffic={"canary": 10}))
    wait_for(lambda: settled(cluster, namespace, "broken", 1), READY_TIMEOUT, "the table live")
    # version 3 of the model is not a SavedModel (e2e/models.py): it fails to load on the pod
    cluster.kubectl("-n", namespace, "patch", "md", "broken", "--type=merge", "-p", json.dumps(
        {"spec": {"model": {"versions": [1, 2, 3]}, "versionLabels": {"stable": 1, "canary": 3}, "traffic": {"canary": 50}}}))

    def degraded() -> dict | None:
        obj = cluster.md(namespace, "broken")
        d = condition(obj, "Degraded")
        return obj if d.get("status") == "True" and d.get("reason") == "VersionFailed" else None

    obj = wait_for(degraded, READY_TIMEOUT, "Degraded: VersionFailed")
    assert "version 3 failed to load" in condition(obj, "Degraded")["message"]
    assert routed(obj)["labels"] == {"stable": 1, "canary": 2} and routed(obj)["weights"] == {"stable": 90, "canary": 10}
    assert condition(obj, "Ready")["status"] == "True"  # the versions in the table still serve
    for _ in range(40):
        assert cluster.predict(namespace, "broken", MODEL, [1.0, 2.0]) in (ANSWERS[1], ANSWERS[2])
    cluster.kubectl("-n", namespace, "patch", "md", "broken", "--type=merge", "-p", json.dumps(
        {"spec": {"model": {"versions": [1, 2]}, "versionLabels": {"stable": 1, "canary": 2}}}))
    wait_for(lambda: condition(cluster.md(namespace, "broken"), "Degraded").get("status") == "False", 120,
             "Degraded cleared once the spec no longer names version 3")
