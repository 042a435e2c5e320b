"""Scale to zero and back on the local cluster (`make e2e`): the real operator, the real activator
(`python -m modeldeploy.activator`), the local cluster's Prometheus scraping real model-server pods.

One ModelDeployment with `minReplicas: 0` and a short idle window goes 1 -> 0 -> 1 -> 0 -> 1 under
bursts of REST and gRPC requests through its Service, separated by more than the idle window:
every request within the limits is answered (held in the activator while there is no pod, released
to the first ready one); at zero, a burst over `maxHeldRequests` gets exactly its excess refused
(429); the operator stopped while requests are held and started again scales up and answers them;
with a bad model (a pod that never becomes ready) the held requests end at the hold timeout with
503 "is starting", nothing is left held, and status says why.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from activator_support import ActivatorProcess
from e2e_support import READY_TIMEOUT, Cluster, OperatorProcess, condition, half_plus_two, wait_for

pytestmark = pytest.mark.e2e
IDLE = 8
CAP = 12


@pytest.fixture
def activator(tmp_path: Path) -> Iterator[ActivatorProcess]:
    (tmp_path / "activator").mkdir()
    a = ActivatorProcess(tmp_path / "activator", token="e2e-token").start()
    yield a
    a.stop()


def start_operator(cluster: Cluster, ns: str, activator: ActivatorProcess, log: Path) -> OperatorProcess:
    token = activator.workdir / "token"
    return OperatorProcess(cluster.kubeconfig, ns, log, {
        **cluster.operator_env(), "PROMETHEUS_URL": cluster.prometheus(),
        "MODELDEPLOY_ACTIVATOR_URL": activator.url, "MODELDEPLOY_ACTIVATOR_TOKEN_FILE": str(token)}).start()


def zero_md(ns: str, **more: Any) -> dict:
    return half_plus_two("zero", ns, autoscaling={
        "minReplicas": 0, "maxReplicas": 2, "metric": "inFlightRequests", "target": 100, "intervalSeconds": 2,
        "scaleToZero": {"idleSeconds": IDLE, "maxHeldRequests": CAP, "holdTimeoutSeconds": 90}}, **more)


def grpc_predict(target: str) -> list[float]:
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: PLC0415 - TF import is slow

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    req.inputs["x"].dtype = 1  # DT_FLOAT
    req.inputs["x"].tensor_shape.dim.add().size = 2
    req.inputs["x"].float_val.extend([1.0, 2.0])
    with grpc.insecure_channel(target) as ch:
        out = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=120)
    return list(out.outputs["y"].float_val)


def rest_predict(url: str) -> tuple[int, Any]:
    r = requests.post(f"{url}/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]}, timeout=120)
    return r.status_code, r.json()


def burst(cluster: Cluster, ns: str, n_rest: int, n_grpc: int, pool: cf.ThreadPoolExecutor) -> list[cf.Future[Any]]:
    url = cluster.service_url(ns, "zero")
    target = cluster.service_url(ns, "zero", "grpc").removeprefix("http://")
    return [pool.submit(rest_predict, url) for _ in range(n_rest)] + [pool.submit(grpc_predict, target) for _ in range(n_grpc)]


def at_zero(cluster: Cluster, ns: str) -> bool:
    md = cluster.md(ns, "zero") or {}
    return condition(md, "ScaledToZero").get("status") == "True" and not cluster.pods(ns, "zero")


def _has_port(cluster: Cluster, ns: str) -> bool:
    try:
        cluster.service_url(ns, "zero")
    except AssertionError:
        return False
    return True


def zero_status(cluster: Cluster, ns: str) -> dict:
    return ((cluster.md(ns, "zero") or {}).get("status") or {}).get("scaleToZero") or {}


def dump(cluster: Cluster, ns: str, activator: ActivatorProcess, log: Path) -> str:
    """What a failure report shows: the ModelDeployment's status, its Deployment, pods and slices,
    the activator's gates and both processes' logs."""
    md = cluster.md(ns, "zero") or {}
    dep = cluster.get("apps/v1", "Deployment", ns, "zero") or {}
    slices = cluster.kube.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices").get("items", [])
    lines = [f"status: {json.dumps(md.get('status'), indent=1)}",
             f"deployment replicas {dep.get('spec', {}).get('replicas')} status {dep.get('status')}",
             f"pods: {[(p['metadata']['name'], p.get('status', {}).get('phase')) for p in cluster.pods(ns, 'zero')]}",
             *(f"slice {s['metadata']['name']}: {s.get('ports')} {s.get('endpoints')}" for s in slices)]
    try:
        lines.append(f"activator: {activator.target(ns, 'zero')}")
    except (StopIteration, requests.RequestException) as exc:
        lines.append(f"activator: {exc!r}")
    lines += ["operator log:", log.read_text()[-4000:], "activator log:", activator.log_path.read_text()[-3000:]]
    return "\n".join(lines)


def test_zero_one_zero_one_under_bursts(cluster: Cluster, namespace: str, activator: ActivatorProcess,
                                        tmp_path: Path) -> None:
    ns = namespace
    op = start_operator(cluster, ns, activator, tmp_path / "operator.log")
    try:
        cluster.create(zero_md(ns))
        wait_for(lambda: condition(cluster.md(ns, "zero"), "Ready").get("status") == "True", READY_TIMEOUT, "first pod ready")
        assert rest_predict(cluster.service_url(ns, "zero")) == (200, {"predictions": [2.5, 3.0]})
        report: list[str] = []
        with cf.ThreadPoolExecutor(CAP + 8) as pool:
            for cycle in (1, 2):
                started = time.monotonic()
                wait_for(lambda: at_zero(cluster, ns), 180, f"cycle {cycle}: scaled to zero")
                report.append(f"cycle {cycle}: at zero after {time.monotonic() - started:.0f} s")
                if cycle == 2:  # the operator is down while the requests arrive and wait
                    op.stop()
                before = zero_status(cluster, ns).get("lastColdStart")
                futures = burst(cluster, ns, 4, 4, pool)
                if cycle == 2:
                    wait_for(lambda: activator.target(ns, "zero")["held"] == 8, 60, "eight held requests")
                    op = start_operator(cluster, ns, activator, tmp_path / "operator.log")
                t0 = time.monotonic()
                results = [f.result(timeout=180) for f in futures]
                report.append(f"cycle {cycle}: 8 held requests answered in {time.monotonic() - t0:.1f} s")
                assert results[:4] == [(200, {"predictions": [2.5, 3.0]})] * 4
                assert results[4:] == [[2.5, 3.0]] * 4
                cold = wait_for(lambda prev=before: (c := zero_status(cluster, ns).get("lastColdStart")) != prev and c,
                                60, "this cold start in status")
                report.append(f"cycle {cycle}: cold start {json.dumps(cold)}")
            # over the cap, at zero: exactly the excess is refused
            wait_for(lambda: at_zero(cluster, ns), 180, "scaled to zero again")
            url = cluster.service_url(ns, "zero")
            futures = [pool.submit(rest_predict, url) for _ in range(CAP + 4)]
            codes = sorted(f.result(timeout=180)[0] for f in futures)
            assert codes == [200] * CAP + [429] * 4, codes
        events = {r for _t, r in cluster.events(ns, "zero")}
        assert {"ScaledToZero", "ScaledFromZero"} <= events
        print("\n".join(report), file=sys.stderr)
    except BaseException:
        print("\n".join(report), dump(cluster, ns, activator, tmp_path / "operator.log"), sep="\n", file=sys.stderr)
        raise
    finally:
        op.stop()


def test_a_pod_that_never_becomes_ready_ends_held_requests_at_the_hold_timeout(
        cluster: Cluster, namespace: str, activator: ActivatorProcess, tmp_path: Path) -> None:
    ns = namespace
    op = start_operator(cluster, ns, activator, tmp_path / "operator.log")
    try:
        md = zero_md(ns)
        md["spec"]["model"]["storage"] = {"hostPath": {"path": "/models/does-not-exist"}}
        md["spec"]["autoscaling"]["scaleToZero"]["holdTimeoutSeconds"] = 10
        cluster.create(md)
        wait_for(lambda: _has_port(cluster, ns), 60, "the Service's local port")
        wait_for(lambda: zero_status(cluster, ns).get("message"), 60, "status.scaleToZero")
        status, body = rest_predict(cluster.service_url(ns, "zero"))
        assert status == 503 and "is starting" in body["error"], body
        wait_for(lambda: activator.target(ns, "zero")["held"] == 0, 30, "nothing left held")
        ready = condition(cluster.md(ns, "zero"), "Ready")
        assert ready.get("status") == "False" and ready.get("message"), ready
    finally:
        op.stop()

