"""model-server's own cost per gRPC Predict, without the transport: where the time goes.

Times, in one process and one thread, the steps the server takes for a batch-1 Predict (the
request perf_analyzer sends: tensor_content, serving_default), each in a tight loop, best of
several repeats (so that a busy machine disturbs it little):

- parse: PredictRequest.FromString (grpc's deserializer)
- convert: request tensors -> numpy (modelserver.protocol.proto_api.predict_inputs)
- validate: modelserver.core.servable.validate_inputs
- model: Signature.run (the signature's prepared session callable, after its first calls chose
  the calling thread or the inter-op pool), batch 1
- respond: PredictResponse with model_spec and outputs (filled in place, as proto_api.predict)
- serialize: PredictResponse.SerializeToString
- predict(): modelserver.protocol.proto_api.predict end to end on an inline data plane (convert +
  validate + model + respond), under asyncio
- signature call: `tf.saved_model.load(dir).signatures["serving_default"](x=...)`, TF2's own
  keyword call (how the server called TF2 models before it loaded them into sessions)
- handler: the whole gRPC Predict handler (PredictionService.Predict: lifecycle, resolve, convert,
  validate, run, respond, metrics) with a fake servicer context, a model answering a constant and
  the plain inline runner: everything of ours a request costs the event loop, without the model
- batched handler: the same with 32 handlers at once through the server's Batcher
  (bench/batching_parameters.txt): µs of event-loop CPU per request, batching included

Prints one JSON object per model: {"model", "steps_us": {step: µs}}.

    python bench/hotpath.py --models bench/work/models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import BENCH

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def best_us(fn: Callable[[], Any], n: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def request_bytes(model: str) -> bytes:
    import numpy as np
    from modelserver.core.tensors import to_tensor_proto
    from tensorflow_serving.apis import predict_pb2

    x = np.full((1, 784), 0.5, np.float32) if model == "mlp" else np.array([1.0], np.float32)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.inputs["x"].CopyFrom(to_tensor_proto(x))
    return req.SerializeToString()


def measure(model_dir: Path, model: str, n: int) -> dict[str, float]:
    import tensorflow as tf
    from modelserver.core.dataplane import DataPlane
    from modelserver.core.request_context import RequestContext
    from modelserver.core.runner import InlineRunner
    from modelserver.core.servable import load_servable, validate_inputs
    from modelserver.core.tensors import fill_tensor_proto
    from modelserver.protocol import proto_api
    from tensorflow_serving.apis import predict_pb2

    servable = load_servable(model, 1, model_dir)
    sig = servable.signature("")
    raw = request_bytes(model)
    req = predict_pb2.PredictRequest.FromString(raw)
    inputs = proto_api.predict_inputs(sig, req)
    outputs = sig.run(inputs)
    keyword = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    feed = {k: tf.constant(v) for k, v in inputs.items()}
    runner = InlineRunner()
    plane = DataPlane(None, lambda _model: runner)

    def respond() -> Any:  # as proto_api.predict builds it
        resp = predict_pb2.PredictResponse()
        proto_api.fill_model_spec(resp.model_spec, servable, sig.name)
        for name in outputs:
            fill_tensor_proto(resp.outputs[name], outputs[name])
        return resp

    resp = respond()
    loop = asyncio.new_event_loop()

    def predict_e2e() -> Any:
        return loop.run_until_complete(proto_api.predict(plane, req, RequestContext("grpc", "predict"), servable))

    model_n = max(50, n // 20)
    handler_us, batched_us = handler_costs(model, servable, raw, n)
    steps = {
        "parse": best_us(lambda: predict_pb2.PredictRequest.FromString(raw), n),
        "convert": best_us(lambda: proto_api.predict_inputs(sig, req), n),
        "validate": best_us(lambda: validate_inputs(sig, inputs), n),
        "model": best_us(lambda: sig.run(inputs), model_n),
        "respond": best_us(respond, n),
        "serialize": best_us(resp.SerializeToString, n),
        "predict()": best_us(predict_e2e, model_n),
        "signature call": best_us(lambda: keyword(**feed), model_n),
        "handler": handler_us,
        "batched handler": batched_us,
    }
    loop.close()
    return steps


class _Context:
    """The parts of grpc.aio's ServicerContext the handler uses."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "perf_analyzer"),)

    def set_trailing_metadata(self, md: Any) -> None:
        pass

    async def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(message)


def handler_costs(model: str, servable: Any, raw: bytes, n: int) -> tuple[float, float]:
    """(µs per request of the gRPC handler alone, µs of loop CPU per request with 32 handlers
    batched), both with the model answering a constant (see the module docstring)."""
    import numpy as np
    from modelserver.batching.options import load_batching_parameters
    from modelserver.batching.scheduler import batcher_for
    from modelserver.config.flags import parse_args
    from modelserver.config.model_config import load_monitoring_config
    from modelserver.core.runner import InlineRunner
    from modelserver.core.state import ServerState
    from modelserver.observability import metrics
    from modelserver.protocol import grpc_service
    from tensorflow_serving.apis import predict_pb2

    class OneModel:  # the manager's hot-path queries, for one servable
        routing = None

        def resolve_unlabelled(self, name: str, key: Any = None) -> tuple[Any, None]:
            return servable, None

        def resolve(self, name: str, version: Any = None, label: Any = None) -> Any:
            return servable

    flags = parse_args([])
    state = ServerState(flags, OneModel(), InlineRunner(),  # type: ignore[arg-type]
                        monitoring_config=load_monitoring_config(BENCH / "monitoring.config"))
    server_metrics = metrics.install(state)
    service = grpc_service.PredictionService(state)
    req = predict_pb2.PredictRequest.FromString(raw)
    sig = servable.signature("")
    (out_name, out), = sig.run(proto_inputs(sig, req)).items()
    real_fn = sig.fn
    sig.fn = lambda inputs: {out_name: np.repeat(out[:1], len(next(iter(inputs.values()))), axis=0)}
    ctx = _Context()

    async def one() -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                await service.Predict(req, ctx)
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    async def batched(concurrency: int = 32, seconds: float = 1.0) -> float:
        batcher = batcher_for(load_batching_parameters(BENCH / "batching_parameters.txt"), flags,
                              server_metrics.record_batch if server_metrics else None)
        state.default_runner = batcher
        done = 0
        stop = False

        async def client() -> None:
            nonlocal done
            while not stop:
                await service.Predict(req, ctx)
                done += 1
                await asyncio.sleep(0)  # the next request arrives on a later loop turn

        tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
        await asyncio.sleep(0.2)
        best = float("inf")
        for _ in range(3):
            done, c0 = 0, time.thread_time()
            await asyncio.sleep(seconds)
            best = min(best, (time.thread_time() - c0) / max(1, done))
        stop = True
        await asyncio.gather(*tasks)
        await batcher.close()
        state.default_runner = InlineRunner()
        return best * 1e6

    try:
        return asyncio.run(one()), asyncio.run(batched())
    finally:
        sig.fn = real_fn


def proto_inputs(sig: Any, req: Any) -> Any:
    from modelserver.protocol import proto_api

    return proto_api.predict_inputs(sig, req)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="directory holding half_plus_two/1 and mlp/1")
    parser.add_argument("--n", type=int, default=2000, help="calls per repeat of the cheap steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    for model in ("half_plus_two", "mlp"):
        steps = measure(Path(args.models) / model / "1", model, args.n)
        print(json.dumps({"model": model, "steps_us": steps}))
        print(model + ": " + ", ".join(f"{k} {v:.1f} µs" for k, v in steps.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
