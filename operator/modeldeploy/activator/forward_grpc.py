"""A ModelDeployment's gRPC port on the activator: a generic handler for every unary method
(TF Serving's PredictionService and ModelService are all unary) that forwards the request's raw
bytes, with its metadata and the time left of its deadline (grpc-timeout), to a ready pod once the
gate lets it through, and answers with the pod's bytes, metadata and status: no protos needed.
"""

from __future__ import annotations

import asyncio
import itertools

import grpc

from modeldeploy.activator import metrics
from modeldeploy.activator.hold import DeadlineExceeded, Endpoint, Gate, HoldError, Refused

_SKIP_PREFIXES = ("grpc-", ":")
_SKIP = {"user-agent", "te", "content-type"}


def _metadata(pairs: object) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in (pairs or ()) if not k.startswith(_SKIP_PREFIXES) and k not in _SKIP)  # type: ignore[attr-defined]


class GrpcForwarder(grpc.GenericRpcHandler):
    def __init__(self, gate: Gate):
        self.gate = gate
        self.channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._turn = itertools.count()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method

        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
            return await self.handle(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)

    def channel(self, ep: Endpoint) -> grpc.aio.Channel:
        key = (ep.address, ep.grpc_port)
        if key not in self.channels:
            self.channels[key] = grpc.aio.insecure_channel(
                f"{ep.address}:{ep.grpc_port}",
                options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        return self.channels[key]

    async def forget(self, keep: tuple[Endpoint, ...]) -> None:
        """Close the channels of pods no longer ready."""
        wanted = {(e.address, e.grpc_port) for e in keep}
        for key in [k for k in self.channels if k not in wanted]:
            await self.channels.pop(key).close()

    async def handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
        remaining = context.time_remaining()
        loop = asyncio.get_running_loop()
        deadline = None if remaining is None else loop.time() + remaining
        try:
            endpoints, held = await self.gate.wait("grpc", deadline)
        except HoldError as exc:
            code = (grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(exc, Refused) else
                    grpc.StatusCode.DEADLINE_EXCEEDED if isinstance(exc, DeadlineExceeded) else grpc.StatusCode.UNAVAILABLE)
            context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
            await context.abort(code, str(exc))
        except asyncio.CancelledError:
            metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "grpc", "gone").inc()
            raise
        if not held:
            metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "grpc", "forwarded").inc()
        answer = await self._forward(method, request, context, endpoints, deadline)
        if held:
            self.gate.answered()
        return answer

    async def _forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
                       endpoints: tuple[Endpoint, ...], deadline: float | None) -> bytes:
        md = _metadata(context.invocation_metadata())
        start = next(self._turn)
        loop = asyncio.get_running_loop()
        tries = min(2, len(endpoints))
        for i in range(tries):
            ep = endpoints[(start + i) % len(endpoints)]
            timeout = None if deadline is None else max(0.001, deadline - loop.time())
            call = self.channel(ep).unary_unary(method)(request, timeout=timeout, metadata=md)
            try:
                answer = await call
            except grpc.aio.AioRpcError as exc:
                # a pod gone meanwhile (connection refused): the next one, once; any other error is the pod's answer
                if exc.code() == grpc.StatusCode.UNAVAILABLE and i + 1 < tries:
                    continue
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "grpc", "failed").inc()
                context.set_trailing_metadata(_metadata(exc.trailing_metadata()))
                await context.abort(exc.code(), exc.details() or "")
            initial = _metadata(await call.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            context.set_trailing_metadata(_metadata(await call.trailing_metadata()))
            return answer  # type: ignore[no-any-return]
        metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "grpc", "failed").inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {self.gate.name}: no ready pod")
        raise AssertionError("abort raises")  # pragma: no cover
