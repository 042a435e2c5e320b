"""Payload logging: sampled inference requests and answers sent as CloudEvents to an HTTP sink
(`--payload_log_url`, `--payload_log_mode`, `--payload_log_sample_rate`).

Each event is one HTTP POST in CloudEvents' binary content mode: the payload is the body, its
attributes are `ce-*` headers (`ce-specversion` 1.0, `ce-id`, `ce-source`, `ce-type`, `ce-time`,
and the extensions `ce-model`, `ce-modelversion`, `ce-modellabel`, `ce-requestid`, `ce-traceid`,
`ce-traceparent`, `ce-protocol`, `ce-api`, `ce-signature`, `ce-status`). A REST request's body
is the JSON the client sent (binary values as TF Serving's `{"b64": ...}`), its answer the JSON
it got (`application/json`); a gRPC one is the serialized protobuf message
(`application/x-protobuf`, `ce-dataschema` naming its type, e.g.
`type.googleapis.com/tensorflow.serving.PredictRequest`).

Serving never waits for the sink: the request-completion hook only appends the event to a
bounded queue (`--payload_log_queue_size` events, `--payload_log_queue_bytes` bytes) and one
thread of its own drains it, a batch at a time, over one kept-alive connection (httppost.py). An event that
does not fit the queue, or that the sink refuses, does not answer in PAYLOAD_TIMEOUT_S, or
cannot be reached for, is dropped: counted in `modelserver_payload_log_dropped_total{reason}`
(`queue_full` or `sink_error`) and logged at most once every LOG_INTERVAL_S.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelserver.core.request_context import RawBody, RequestContext
from modelserver.observability.httppost import KeepAliveClient

log = logging.getLogger("modelserver.observability.payload")

SPECVERSION = "1.0"
EVENT_TYPES = {"request": "org.modeldeploy.inference.request", "response": "org.modeldeploy.inference.response"}
JSON, PROTOBUF = "application/json", "application/x-protobuf"
PAYLOAD_TIMEOUT_S = 2.0  # a sink's answer to one event, at most
BATCH = 64  # events taken from the queue at a time
LOG_INTERVAL_S = 10.0  # drops are logged at most this often
DROP_REASONS = ("queue_full", "sink_error")
# printable ASCII but space, '"' and '%' stays as is in a header (CloudEvents' HTTP binding)
_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"%')


@dataclass(slots=True)
class Event:
    """One event waiting for the sink; its headers are built on the sender thread."""

    kind: str  # request | response
    ctx: RequestContext
    body: bytes
    content_type: str
    schema: str | None


def encode_payload(payload: object) -> tuple[bytes, str, str | None]:
    """(body, content type, dataschema) of a captured payload: REST's JSON bytes as they are (a
    RawBody with its own content type), a gRPC message serialized."""
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload), JSON, None
    if isinstance(payload, RawBody):
        return payload.data, payload.content_type, None
    return payload.SerializeToString(), PROTOBUF, f"type.googleapis.com/{payload.DESCRIPTOR.full_name}"  # type: ignore[attr-defined]


def trace_id_of(ctx: RequestContext) -> str | None:
    """The server span's trace id, else the one of the client's traceparent."""
    if ctx.trace_id:
        return ctx.trace_id
    tp = ctx.traceparent
    return tp[3:35] if tp is not None and len(tp) >= 55 and tp[2] == "-" else None


def event_headers(kind: str, ctx: RequestContext, source: str, content_type: str, schema: str | None,
                  when: float) -> dict[str, str]:
    """Pure: the HTTP headers of one event (`kind`: request or response)."""
    attrs: dict[str, object] = {
        "specversion": SPECVERSION, "id": f"{ctx.request_id}-{kind}", "source": source,
        "type": EVENT_TYPES[kind], "time": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
        "model": ctx.model, "modelversion": ctx.version, "modellabel": ctx.label, "requestid": ctx.request_id,
        "traceid": trace_id_of(ctx), "traceparent": ctx.traceparent, "protocol": ctx.protocol, "api": ctx.api,
        "signature": ctx.signature, "status": ctx.status, "dataschema": schema,
    }
    headers = {"Content-Type": content_type}
    for name, value in attrs.items():
        if value is not None and value != "":
            headers[f"ce-{name}"] = urllib.parse.quote(str(value), safe=_SAFE)
    return headers


class PayloadLogger:
    """The request-completion hook (`finish`, event loop) and the sender thread."""

    def __init__(self, url: str, mode: str = "all", sample_rate: float = 1.0, max_events: int = 1000,
                 max_bytes: int = 64 << 20, source: str | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--payload_log_url must be an http:// or https:// URL; was {url!r}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"--payload_log_sample_rate must be between 0 and 1; was {sample_rate}")
        if max_events < 1 or max_bytes < 1:
            raise ValueError("--payload_log_queue_size and --payload_log_queue_bytes must be at least 1")
        self._netloc = parts.netloc
        self.kinds = ("request", "response") if mode == "all" else (mode,)
        self.sample_rate = sample_rate
        self.max_events, self.max_bytes = max_events, max_bytes
        self.source = source or f"/modelserver/{socket.gethostname()}/{os.getpid()}"
        self._rng = rng
        self._offset = time.time() - time.perf_counter()
        self._queue: collections.deque[Event] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self.sent = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._logged_drops = 0
        self._last_log = 0.0
        self._closing = False
        self._client = KeepAliveClient(url, PAYLOAD_TIMEOUT_S)
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    # -- the event loop's side --

    def finish(self, ctx: RequestContext) -> None:
        if ctx.request_payload is None or (self.sample_rate < 1.0 and self._rng() >= self.sample_rate):
            return
        for kind in self.kinds:
            payload = ctx.request_payload if kind == "request" else ctx.response_payload
            if payload is None:  # no answer: the request failed (ce-status on its request event says how)
                continue
            self._put(Event(kind, ctx, *encode_payload(payload)))

    def _put(self, event: Event) -> None:
        size = len(event.body)
        with self._cond:
            if len(self._queue) >= self.max_events or self._queued_bytes + size > self.max_bytes:
                self._drop("queue_full")
                return
            self._queue.append(event)
            self._queued_bytes += size
            self._cond.notify()

    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_INTERVAL_S:
            total = sum(self.dropped.values())
            log.warning("payload log: %d events dropped since the last report (%s so far; the sink at %s is "
                        "down, slow or refusing)", total - self._logged_drops,
                        ", ".join(f"{k} {v}" for k, v in self.dropped.items()), self._netloc)
            self._logged_drops, self._last_log = total, now

    # -- the sender thread --

    def _take(self) -> list[Event]:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._queued_bytes -= sum(len(e.body) for e in batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:  # closing, and nothing left
                break
            for event in batch:
                ok = self._send(event)
                with self._cond:
                    if ok:
                        self.sent += 1
                    else:
                        self._drop("sink_error")
        self._client.close()

    def _send(self, event: Event) -> bool:
        headers = event_headers(event.kind, event.ctx, self.source, event.content_type, event.schema,
                                event.ctx.t_receive + self._offset)
        try:
            return 200 <= self._client.post(headers, event.body) < 300
        except OSError:
            return False

    def close(self, timeout: float = 2.0) -> None:
        """Sends what is queued for at most `timeout` seconds, then stops (the rest is lost)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- metrics --

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sent = CounterMetricFamily("modelserver_payload_log_sent", "Payload log events the sink accepted")
        sent.add_metric([], self.sent)
        yield sent
        dropped = CounterMetricFamily("modelserver_payload_log_dropped",
                                      "Payload log events dropped: the queue was full, or the sink failed",
                                      labels=["reason"])
        for reason, n in self.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        queued = GaugeMetricFamily("modelserver_payload_log_queued", "Payload log events waiting for the sink")
        queued.add_metric([], len(self._queue))
        yield queued


def install(state: Any, server_metrics: Any = None) -> PayloadLogger | None:
    """Adds the payload logger to a ServerState when `--payload_log_url` is set (ValueError for
    unusable settings)."""
    flags = state.flags
    if not flags.payload_log_url:
        return None
    logger = PayloadLogger(flags.payload_log_url, flags.payload_log_mode, flags.payload_log_sample_rate,
                           flags.payload_log_queue_size, flags.payload_log_queue_bytes)
    state.request_hooks.append(logger.finish)
    state.capture_payloads = True
    state.trace_context = True  # the events carry the client's trace id
    if server_metrics is not None:
        server_metrics.registry.register(logger)
    log.info("payload logging on: %s of %.0f%% of inference requests to %s", "/".join(logger.kinds),
             logger.sample_rate * 100, flags.payload_log_url)
    return logger
