"""REST front end (aiohttp): TF Serving's /v1/models API, health endpoints for Kubernetes probes,
and any extra routes registered in ServerState.rest_routes (e.g. the Prometheus metrics path)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import input_pb2

from modelserver import contract
from modelserver.contract import LABEL_HEADER, ROUTE_KEY_HEADER, VERSION_HEADER
from modelserver.core.dataplane import ModelRef, VersionStatus
from modelserver.core.errors import ServingError, invalid_argument
from modelserver.core.request_context import RequestContext
from modelserver.core.servable import Servable
from modelserver.core.state import ServerState
from modelserver.protocol import rest_json

log = logging.getLogger("modelserver.protocol.rest")

_POST_RE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<method>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_RE = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<metadata>/metadata)?",
    re.IGNORECASE,
)
_JSON = "application/json"


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type=_JSON)


def error_response(exc: ServingError) -> web.Response:
    return _json_response({"error": exc.message}, exc.http_status)


def _version(text: str) -> int:
    """A version from the URL; beyond int64, TF Serving's INVALID_ARGUMENT."""
    version = int(text)
    if version >= 2**63:
        raise invalid_argument(f"Failed to convert version: {text} to numeric.")
    return version


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
                                          route_key=key.encode() if key is not None else None) as ctx:
                seen = ctx
                body = await self._post(request, m, method, ctx)
        except ServingError as exc:
            return with_version_headers(error_response(exc), seen)
        return with_version_headers(_json_response(body), seen)

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Request body larger than "
                               f"{self.state.flags.rest_api_max_request_bytes} bytes", http=413) from None
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid_argument(f"JSON Parse error: {exc}") from None
        except RecursionError:
            raise invalid_argument("JSON Value nested too deeply") from None
        if not isinstance(body, dict):
            raise invalid_argument("JSON Value: request body must be a JSON object")
        sig_name = body.get("signature_name", "")
        if not isinstance(sig_name, str):
            raise invalid_argument("'signature_name' must be a string")
        return body

    async def _post(self, request: web.Request, m: re.Match[str], method: str, ctx: RequestContext) -> dict[str, Any]:
        body = await self._read_json(request)
        sig_name = body.get("signature_name", "")
        servable = self.plane.resolve(model_ref(m), ctx)
        if method == "predict":
            sig = servable.signature(sig_name)
            try:
                inputs, row = rest_json.predict_inputs(body, sig)
            except RecursionError:  # values nested deeper than Python's recursion limit
                raise invalid_argument("JSON Value nested too deeply") from None
            pred = await self.plane.predict(servable, sig, inputs, ctx)
            return rest_json.predict_response(pred.outputs, row)
        examples = input_pb2.Input()
        rest_json.fill_example_input(body, examples)
        if method == "classify":
            res = await self.plane.classify(servable, sig_name, examples, ctx)
            return rest_json.classify_json(res.result)
        res = await self.plane.regress(servable, sig_name, examples, ctx)
        return rest_json.regress_json(res.result)


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


def make_app(state: ServerState) -> web.Application:
    api = RestApi(state)
    app = web.Application(client_max_size=state.flags.rest_api_max_request_bytes, middlewares=[_errors_as_json])
    app.router.add_get(contract.HEALTH_LIVE_PATH, api.live)
    app.router.add_get(contract.HEALTH_READY_PATH, api.ready)
    app.add_routes(state.rest_routes)
    app.router.add_get(contract.MODELS_PREFIX + "/{tail:.*}", api.get)
    app.router.add_post(contract.MODELS_PREFIX + "/{tail:.*}", api.post)

    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        if state.draining:  # "Connection: close": the client reconnects (elsewhere) for its next request
            response.force_close()  # close after this response (headers are already prepared here, so:)
            response.headers["Connection"] = "close"

    app.on_response_prepare.append(close_when_draining)
    return app

