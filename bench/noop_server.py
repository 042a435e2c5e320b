"""A no-op TF Serving PredictionService: the limit of this benchmark setup.

grpc.aio, the real TF Serving stubs, requests parsed as a real server must, and a constant
answer per model — no model, no TensorFlow computation. Its throughput and latency under the
same load tool on the same cores is what no Python gRPC server here can beat; the benchmark's
targets add the model's own cost to it.

    python bench/noop_server.py --port PORT [--suspend none|yield|thread]

--suspend makes the handler suspend once before answering, to measure what that costs under
grpc.aio: `yield` awaits asyncio.sleep(0), `thread` awaits a no-op on a worker thread (the hop a
server makes to run its model off the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

# name -> (input name, input shape, output name, output shape); -1 is the batch dimension.
# The same signatures as demomodels's half_plus_two and mlp (serving_default).
MODELS: dict[str, tuple[str, list[int], str, list[int]]] = {
    "half_plus_two": ("x", [-1], "y", [-1]),
    "mlp": ("x", [-1, 784], "probabilities", [-1, 10]),
}


def _shape(dims: list[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def _metadata(name: str) -> get_model_metadata_pb2.GetModelMetadataResponse:
    in_name, in_shape, out_name, out_shape = MODELS[name]
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    sig.inputs[in_name].CopyFrom(meta_graph_pb2.TensorInfo(
        name=f"serving_default_{in_name}:0", dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(in_shape)))
    sig.outputs[out_name].CopyFrom(meta_graph_pb2.TensorInfo(
        name="StatefulPartitionedCall:0", dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(out_shape)))
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    sig_map.signature_def["serving_default"].CopyFrom(sig)
    resp = get_model_metadata_pb2.GetModelMetadataResponse()
    resp.model_spec.name = name
    resp.model_spec.version.value = 1
    resp.metadata["signature_def"].Pack(sig_map)
    return resp


def _answer(name: str) -> predict_pb2.PredictResponse:
    """The constant answer: a batch-1 output of the model's shape, zeros."""
    _, _, out_name, out_shape = MODELS[name]
    dims = [1 if d == -1 else d for d in out_shape]
    n = 1
    for d in dims:
        n *= d
    resp = predict_pb2.PredictResponse()
    resp.model_spec.name = name
    resp.model_spec.version.value = 1
    resp.model_spec.signature_name = "serving_default"
    resp.outputs[out_name].CopyFrom(
        tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(dims), float_val=[0.0] * n))
    return resp


class NoopPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, suspend: str = "none") -> None:
        self._answers = {n: _answer(n) for n in MODELS}
        self._metadata = {n: _metadata(n) for n in MODELS}
        self._suspend = suspend
        self._pool = concurrent.futures.ThreadPoolExecutor(1) if suspend == "thread" else None

    async def Predict(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if self._suspend == "yield":
            await asyncio.sleep(0)
        elif self._pool is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, int)
        answer = self._answers.get(request.model_spec.name)
        if answer is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})")
        return answer

    async def GetModelMetadata(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        md = self._metadata.get(request.model_spec.name)
        if md is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({request.model_spec.name})")
        return md


async def serve(port: int, suspend: str = "none") -> None:
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(NoopPredictionService(suspend), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop server on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--suspend", choices=["none", "yield", "thread"], default="none")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.suspend))


if __name__ == "__main__":
    main()
