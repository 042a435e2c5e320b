"""The Open Inference Protocol (KServe v2) over gRPC, on the gRPC port beside TF Serving's services:
`inference.GRPCInferenceService` (ServerLive, ServerReady, ModelReady, ServerMetadata,
ModelMetadata, ModelInfer, and Triton's ModelConfig and ModelStatistics, which perf_analyzer and
tritonclient call to drive a model) and the standard `grpc.health.v1.Health` (Check: the server
with service "", or a model by its name).

The messages are v2_api/inference_pb2 (see inference.proto there). ModelInfer takes its inputs
from `raw_input_contents` (all of them, in order) or from each input's typed `contents`, and
answers in `raw_output_contents`, as Triton does. Requests go through the data plane as TF
Serving's do (grpc_service._Base: the SIGTERM hold, deadlines, route key metadata, a malformed
message answered INVALID_ARGUMENT), counted under protocol `v2_grpc`.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from modelserver.core.errors import ServingError, invalid_argument
from modelserver.core.request_context import RequestContext
from modelserver.core.state import ServerState
from modelserver.protocol import v2_model
from modelserver.protocol.grpc_service import MalformedRequest, _Base, _generic_handler
from modelserver.protocol.v2_api import inference_pb2 as pb
from modelserver.protocol.v2_types import (
    TensorBudget,
    datatype_of,
    declared_bytes,
    element_count,
    from_contents,
    from_raw,
    numpy_of,
    shape_list,
    to_raw,
)

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"


def _parameters(params: Any) -> dict[str, Any]:
    """An InferParameter map as plain values."""
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in params.items()
            if v.WhichOneof("parameter_choice")}


def decode_inputs(request: pb.ModelInferRequest, max_bytes: int | None) -> dict[str, Any]:
    """A ModelInferRequest's tensors: raw contents (one per input, in order) or typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send every "
                               "input's data raw, or none")
    if not request.inputs:
        raise invalid_argument("ModelInferRequest has no inputs")
    budget = TensorBudget(max_bytes)
    inputs: dict[str, Any] = {}
    for i, t in enumerate(request.inputs):
        name = t.name
        if name in inputs:
            raise invalid_argument(f"Input \"{name}\" is given twice")
        dt = numpy_of(name, t.datatype)
        shape, count = element_count(name, list(t.shape))
        if raw:
            budget.take(declared_bytes(dt, count, len(raw[i])))
            inputs[name] = from_raw(name, dt, shape, count, raw[i])
        else:
            budget.take(declared_bytes(dt, count))
            inputs[name] = from_contents(name, t.datatype, dt, shape, count, t.contents)
    return inputs


class InferenceService(_Base):
    protocol = "v2_grpc"

    def __init__(self, state: ServerState, stats: v2_model.ModelStats) -> None:
        super().__init__(state)
        self.stats = stats

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=not self.state.draining and self.state.manager.is_ready())

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return json_format.ParseDict(v2_model.server_metadata(), pb.ServerMetadataResponse())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            ref = v2_model.model_ref(request.name, request.version)
            try:
                self.plane.resolve(ref, ctx)
            except ServingError:
                if ref.name not in self.state.manager.models:
                    raise
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._handle("model_ready", request, context, body)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            servable = self.plane.resolve(v2_model.model_ref(request.name, request.version), ctx)
            meta = v2_model.model_metadata(self.state, servable, servable.signature(""))
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())

        return await self._handle("get_model_metadata", request, context, body)

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            servable = self.plane.resolve(v2_model.model_ref(request.name, request.version), ctx)
            config = json_format.ParseDict(v2_model.model_config(servable, servable.signature("")), pb.ModelConfig())
            return pb.ModelConfigResponse(config=config)

        return await self._handle("model_config", request, context, body)

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            ref = v2_model.model_ref(request.name, request.version)
            if ref.name and ref.name not in self.state.manager.models:
                self.plane.resolve(ref, ctx)  # NOT_FOUND
            report = self.stats.report(self.state, ref.name, ref.version)
            return json_format.ParseDict({"model_stats": report}, pb.ModelStatisticsResponse(),
                                         ignore_unknown_fields=True)

        return await self._handle("model_statistics", request, context, body)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._handle("predict", request, context, lambda ctx: self._infer(request, ctx))

    async def _infer(self, request: pb.ModelInferRequest, ctx: RequestContext) -> pb.ModelInferResponse:
        servable = self.plane.resolve(v2_model.model_ref(request.model_name, request.model_version), ctx)
        sig = servable.signature(v2_model.signature_name(_parameters(request.parameters)))
        inputs = decode_inputs(request, self.plane.max_tensor_bytes)
        pred = await self.plane.predict(servable, sig, inputs, ctx, [o.name for o in request.outputs])
        response = pb.ModelInferResponse(model_name=servable.name, model_version=str(servable.version),
                                         id=request.id)
        for name, arr in pred.outputs.items():
            out = response.outputs.add()
            out.name = name
            out.datatype = datatype_of(arr.dtype)
            out.shape.extend(shape_list(arr))
            response.raw_output_contents.append(to_raw(arr))
        return response


class HealthService(_Base):
    """grpc.health.v1.Health's Check: SERVING when the server is ready (service "") or the model
    named has an AVAILABLE version; NOT_SERVING otherwise; NOT_FOUND for an unknown service."""

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if isinstance(request, MalformedRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        manager = self.state.manager
        if request.service:
            rec = manager.models.get(request.service)
            if rec is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:100]}")
            serving = rec is not None and rec.latest is not None and not self.state.draining
        else:
            serving = not self.state.draining and manager.is_ready()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


_METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
}


def add_services(server: grpc.aio.Server, state: ServerState, stats: v2_model.ModelStats) -> None:
    server.add_generic_rpc_handlers((
        _generic_handler(SERVICE, InferenceService(state, stats), _METHODS),
        _generic_handler(HEALTH_SERVICE, HealthService(state),
                         {"Check": (health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse)}),
    ))
