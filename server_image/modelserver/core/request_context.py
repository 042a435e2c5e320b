"""Per-request bookkeeping shared by the gRPC and REST front ends, batching, metrics and tracing.

A RequestContext is created when a request is received and finished once, when its answer is
sent. Timestamps are `time.perf_counter()` seconds (None when a phase did not happen).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class RawBody:
    """A captured REST body that is not JSON (the v2 binary data extension), with its content type."""

    data: bytes
    content_type: str


@dataclass(slots=True)
class RequestContext:
    protocol: str  # "grpc" | "rest"
    api: str  # "predict" | "classify" | "regress" | "multi_inference" | "get_model_metadata" | ...
    request_id: int = field(default_factory=lambda: next(_ids))
    model: str = ""
    version: int | None = None
    label: str | None = None
    routed: bool = False  # the label was chosen by the model's traffic split (not named by the request)
    route_key: bytes | None = None  # the client's routing key (X-Model-Route-Key / x-model-route-key)
    signature: str = ""
    batch_size: int = 0
    status: str = "OK"  # gRPC status code name
    deadline: float | None = None  # perf_counter() seconds; None = no deadline
    t_receive: float = field(default_factory=time.perf_counter)
    t_queue_start: float | None = None
    t_compute_start: float | None = None
    t_compute_end: float | None = None
    t_send: float | None = None
    # W3C trace context the client sent (REST headers, gRPC metadata); read only while tracing or
    # payload logging is on (ServerState.trace_context)
    traceparent: str | None = None
    tracestate: str | None = None
    trace_id: str | None = None  # the server span's trace id (32 hex digits) once traced
    # what the client sent and got (REST: the JSON bytes, or a RawBody; gRPC: the messages), kept
    # only while payload logging is on (ServerState.capture_payloads)
    request_payload: object = None
    response_payload: object = None

    @property
    def entrypoint(self) -> str:
        """TF Serving's `entrypoint` metric label: GRPC or REST."""
        return "GRPC" if self.protocol == "grpc" else "REST"

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when there is none."""
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()
