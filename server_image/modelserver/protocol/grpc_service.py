"""gRPC front end: TF Serving's PredictionService and ModelService on grpc.aio."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from modelserver.config.model_config import ConfigError, model_configs_from_proto
from modelserver.contract import LABEL_METADATA, ROUTE_KEY_METADATA
from modelserver.core.errors import ServingError, invalid_argument, wire_message
from modelserver.core.request_context import RequestContext
from modelserver.core.state import ServerState
from modelserver.protocol import proto_api

log = logging.getLogger("modelserver.grpc")

INT32_MAX = 2**31 - 1


def parse_channel_arguments(text: str) -> list[tuple[str, Any]]:
    """`--grpc_channel_arguments` (key=value,key=value) as grpc server options; integers as int."""
    out: list[tuple[str, Any]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        out.append((key.strip(), int(value) if value.strip().lstrip("-").isdigit() else value.strip()))
    return out


# Connection limits (each overridable with --grpc_channel_arguments): a connection must finish
# its HTTP/2 (and TLS) handshake within 10 s, one with no call for 5 minutes is closed (GOAWAY;
# clients reconnect on their next call), and the server pings a connection with calls in flight
# every minute, closing it when 20 s pass without the answer (a peer that vanished).
CONNECTION_OPTIONS: dict[str, int] = {
    "grpc.server_handshake_timeout_ms": 10_000,
    "grpc.max_connection_idle_ms": 300_000,
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_timeout_ms": 20_000,
}


def server_options(channel_arguments: str, max_request_tensor_bytes: int = 0) -> list[tuple[str, Any]]:
    """The gRPC server's arguments: messages received up to twice --max_request_tensor_bytes (a
    request's tensors plus their encoding; TF Serving's 2 GiB when it is 0), sent up to 2 GiB,
    CONNECTION_OPTIONS; --grpc_channel_arguments overrides any of them."""
    receive = min(INT32_MAX, 2 * max_request_tensor_bytes) if max_request_tensor_bytes > 0 else INT32_MAX
    opts: dict[str, Any] = {
        "grpc.max_receive_message_length": receive,
        "grpc.max_send_message_length": INT32_MAX,
        "grpc.so_reuseport": 0,
        **CONNECTION_OPTIONS,
    }
    opts.update(dict(parse_channel_arguments(channel_arguments)))
    return list(opts.items())


class _Base:
    """The transport: a request's lifecycle is the data plane's; this adds only what is gRPC's
    own (malformed bytes, the SIGTERM hold, the deadline, the status on the wire)."""

    protocol = "grpc"  # the requests' protocol in metrics and traces (v2_grpc: "v2_grpc")

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.plane = state.plane

    async def _handle(
        self, api: str, request: Any, context: grpc.aio.ServicerContext,
        body: Callable[[RequestContext], Awaitable[Any]],
    ) -> Any:
        if self.state.drain_gate is not None and not isinstance(request, MalformedRequest):
            await self.state.drain_gate.wait()  # SIGTERM: held until gRPC stops taking calls (main.py)
        remaining = context.time_remaining()
        deadline = time.perf_counter() + remaining if remaining is not None else None
        try:
            async with self.plane.request(self.protocol, api, deadline=deadline, route_key=route_key(context)) as ctx:
                if isinstance(request, MalformedRequest):
                    raise invalid_argument(request.message)
                if self.state.trace_context:  # OpenTelemetry or payload logging is on
                    trace_metadata(context, ctx)
                    if self.state.capture_payloads and api in PAYLOAD_APIS:
                        ctx.request_payload = request
                response = await body(ctx)
                if ctx.request_payload is not None:
                    ctx.response_payload = response
                if ctx.routed and ctx.label and ctx.label.isascii() and ctx.label.isprintable():
                    # the label the traffic split chose (the version is in model_spec); metadata is ASCII
                    context.set_trailing_metadata(((LABEL_METADATA, ctx.label),))
                return response
        except ServingError as exc:
            await context.abort(exc.code, wire_message(exc.message))


def route_key(context: grpc.aio.ServicerContext) -> bytes | None:
    """The client's `x-model-route-key` metadata (str or, for a `-bin` key, bytes), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == ROUTE_KEY_METADATA:
            return value.encode() if isinstance(value, str) else bytes(value)
    return None


def trace_metadata(context: grpc.aio.ServicerContext, ctx: RequestContext) -> None:
    """The client's W3C `traceparent` and `tracestate` metadata onto the request's context."""
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            ctx.traceparent = value
        elif key == "tracestate" and isinstance(value, str):
            ctx.tracestate = value


PAYLOAD_APIS = frozenset({"predict", "classify", "regress", "multi_inference"})  # what payload logging keeps


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._handle("predict", request, context, lambda ctx: proto_api.predict(self.plane, request, ctx))

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._handle("classify", request, context,
                                  lambda ctx: proto_api.classify(self.plane, request, ctx))

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._handle("regress", request, context, lambda ctx: proto_api.regress(self.plane, request, ctx))

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return await self._handle("multi_inference", request, context,
                                  lambda ctx: proto_api.multi_inference(self.plane, request, ctx))

    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            return proto_api.get_model_metadata(self.plane, request, ctx)

        return await self._handle("get_model_metadata", request, context, body)


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            return proto_api.get_model_status(self.plane, request, ctx)

        return await self._handle("get_model_status", request, context, body)

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        async def body(ctx: RequestContext) -> Any:
            if not self.state.flags.enable_reload_config_rpc:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "HandleReloadConfigRequest is turned off on this "
                                   "server (--enable_reload_config_rpc=false)")
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported"
                )
            try:
                configs = model_configs_from_proto(request.config)
            except ConfigError as exc:
                raise invalid_argument(str(exc)) from None
            await self.state.manager.reload(configs)
            return model_management_pb2.ReloadConfigResponse()

        return await self._handle("reload_config", request, context, body)


class MalformedRequest:
    """Stands for a request whose bytes are not a valid message (answered INVALID_ARGUMENT)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _safe_deserializer(message_cls: Any) -> Callable[[bytes], Any]:
    parse = message_cls.FromString
    type_name = message_cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(f"Could not parse the request as {type_name}: {exc}")

    return deserialize


_PREDICTION_METHODS = {
    "Classify": (classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
    "Regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
    "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
    "MultiInference": (inference_pb2.MultiInferenceRequest, inference_pb2.MultiInferenceResponse),
    "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest,
                         get_model_metadata_pb2.GetModelMetadataResponse),
}
_MODEL_METHODS = {
    "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest, get_model_status_pb2.GetModelStatusResponse),
    "HandleReloadConfigRequest": (model_management_pb2.ReloadConfigRequest, model_management_pb2.ReloadConfigResponse),
}


def _generic_handler(service: str, servicer: Any, methods: dict[str, tuple[Any, Any]]) -> grpc.GenericRpcHandler:
    """Like the generated add_*_to_server, but a malformed request reaches the servicer as
    MalformedRequest (INVALID_ARGUMENT) instead of failing in grpc with UNKNOWN."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=_safe_deserializer(req),
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in methods.items()
    }
    return grpc.method_handlers_generic_handler(service, handlers)


def add_services(server: grpc.aio.Server, state: ServerState) -> None:
    server.add_generic_rpc_handlers((
        _generic_handler("tensorflow.serving.PredictionService", PredictionService(state), _PREDICTION_METHODS),
        _generic_handler("tensorflow.serving.ModelService", ModelService(state), _MODEL_METHODS),
    ))
