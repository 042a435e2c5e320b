"""Receivers the tracing and payload-logging tests run in-process on 127.0.0.1: an OTLP trace
receiver over gRPC (opentelemetry-proto's TraceService) and over HTTP (`POST /v1/traces`, a
protobuf ExportTraceServiceRequest), and a CloudEvents HTTP sink (binary content mode) that can
be made slow or refusing and writes what it accepted as JSON lines (CloudEvents' JSON format,
what `modeldeploy replay` reads). Each is a context manager; they stop when the block ends."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from support import free_port


def spans_of(request: Any) -> Iterator[tuple[dict[str, Any], Any]]:
    """(resource attributes, span) for every span of an ExportTraceServiceRequest."""
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for span in ss.spans:
                yield resource, span


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def attributes(span: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


class SpanStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.exports = 0

    def add(self, request: Any) -> None:
        with self._lock:
            self.exports += 1
            self.spans.extend(spans_of(request))

    def all(self) -> list[Any]:
        with self._lock:
            return [s for _, s in self.spans]

    def resources(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r, _ in self.spans]


class OtlpGrpcReceiver(SpanStore):
    """`endpoint`: http://127.0.0.1:PORT (OTEL_EXPORTER_OTLP_ENDPOINT with protocol grpc)."""

    def __enter__(self) -> OtlpGrpcReceiver:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        store = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
                store.add(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.port = free_port()
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop(0)


class _Http:
    """A ThreadingHTTPServer on 127.0.0.1 running `handler_cls` with `owner` set on it."""

    def _start(self, handler_cls: type[BaseHTTPRequestHandler]) -> None:
        self.port = free_port()
        handler_cls.owner = self  # type: ignore[attr-defined]
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler_cls)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda *args: None  # type: ignore[method-assign]  # a client gone at exit
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an answer's head and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OtlpHttpReceiver(SpanStore, _Http):
    """`endpoint`: http://127.0.0.1:PORT (the exporter posts to /v1/traces)."""

    def __enter__(self) -> OtlpHttpReceiver:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                if self.path != "/v1/traces":
                    self._answer(404)
                    return
                self.owner.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))  # type: ignore[attr-defined]
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self._answer(200, out, "application/x-protobuf")

        self._start(Handler)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()


class EventSink(_Http):
    """A CloudEvents sink: `mode` "ok" (202), "refuse" (503), or "slow" (answers after `delay`
    seconds). `events`: what it accepted, each {"headers": {...}, "body": bytes}; with `path`,
    also written there as JSON lines in CloudEvents' JSON format."""

    def __init__(self, path: Path | None = None, mode: str = "ok", delay: float = 5.0) -> None:
        self.mode, self.delay, self.path = mode, delay, path
        self.events: list[dict[str, Any]] = []
        self.posts = 0
        self._lock = threading.Lock()

    def __enter__(self) -> EventSink:
        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                self.owner.receive(self, body)  # type: ignore[attr-defined]

        self._start(Handler)
        self.url = f"http://127.0.0.1:{self.port}/events"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode = "ok"
        self._stop()

    def receive(self, handler: _Quiet, body: bytes) -> None:
        with self._lock:
            self.posts += 1
        if self.mode == "refuse":
            handler._answer(503, b'{"error": "busy"}')
            return
        if self.mode == "slow":
            time.sleep(self.delay)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.events.append({"headers": headers, "body": body})
            if self.path is not None:
                with self.path.open("a") as f:
                    f.write(json.dumps(structured(headers, body)) + "\n")
        handler._answer(202)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["headers"].get("ce-type", "").endswith("." + kind)]


def structured(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """A binary-mode event as CloudEvents' JSON format: the attributes, and `data` (JSON) or
    `data_base64` (anything else)."""
    event: dict[str, Any] = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
    content_type = headers.get("content-type", "")
    event["datacontenttype"] = content_type
    if content_type.startswith("application/json"):
        event["data"] = json.loads(body)
    else:
        event["data_base64"] = base64.b64encode(body).decode()
    return event
