"""The data plane alone: the request lifecycle every front end uses (in flight, deadline, status,
one finish per request, a bug as INTERNAL) and its operations on a real SavedModel."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from modelserver.config.model_config import ModelConfig
from modelserver.core.dataplane import DataPlane, ModelRef
from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import InlineRunner
from tensorflow_serving.apis import input_pb2


def plane(finished: list[RequestContext]) -> DataPlane:
    return DataPlane(None, lambda _m: InlineRunner(), finished.append)


async def test_lifecycle_counts_in_flight_and_finishes_each_request_once() -> None:
    finished: list[RequestContext] = []
    p = plane(finished)
    async with p.request("rest", "get_model_status") as ctx:
        assert p.in_flight == 1 and ctx.protocol == "rest"
    assert p.in_flight == 0 and finished == [ctx] and ctx.status == "OK"


@pytest.mark.parametrize(("raised", "code"), [
    (ServingError(grpc.StatusCode.NOT_FOUND, "nope"), grpc.StatusCode.NOT_FOUND),
    (KeyError("a bug"), grpc.StatusCode.INTERNAL),
])
async def test_lifecycle_records_the_status_and_raises_only_serving_errors(raised: Exception,
                                                                           code: grpc.StatusCode) -> None:
    finished: list[RequestContext] = []
    p = plane(finished)
    with pytest.raises(ServingError) as err:
        async with p.request("grpc", "predict"):
            raise raised
    assert err.value.code == code and finished[0].status == code.name and p.in_flight == 0


async def test_lifecycle_timeout_is_deadline_exceeded() -> None:
    finished: list[RequestContext] = []
    never = asyncio.Event()
    with pytest.raises(ServingError) as err:
        async with plane(finished).request("rest", "predict", timeout=0.01) as ctx:
            assert ctx.deadline is not None
            await never.wait()
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "timed out after 10 ms" in err.value.message
    assert finished[0].status == "DEADLINE_EXCEEDED"


async def test_operations_on_a_real_model(models_dir: Path) -> None:
    """TF Serving's half_plus_two layout as a TF1 graph SavedModel (demomodels, built by the
    models_dir fixture): predict, classify and regress signatures."""
    pool = ThreadPoolExecutor(1)
    manager = Manager(pool)
    await manager.reload([ModelConfig("m", str(models_dir / "half_plus_two_tf1"))])
    p = DataPlane(manager, lambda _m: InlineRunner())
    ctx = RequestContext("grpc", "predict")
    servable = p.resolve(ModelRef("m"), ctx)
    assert (ctx.model, ctx.version) == ("m", 1)
    pred = await p.predict(servable, servable.signature(""), {"x": np.array([2.0, 4.0], np.float32)}, ctx, ["y"])
    assert pred.outputs["y"].tolist() == [3.0, 4.0] and ctx.signature == "serving_default" and ctx.batch_size == 2
    examples = input_pb2.Input()
    examples.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    res = await p.classify(servable, "classify_x_to_y", examples, RequestContext("rest", "classify"))
    assert res.result.classifications[0].classes[0].score == 3.0
    reg = await p.regress(servable, "regress_x_to_y", examples, RequestContext("rest", "regress"))
    assert reg.result.regressions[0].value == 3.0
    (status,) = p.status(ModelRef("m", version=1), RequestContext("rest", "get_model_status"))
    assert (status.version, status.state_name, status.error) == (1, "AVAILABLE", None)
    _, sdm = p.metadata(ModelRef("m"), RequestContext("rest", "get_model_metadata"))
    assert set(sdm.signature_def) >= {"serving_default", "classify_x_to_y", "regress_x_to_y"}
    with pytest.raises(ServingError, match="output tensor alias not found"):
        await p.predict(servable, servable.signature(""), {"x": np.ones(1, np.float32)}, ctx, ["z"])
    with pytest.raises(ServingError, match="Unrecognized servable version label: canary"):
        p.resolve(ModelRef("m", label="canary"), ctx)
    await manager.stop()
    pool.shutdown()
