"""OpenTelemetry traces of the model API's requests (off by default).

On when `--enable_tracing` or `--tracing_endpoint` is given, or when `OTEL_TRACES_EXPORTER` names
an exporter (`otlp` or `console`; `none` turns tracing off even with the flags). The rest is the
standard `OTEL_*` environment, read by the SDK and its exporters: `OTEL_EXPORTER_OTLP_ENDPOINT`
(or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the
default, or `grpc`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default `model-server`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default
`parentbased_always_on`), `OTEL_BSP_*` (the batch processor's queue and delays).

The spans are built when a request is answered (the request-completion hook), from the times
its RequestContext already records, so a request pays nothing while it is served: one SERVER
span per request, `<api> <model>` (e.g. `predict half_plus_two`), parented on the client's
W3C `traceparent`/`tracestate` (REST headers, gRPC metadata) when it sent one, with a child span
per phase that happened: `receive` (decoding, until queued or computed), `queue` (the batch
wait), `compute` (the model run, of the whole batch), `send` (encoding the answer). Spans leave
the process on the SDK's BatchSpanProcessor thread. Tracing off installs nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from modelserver.core.request_context import RequestContext

log = logging.getLogger("modelserver.observability.otel")

EXPORTERS = ("otlp", "console")
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_SERVICE_NAME = "model-server"
CLOSE_TIMEOUT_S = 2.0  # how long a stopping server waits for the last spans' export
UNTRACED_APIS = frozenset({"reload_config"})  # an administrator's call, not a model request

# attribute names (the docs' span table lists them)
ATTR_MODEL, ATTR_VERSION, ATTR_LABEL = "model.name", "model.version", "model.label"
ATTR_SIGNATURE, ATTR_API, ATTR_PROTOCOL = "model.signature", "model.api", "modelserver.protocol"
ATTR_BATCH, ATTR_STATUS, ATTR_REQUEST_ID = "modelserver.batch_size", "modelserver.status", "modelserver.request_id"


class TracingConfigError(ValueError):
    pass


def tracing_settings(flags: Any, env: Mapping[str, str]) -> dict[str, str] | None:
    """Pure: the exporter, protocol and endpoint tracing uses, or None when tracing is off."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or not (exporter or flags.enable_tracing or flags.tracing_endpoint):
        return None
    exporter = exporter or "otlp"
    if exporter not in EXPORTERS:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={exporter!r} is not one of {', '.join(EXPORTERS)}, none")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip()
    if protocol not in PROTOCOLS:
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return {"exporter": exporter, "protocol": protocol, "endpoint": flags.tracing_endpoint or ""}


def _exporter(settings: dict[str, str]) -> Any:
    if settings["exporter"] == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    endpoint = settings["endpoint"] or None  # None: the exporter reads OTEL_EXPORTER_OTLP_*ENDPOINT
    if settings["protocol"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # as the SDK does with OTEL_EXPORTER_OTLP_ENDPOINT
    return HttpExporter(endpoint=endpoint)


class OtelTracer:
    """The request-completion hook that turns a finished RequestContext into spans."""

    def __init__(self, settings: dict[str, str], env: Mapping[str, str]) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attrs = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": DEFAULT_SERVICE_NAME}
        self.provider = TracerProvider(resource=Resource.create(attrs))  # the sampler: OTEL_TRACES_SAMPLER
        self.provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        self.tracer = self.provider.get_tracer("modelserver")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._server = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def _ns(self, t: float) -> int:
        return int(t * 1e9) + self._offset_ns

    def finish(self, ctx: RequestContext) -> None:
        if ctx.api in UNTRACED_APIS:
            return
        parent = None
        if ctx.traceparent is not None:
            carrier = {"traceparent": ctx.traceparent}
            if ctx.tracestate:
                carrier["tracestate"] = ctx.tracestate
            parent = self._propagator.extract(carrier)
        end = ctx.t_send if ctx.t_send is not None else time.perf_counter()
        attributes: dict[str, Any] = {ATTR_API: ctx.api, ATTR_PROTOCOL: ctx.protocol, ATTR_STATUS: ctx.status,
                                      ATTR_REQUEST_ID: ctx.request_id}
        if ctx.model:
            attributes[ATTR_MODEL] = ctx.model
        if ctx.version is not None:
            attributes[ATTR_VERSION] = ctx.version
        if ctx.label:
            attributes[ATTR_LABEL] = ctx.label
        if ctx.signature:
            attributes[ATTR_SIGNATURE] = ctx.signature
        if ctx.batch_size:
            attributes[ATTR_BATCH] = ctx.batch_size
        span = self.tracer.start_span(f"{ctx.api} {ctx.model}" if ctx.model else ctx.api, context=parent,
                                      kind=self._server, attributes=attributes, start_time=self._ns(ctx.t_receive))
        span_context = span.get_span_context()
        ctx.trace_id = format(span_context.trace_id, "032x")
        if not span.is_recording():
            return
        inside = self._trace.set_span_in_context(span)
        q0, c0, c1 = ctx.t_queue_start, ctx.t_compute_start, ctx.t_compute_end
        decoded = q0 if q0 is not None else c0 if c0 is not None else end
        phases = [("receive", ctx.t_receive, decoded)]
        if q0 is not None and c0 is not None:
            phases.append(("queue", q0, c0))
        if c0 is not None and c1 is not None:
            phases.append(("compute", c0, c1))
            phases.append(("send", c1, end))
        for name, t0, t1 in phases:
            child = self.tracer.start_span(name, context=inside, start_time=self._ns(t0),
                                           attributes={ATTR_BATCH: ctx.batch_size} if name == "compute" else None)
            child.end(end_time=self._ns(t1))
        if ctx.status != "OK":
            span.set_status(self._error)
        span.end(end_time=self._ns(end))

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Exports what is queued, for at most `timeout` seconds (a collector that is down would
        hold the exporter for its own timeout and retries): the rest is lost."""
        closer = threading.Thread(target=self.provider.shutdown, name="otel-shutdown", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning("OpenTelemetry: spans not exported within %.0f s of stopping were dropped", timeout)


def install(state: Any, env: Mapping[str, str] | None = None) -> OtelTracer | None:
    """Adds the span hook to a ServerState when tracing is on (raises ValueError for settings it
    cannot use, which the server reports before starting)."""
    env = os.environ if env is None else env
    settings = tracing_settings(state.flags, env)
    if settings is None:
        return None
    tracer = OtelTracer(settings, env)
    state.request_hooks.append(tracer.finish)
    state.trace_context = True
    log.info("OpenTelemetry tracing on: %s exporter%s", settings["exporter"],
             f" ({settings['protocol']})" if settings["exporter"] == "otlp" else "")
    return tracer
