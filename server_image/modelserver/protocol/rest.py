"""REST front end (aiohttp): TF Serving's /v1/models API, health endpoints for Kubernetes probes,
and any extra routes registered in ServerState.rest_routes (e.g. the Prometheus metrics path).

A body up to INLINE_BODY_BYTES is decoded and answered on the event loop (a few milliseconds at
most). A larger one takes the large-body lane: one at a time (so their memory is bounded: one
body, its parsed JSON and its tensors), read only once the lane is free (at most LANE_QUEUE wait
for it; beyond, 429), and decoded, converted and encoded on the lane's thread in bounded steps
(json_text, rest_json), with the cyclic garbage collector paused meanwhile (a full collection
over millions of fresh lists holds the GIL for hundreds of milliseconds); so one large body does
not stall the other clients of either port. An answer of more than INLINE_OUTPUT_ELEMENTS
numbers is encoded on the lane too. A body that has not arrived when the request's time is up
(--rest_api_timeout_in_ms) is answered 408, the client's delay (the server's own is 504)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from tensorflow_serving.apis import input_pb2

from modelserver import contract
from modelserver.contract import LABEL_HEADER, ROUTE_KEY_HEADER, VERSION_HEADER
from modelserver.core.dataplane import ModelRef, VersionStatus
from modelserver.core.errors import ServingError, invalid_argument, wire_message
from modelserver.core.request_context import RequestContext
from modelserver.core.servable import Servable
from modelserver.core.state import ServerState
from modelserver.protocol import json_text, rest_json
from modelserver.protocol.http_server import quiet_client_errors

log = logging.getLogger("modelserver.protocol.rest")
T = TypeVar("T")

INLINE_BODY_BYTES = 256 << 10  # larger bodies (or a body of unknown length) take the large-body lane
INLINE_OUTPUT_ELEMENTS = 1 << 16  # larger answers are encoded on the lane
LANE_QUEUE = 16  # large requests that may wait for the lane (more: RESOURCE_EXHAUSTED, 429)
_READING = "modelserver.reading_body"  # set on a request while its body is read

# Versions are ASCII digits (`\d` and int() also take other scripts' digits, e.g. Arabic-Indic).
_POST_RE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<method>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_RE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?(?P<metadata>/metadata)?",
    re.IGNORECASE,
)
_JSON = "application/json"


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type=_JSON)


def error_response(exc: ServingError) -> web.Response:
    return _json_response({"error": wire_message(exc.message)}, exc.http_status)


def _version(text: str) -> int:
    """A version from the URL (ASCII digits); beyond int64, TF Serving's INVALID_ARGUMENT."""
    version = int(text) if len(text) <= 19 else 2**63
    if version >= 2**63:
        raise invalid_argument(f"Failed to convert version: {text[:40]}{'...' if len(text) > 40 else ''} to numeric.")
    return version


def _too_large(limit: int) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Request body larger than {limit} bytes", http=413)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (json_text: at most MAX_DEPTH levels deep)."""
    try:
        body = json_text.loads(raw)
    except json_text.JsonDepthError as exc:
        raise invalid_argument(str(exc)) from None
    except RecursionError:
        raise invalid_argument("JSON Value nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_argument("JSON Value: request body must be a JSON object")
    if not isinstance(body.get("signature_name", ""), str):
        raise invalid_argument("'signature_name' must be a string")
    return body


def _convert_and_release(body: dict[str, Any], sig: Any, max_bytes: int | None) -> tuple[dict[str, Any], bool]:
    """predict_inputs, then the parsed body taken apart in bounded steps (json_text.release)."""
    try:
        return rest_json.predict_inputs(body, sig, max_bytes)
    finally:
        json_text.release(body)


LANE_SWITCH_INTERVAL_S = 0.001  # how long the lane's thread keeps the GIL while the event loop waits


def _gc_paused(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on the lane's thread with the cyclic garbage collector paused (the objects it
    builds are freed by reference counts, in bounded steps) and the interpreter's switch interval
    at LANE_SWITCH_INTERVAL_S (5 ms by default: every request the event loop answers meanwhile
    would wait that long for the GIL)."""
    enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, LANE_SWITCH_INTERVAL_S))
    try:
        return fn(*args)
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


def model_ref(m: re.Match[str]) -> ModelRef:
    return ModelRef(m["name"], version=_version(m["version"]) if m["version"] else None, label=m["label"] or None)


def status_json(records: list[VersionStatus]) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": str(r.version), "state": r.state_name,
         "status": {"error_code": r.error.code.name if r.error else "OK",
                    "error_message": r.error.message if r.error else ""}}
        for r in records]}


def metadata_json(servable: Servable, sdm: Any) -> dict[str, Any]:
    """TF Serving's metadata JSON: every field of the SignatureDef map printed, default-valued
    ones included (`"name": ""`, `"unknown_rank": false`, `"defaults": {}`), proto field names."""
    return {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(
                sdm, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)}}


def with_version_headers(response: web.Response, ctx: RequestContext | None) -> web.Response:
    """`X-Model-Version`: the version that answered; `X-Model-Label`: the label the traffic
    split chose for a request that named neither version nor label."""
    if ctx is not None and ctx.version is not None:
        response.headers[VERSION_HEADER] = str(ctx.version)
        if ctx.routed and ctx.label:
            response.headers[LABEL_HEADER] = ctx.label
    return response


class RestApi:
    """The transport: decodes TF Serving's REST requests into data plane calls (whose lifecycle
    counts, times and maps every request) and encodes the answers as its JSON."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.plane = state.plane
        self.timeout_s = state.flags.rest_api_timeout_in_ms / 1000.0 if state.flags.rest_api_timeout_in_ms > 0 else None
        self.max_tensor_bytes: int | None = state.flags.max_request_tensor_bytes or None
        self.max_body: int = state.flags.rest_api_max_request_bytes
        self._lane = asyncio.Semaphore(1)  # the large-body lane (see the module docstring)
        self._lane_waiting = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rest-large-body")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- health --

    async def live(self, request: web.Request) -> web.Response:
        return _json_response({"status": "live"})

    async def ready(self, request: web.Request) -> web.Response:
        mgr = self.state.manager
        if self.state.draining:
            return _json_response({"status": "draining"}, 503)
        if mgr.is_ready():
            return _json_response({"status": "ready"})
        body: dict[str, Any] = {"status": "not ready", "models_not_ready": mgr.not_ready_models()}
        if mgr.routing_pending():
            body["routing_pending"] = True
        return _json_response(body, 503)

    # -- /v1/models --

    async def get(self, request: web.Request) -> web.Response:
        m = _GET_RE.fullmatch(request.path)
        if m is None:
            return _json_response({"error": f"Malformed request: GET {request.path}"}, 400)  # as TF Serving
        try:
            if m["metadata"]:
                async with self.plane.request("rest", "get_model_metadata", timeout=self.timeout_s) as ctx:
                    body = metadata_json(*self.plane.metadata(model_ref(m), ctx))
            else:
                async with self.plane.request("rest", "get_model_status", timeout=self.timeout_s) as ctx:
                    body = status_json(self.plane.status(model_ref(m), ctx))
        except ServingError as exc:
            return error_response(exc)
        return _json_response(body)

    async def post(self, request: web.Request) -> web.Response:
        m = _POST_RE.fullmatch(request.path)
        if m is None:
            return _json_response({"error": f"Malformed request: POST {request.path}"}, 400)  # as TF Serving
        method = m["method"].lower()
        key = request.headers.get(ROUTE_KEY_HEADER)
        seen: RequestContext | None = None
        try:
            async with self.plane.request("rest", method, timeout=self.timeout_s,
                                          route_key=key.encode("utf-8", "surrogateescape") if key is not None
                                          else None) as ctx:
                seen = ctx
                if self.state.trace_context:  # OpenTelemetry or payload logging is on
                    ctx.traceparent, ctx.tracestate = request.headers.get("traceparent"), request.headers.get("tracestate")
                large = request.content_length is None or request.content_length > INLINE_BODY_BYTES
                if large:
                    async with self._lane_turn():
                        body = await self._post(request, m, method, ctx, self._on_lane)
                else:
                    body = await self._post(request, m, method, ctx, _inline)
                if ctx.request_payload is not None:
                    ctx.response_payload = body
        except ServingError as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and request.get(_READING):
                exc = ServingError(exc.code, f"{exc.message}: the request body did not arrive in time", http=408)
            return with_version_headers(error_response(exc), seen)
        return with_version_headers(web.Response(body=body, content_type=_JSON), seen)

    @contextlib.asynccontextmanager
    async def _lane_turn(self) -> AsyncIterator[None]:
        """The large-body lane, once the large requests before this one are done; RESOURCE_EXHAUSTED
        at once when LANE_QUEUE of them already wait (their bodies, not yet read, wait in the kernel)."""
        if self._lane_waiting >= LANE_QUEUE:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{LANE_QUEUE} requests with large bodies "
                               "are waiting already; retry later")
        self._lane_waiting += 1
        try:
            await self._lane.acquire()
        finally:
            self._lane_waiting -= 1
        try:
            yield
        finally:
            self._lane.release()

    async def _on_lane(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the lane's thread; the caller holds the lane until it is done, even when
        the request is cancelled meanwhile (the lane admits one large body at a time)."""
        work = asyncio.get_running_loop().run_in_executor(self._pool, _gc_paused, fn, *args)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await work
            raise

    async def _read(self, request: web.Request) -> bytes:
        if (request.content_length or 0) > self.max_body:  # refused before a byte of it is read
            raise _too_large(self.max_body)
        request[_READING] = True  # a deadline while reading is the client's (408)
        try:
            body = await request.read()
            request[_READING] = False
            return body
        except web.HTTPRequestEntityTooLarge:
            raise _too_large(self.max_body) from None
        except RequestPayloadError as exc:  # a body that does not decode (Content-Encoding, chunks)
            raise invalid_argument(f"Request body could not be read: {exc}") from None
        except ConnectionResetError:
            raise ServingError(grpc.StatusCode.CANCELLED, "The client closed the connection before sending its "
                               "whole body") from None

    async def _post(self, request: web.Request, m: re.Match[str], method: str, ctx: RequestContext,
                    run: Callable[..., Any]) -> bytes:
        """The answer's JSON text; `run(fn, *args)` runs the decoding and encoding steps (on the
        event loop, or on the large-body lane)."""
        raw = await self._read(request)
        if self.state.capture_payloads:
            ctx.request_payload = raw
        body = await run(parse_body, raw)
        sig_name = body.get("signature_name", "")
        servable = self.plane.resolve(model_ref(m), ctx)
        if method == "predict":
            sig = servable.signature(sig_name)
            inputs, row = await run(_convert_and_release, body, sig, self.max_tensor_bytes)
            pred = await self.plane.predict(servable, sig, inputs, ctx)
            del inputs
            if run is _inline and sum(a.size for a in pred.outputs.values()) > INLINE_OUTPUT_ELEMENTS:
                async with self._lane_turn():
                    return await self._on_lane(rest_json.predict_response, pred.outputs, row)
            return await run(rest_json.predict_response, pred.outputs, row)  # type: ignore[no-any-return]
        examples = input_pb2.Input()
        await run(rest_json.fill_example_input, body, examples)
        if method == "classify":
            res = await self.plane.classify(servable, sig_name, examples, ctx)
            return json.dumps(rest_json.classify_json(res.result)).encode()
        res = await self.plane.regress(servable, sig_name, examples, ctx)
        return json.dumps(rest_json.regress_json(res.result)).encode()


async def _inline(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own HTTP errors (413, 405, ...) get TF Serving's {"error": ...} body too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return _json_response({"error": "Request body too large"}, 413)
        if exc.status == 405 and request.path.startswith(contract.MODELS_PREFIX + "/"):  # TF Serving: INVALID_ARGUMENT
            return _json_response({"error": f"Malformed request: {request.method} {request.path}"}, 400)
        if exc.status >= 400:
            return _json_response({"error": exc.reason}, exc.status)
        raise


def make_app(state: ServerState, extend: Callable[[web.Application, RestApi], None] | None = None
             ) -> web.Application:
    """The REST app; `extend(app, api)` adds another protocol's routes (v2_rest) before TF Serving's."""
    quiet_client_errors()
    api = RestApi(state)
    app = web.Application(client_max_size=state.flags.rest_api_max_request_bytes, middlewares=[_errors_as_json])

    async def close_lane(_app: web.Application) -> None:
        api.close()

    app.on_cleanup.append(close_lane)
    app.router.add_get(contract.HEALTH_LIVE_PATH, api.live)
    app.router.add_get(contract.HEALTH_READY_PATH, api.ready)
    app.add_routes(state.rest_routes)
    if extend is not None:
        extend(app, api)
    app.router.add_get(contract.MODELS_PREFIX + "/{tail:.*}", api.get)
    app.router.add_post(contract.MODELS_PREFIX + "/{tail:.*}", api.post)

    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        if state.draining:  # "Connection: close": the client reconnects (elsewhere) for its next request
            response.force_close()  # close after this response (headers are already prepared here, so:)
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(close_when_draining)
    return app

