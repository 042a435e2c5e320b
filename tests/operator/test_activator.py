"""The activator against a real model-server, as the operator drives it (its HTTP API): requests
held while a ModelDeployment has no ready pod and released to the first one, REST and gRPC; the
cap (exactly the excess refused, with Retry-After); the hold timeout; the client's deadline; a
client that leaves; and, with ready pods, plain forwarding (labels, route keys, answers' headers).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from activator_support import ActivatorProcess
from server_support import ServerProcess, predict_request
from support import wait_for
from tensorflow_serving.apis import prediction_service_pb2_grpc

NS = "ml"


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess], demo_models: Path) -> ServerProcess:
    return start_server([f"--model_config_file={demo_models / 'models.config'}"])


@pytest.fixture
def activator(tmp_path: Path) -> Iterator[ActivatorProcess]:
    a = ActivatorProcess(tmp_path, token="t0ken").start()
    yield a
    a.stop()


def pod(server: ServerProcess) -> dict[str, Any]:
    return {"address": "127.0.0.1", "grpcPort": server.grpc_port, "httpPort": server.rest_port}


def rest(port: int, path: str = "/v1/models/half_plus_two:predict", body: Any = None, **kw: Any) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{port}{path}", json=body or {"instances": [1.0, 2.0]}, **kw)


def grpc_predict(port: int, timeout: float = 60, label: str | None = None) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        model = "two_versions" if label else "half_plus_two"
        return stub.Predict(predict_request(model, {"x": [1.0, 2.0]}, label=label), timeout=timeout)


def test_held_requests_are_released_to_the_first_ready_pod(activator: ActivatorProcess, server: ServerProcess) -> None:
    t = activator.put(NS, "m", [], max_held=10)
    before = requests.get(f"{activator.url}/v1/demand", params={"after": -1},
                          headers={"Authorization": "Bearer t0ken"}, timeout=10).json()["seq"]
    with cf.ThreadPoolExecutor(6) as pool:
        rests = [pool.submit(rest, t["httpPort"], timeout=60) for _ in range(3)]
        grpcs = [pool.submit(grpc_predict, t["grpcPort"]) for _ in range(3)]
        # the operator's long-poll answers once the first request is held
        demand = requests.get(f"{activator.url}/v1/demand", params={"after": before, "wait": 30},
                              headers={"Authorization": "Bearer t0ken"}, timeout=40).json()
        assert demand["seq"] > before and [w["name"] for w in demand["waiting"]] == ["m"]
        wait_for(lambda: activator.target(NS, "m")["held"] == 6, "six held requests")
        assert not any(f.done() for f in rests + grpcs)
        activator.put(NS, "m", [], max_held=10)  # the operator's next look, the pod not ready yet
        activator.put(NS, "m", [pod(server)], max_held=10)
        for f in rests:
            r = f.result()
            assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
        for f in grpcs:
            assert list(f.result().outputs["y"].float_val) == [2.5, 3.0]
    report = wait_for(lambda: (r := activator.target(NS, "m"))["lastColdStart"] and r, "the cold start's record")
    cold = report["lastColdStart"]
    assert report["held"] == 0 and cold["heldAt"] <= cold["releasedAt"] <= cold["answeredAt"]
    assert 'result="released"' in activator.metrics()


def test_over_the_cap_exactly_the_excess_is_refused(activator: ActivatorProcess, server: ServerProcess) -> None:
    t = activator.put(NS, "capped", [], max_held=4)
    with cf.ThreadPoolExecutor(8) as pool:
        held = [pool.submit(rest, t["httpPort"], timeout=60) for _ in range(2)]
        held += [pool.submit(grpc_predict, t["grpcPort"]) for _ in range(2)]
        wait_for(lambda: activator.target(NS, "capped")["held"] == 4, "four held requests")
        r = rest(t["httpPort"], timeout=10)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "maxHeldRequests" in r.json()["error"]
        with pytest.raises(grpc.RpcError) as refused:
            grpc_predict(t["grpcPort"], timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(refused.value.trailing_metadata())["retry-after"]
        activator.put(NS, "capped", [pod(server)], max_held=4)
        assert all(f.result() is not None for f in held)
        assert all(f.result().status_code == 200 for f in held[:2])


def test_hold_timeout_says_the_model_is_starting(activator: ActivatorProcess) -> None:
    t = activator.put(NS, "slow", [], hold_timeout=0.5)
    r = rest(t["httpPort"], timeout=30)
    assert r.status_code == 503 and "is starting" in r.json()["error"] and r.headers["Retry-After"]
    with pytest.raises(grpc.RpcError) as late:
        grpc_predict(t["grpcPort"], timeout=30)
    assert late.value.code() == grpc.StatusCode.UNAVAILABLE and "is starting" in (late.value.details() or "")
    wait_for(lambda: activator.target(NS, "slow")["held"] == 0, "nothing left held")
    assert 'result="timed_out"' in activator.metrics()


def test_the_clients_deadline_comes_first(activator: ActivatorProcess) -> None:
    t = activator.put(NS, "deadline", [], hold_timeout=120)
    with pytest.raises(grpc.RpcError) as late:
        grpc_predict(t["grpcPort"], timeout=0.5)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: activator.target(NS, "deadline")["held"] == 0, "the held request dropped")


def test_a_rest_client_that_leaves_frees_its_place(activator: ActivatorProcess) -> None:
    t = activator.put(NS, "gone", [], max_held=1, hold_timeout=120)
    with pytest.raises(requests.Timeout):
        rest(t["httpPort"], timeout=0.5)
    wait_for(lambda: activator.target(NS, "gone")["held"] == 0, "the place freed")
    assert 'result="gone"' in activator.metrics()


def test_with_ready_pods_requests_pass_through(activator: ActivatorProcess, server: ServerProcess) -> None:
    t = activator.put(NS, "warm", [pod(server)])
    r = rest(t["httpPort"], "/v1/models/two_versions/labels/canary:predict", {"instances": [1.0]}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "2"
    missing = rest(t["httpPort"], "/v1/models/nope:predict", timeout=10)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert grpc_predict(t["grpcPort"], label="stable").model_spec.version.value == 1
    assert requests.get(f"http://127.0.0.1:{t['httpPort']}/v1/models/half_plus_two", timeout=10).status_code == 200
    assert activator.target(NS, "warm")["held"] == 0


def test_the_api_needs_the_token(activator: ActivatorProcess) -> None:
    r = requests.put(f"{activator.url}/v1/targets/{NS}/x", json={"endpoints": []}, timeout=10)
    assert r.status_code == 401
    assert requests.get(f"{activator.url}/metrics", timeout=10).status_code == 200


async def test_the_operators_demand_watch_wakes_a_reconcile_and_survives_an_activator_restart(tmp_path: Path) -> None:
    """controller.activation against the real activator: not there at first (so, once it answers,
    every ModelDeployment is queued again: its gates and ports are new), then the first held
    request of a gate queues its ModelDeployment."""
    import asyncio

    from modeldeploy.controller import activation
    from support import free_port

    port, queued, reconnects = free_port(), [], []
    watch = asyncio.ensure_future(activation.watch(f"http://127.0.0.1:{port}", "t0ken", queued.append,
                                                   lambda: reconnects.append(1), retry=0.05))
    a = ActivatorProcess(tmp_path, token="t0ken", port=port)
    try:
        await asyncio.to_thread(a.start)  # the watch fails meanwhile: nothing listens until it has started
        t = await asyncio.to_thread(a.put, NS, "sleepy", [])
        for _ in range(600):  # 30 s
            if reconnects:
                break
            await asyncio.sleep(0.05)
        assert reconnects
        held = asyncio.ensure_future(asyncio.to_thread(rest, t["httpPort"], timeout=30))
        for _ in range(600):  # 30 s
            if (NS, "sleepy") in queued:
                break
            await asyncio.sleep(0.05)
        assert (NS, "sleepy") in queued
        await asyncio.to_thread(a.stop)  # the held request's connection closes with it
        await asyncio.gather(held, return_exceptions=True)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        if a.proc is not None and a.proc.poll() is None:
            a.stop()
