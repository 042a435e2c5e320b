"""The Open Inference Protocol (KServe v2) over HTTP, on the REST port beside TF Serving's API:

    GET  /v2/health/live, /v2/health/ready, /v2
    GET  /v2/models/{m}[/versions/{v}]            metadata
    GET  /v2/models/{m}[/versions/{v}]/ready      200 {"ready": true}, or 400 {"ready": false}
    GET  /v2/models/{m}[/versions/{v}]/config     Triton's model configuration extension
    GET  /v2/models[/{m}[/versions/{v}]]/stats    Triton's statistics extension
    POST /v2/models/{m}[/versions/{v}]/infer      JSON, or the binary data extension

An infer body is the protocol's JSON, or with an `Inference-Header-Content-Length: N` header N
bytes of JSON followed by the inputs' binary data (each input naming its `binary_data_size`, in
order; BYTES elements as a 4-byte little-endian length and the bytes). Outputs come back as JSON
`data`, or as binary data after the JSON (same header) for those asking `binary_data` (or all, with
the request parameter `binary_data_output`). Requests go through the data plane as TF Serving's
do (protocol `v2_rest` in the metrics), bodies through rest.py's limits and its large-body lane.
Errors are `{"error": "..."}` with ServingError's HTTP status.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from aiohttp import web

from modelserver.contract import ROUTE_KEY_HEADER
from modelserver.core.dataplane import ModelRef
from modelserver.core.errors import ServingError, invalid_argument
from modelserver.core.request_context import RawBody, RequestContext
from modelserver.core.state import ServerState
from modelserver.protocol import v2_model
from modelserver.protocol.rest import (
    _READING,
    INLINE_BODY_BYTES,
    RestApi,
    error_response,
    parse_body,
    with_version_headers,
)
from modelserver.protocol.v2_types import (
    TensorBudget,
    datatype_of,
    declared_bytes,
    element_count,
    from_json,
    from_raw,
    numpy_of,
    shape_list,
    to_json,
    to_raw,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
PROTOCOL = "v2_rest"
_MODEL_RE = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                       r"(?P<verb>/ready|/config|/stats|/infer)?")
_JSON = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"  # the binary data extension's bodies


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type=_JSON)


def _params(obj: Any, where: str) -> dict[str, Any]:
    params = obj.get("parameters", {}) if isinstance(obj, dict) else None
    if not isinstance(params, dict):
        raise invalid_argument(f"{where}: parameters must be a JSON object")
    return params


@dataclass(slots=True)
class InferRequest:
    """A decoded infer body: its tensors, the outputs asked for and how to send them."""

    inputs: dict[str, np.ndarray]
    signature: str = ""
    id: str | None = None
    outputs: list[str] = field(default_factory=list)
    binary: dict[str, bool] = field(default_factory=dict)  # per requested output: as binary data?
    binary_default: bool = False  # the request's binary_data_output


def decode_infer(raw: bytes, header_length: str | None, max_bytes: int | None) -> InferRequest:
    """An infer body (JSON, or JSON and binary data) as tensors; INVALID_ARGUMENT when malformed."""
    n = len(raw)
    if header_length is not None:
        if not header_length.isascii() or not header_length.isdigit() or int(header_length) > len(raw):
            raise invalid_argument(f"{HEADER_LENGTH} must be a byte count within the body's {len(raw)} bytes")
        n = int(header_length)
    body = parse_body(raw[:n])
    binary = memoryview(raw)[n:]
    params = _params(body, "request")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid_argument("inputs must be a non-empty list")
    req = InferRequest({}, signature=v2_model.signature_name(params))
    if "id" in body:
        if not isinstance(body["id"], str):
            raise invalid_argument("id must be a string")
        req.id = body["id"]
    budget = TensorBudget(max_bytes)
    pos = 0
    for spec in inputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise invalid_argument("each input must be an object with a string name")
        if name in req.inputs:
            raise invalid_argument(f"Input \"{name}\" is given twice")
        dt = numpy_of(name, spec.get("datatype"))
        shape, count = element_count(name, spec.get("shape"))
        size = _params(spec, f"input {name}").get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise invalid_argument(f"Input \"{name}\" has neither data nor a binary_data_size")
            budget.take(declared_bytes(dt, count))
            req.inputs[name] = from_json(name, dt, shape, count, spec["data"])
            continue
        if type(size) is not int or size < 0 or pos + size > len(binary):
            raise invalid_argument(f"Input \"{name}\": binary_data_size {str(size)[:30]} runs past the "
                                   f"{len(binary)} bytes of binary data")
        budget.take(declared_bytes(dt, count, size))
        req.inputs[name] = from_raw(name, dt, shape, count, binary[pos:pos + size])
        pos += size
    if pos != len(binary):
        raise invalid_argument(f"{len(binary) - pos} bytes of binary data that no input claims")
    req.binary_default = _flag(params, "binary_data_output", "request")
    outputs = body.get("outputs", [])
    if not isinstance(outputs, list):
        raise invalid_argument("outputs must be a list")
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str):
            raise invalid_argument("each requested output must be an object with a string name")
        req.outputs.append(name)
        flag = _params(out, f"output {name}").get("binary_data")
        if flag is not None:
            req.binary[name] = _flag({"binary_data": flag}, "binary_data", f"output {name}")
    return req


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise invalid_argument(f"{where}: parameter {key} must be true or false")
    return value


def encode_infer(req: InferRequest, model: str, version: int, outputs: dict[str, np.ndarray]
                 ) -> tuple[bytes, int | None]:
    """The answer's body, and its JSON part's length when binary data follow it."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs.items():
        out: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": shape_list(arr)}
        if req.binary.get(name, req.binary_default):
            blob = to_raw(arr)
            blobs.append(blob)
            out["parameters"] = {"binary_data_size": len(blob)}
        else:
            out["data"] = to_json(arr)
        tensors.append(out)
    answer: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = tensors
    head = json.dumps(answer).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


class V2Rest:
    """The v2 routes: decoding into data plane calls, encoding the answers."""

    def __init__(self, state: ServerState, api: RestApi, stats: v2_model.ModelStats) -> None:
        self.state = state
        self.plane = state.plane
        self.api = api
        self.stats = stats

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/models/stats", self.all_stats)
        app.router.add_get("/v2/models/{tail:.*}", self.get)
        app.router.add_post("/v2/models/{tail:.*}", self.post)

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = not self.state.draining and self.state.manager.is_ready()
        return _json({"ready": ready}, 200 if ready else 400)  # the protocol: 4xx means false

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json(v2_model.server_metadata())

    async def all_stats(self, request: web.Request) -> web.Response:
        return _json({"model_stats": self.stats.report(self.state, "", None)})

    def _match(self, request: web.Request) -> re.Match[str]:
        m = _MODEL_RE.fullmatch(request.path)
        if m is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {request.path}")
        return m

    async def get(self, request: web.Request) -> web.Response:
        seen: RequestContext | None = None
        try:
            m = self._match(request)
            verb = m["verb"] or ""
            if verb == "/infer":
                raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "infer takes a POST", http=405)
            ref = v2_model.model_ref(m["name"], m["version"])
            if verb == "/ready":
                return await self._model_ready(ref)
            api = {"": "get_model_metadata", "/config": "model_config", "/stats": "model_statistics"}[verb]
            async with self.plane.request(PROTOCOL, api, timeout=self.api.timeout_s) as ctx:
                seen = ctx
                if verb == "/stats":
                    if ref.name not in self.state.manager.models:
                        self.plane.resolve(ref, ctx)  # NOT_FOUND, as for the other verbs
                    return _json({"model_stats": self.stats.report(self.state, ref.name, ref.version)})
                servable = self.plane.resolve(ref, ctx)
                sig = servable.signature(request.query.get(v2_model.SIGNATURE_PARAMETER, ""))
                body = (v2_model.model_metadata(self.state, servable, sig) if not verb
                        else v2_model.model_config(servable, sig))
        except ServingError as exc:
            return with_version_headers(error_response(exc), seen)
        return with_version_headers(_json(body), seen)

    async def _model_ready(self, ref: ModelRef) -> web.Response:
        async with self.plane.request(PROTOCOL, "model_ready", timeout=self.api.timeout_s) as ctx:
            try:
                self.plane.resolve(ref, ctx)
            except ServingError:
                if ref.name not in self.state.manager.models:
                    raise
                return _json({"name": ref.name, "ready": False}, 400)
        return _json({"name": ref.name, "ready": True})

    async def post(self, request: web.Request) -> web.Response:
        key = request.headers.get(ROUTE_KEY_HEADER)
        seen: RequestContext | None = None
        try:
            m = self._match(request)
            if m["verb"] != "/infer":
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {request.path}")
            async with self.plane.request(PROTOCOL, "predict", timeout=self.api.timeout_s,
                                          route_key=key.encode("utf-8", "surrogateescape") if key is not None
                                          else None) as ctx:
                seen = ctx
                if self.state.trace_context:  # OpenTelemetry or payload logging is on
                    ctx.traceparent, ctx.tracestate = request.headers.get("traceparent"), request.headers.get("tracestate")
                if request.content_length is None or request.content_length > INLINE_BODY_BYTES:
                    async with self.api._lane_turn():
                        body, head = await self._infer(request, m, ctx, self.api._on_lane)
                else:
                    body, head = await self._infer(request, m, ctx, _inline)
                if ctx.request_payload is not None:
                    ctx.response_payload = body if head is None else binary_body(body, head)
        except ServingError as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and request.get(_READING):
                exc = ServingError(exc.code, f"{exc.message}: the request body did not arrive in time", http=408)
            return with_version_headers(error_response(exc), seen)
        if head is None:
            return with_version_headers(web.Response(body=body, content_type=_JSON), seen)
        response = web.Response(body=body, content_type=BINARY_CONTENT_TYPE)
        response.headers[HEADER_LENGTH] = str(head)
        return with_version_headers(response, seen)

    async def _infer(self, request: web.Request, m: re.Match[str], ctx: RequestContext, run: Any
                     ) -> tuple[bytes, int | None]:
        raw = await self.api._read(request)
        if self.state.capture_payloads:
            head = request.headers.get(HEADER_LENGTH)
            ctx.request_payload = raw if head is None else binary_body(raw, head)
        req: InferRequest = await run(decode_infer, raw, request.headers.get(HEADER_LENGTH),
                                      self.api.max_tensor_bytes)
        del raw
        servable = self.plane.resolve(v2_model.model_ref(m["name"], m["version"]), ctx)
        sig = servable.signature(req.signature)
        pred = await self.plane.predict(servable, sig, req.inputs, ctx, req.outputs)
        req.inputs = {}
        return await run(encode_infer, req, servable.name, servable.version, pred.outputs)  # type: ignore[no-any-return]


def binary_body(body: bytes, header_length: int | str) -> RawBody:
    """A body of the binary data extension as payload logging keeps it: its JSON header's length
    in the content type, as the request or answer had it in Inference-Header-Content-Length."""
    text = str(header_length)
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return RawBody(body, BINARY_CONTENT_TYPE)
    return RawBody(body, f"{BINARY_CONTENT_TYPE}; inference-header-content-length={text}")


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)
