"""The activator's HTTP API, for the operator (and /metrics for Prometheus):

- `PUT /v1/targets/{namespace}/{name}` `{"maxHeldRequests", "holdTimeoutSeconds", "endpoints":
  [{"address", "grpcPort", "httpPort"}]}`: create or update a ModelDeployment's gate (the ready
  pods' addresses; an empty list holds requests) -> `{"address", "grpcPort", "httpPort", "held",
  "waitingSince", "ready", "lastColdStart"}`, where `address` and the ports are what its Service's
  EndpointSlice names while there is no ready pod;
- `DELETE /v1/targets/{namespace}/{name}`: close its ports (held requests end UNAVAILABLE);
- `GET /v1/targets`: every gate's report;
- `GET /v1/demand?after=SEQ&wait=SECONDS`: answers when a gate's demand begins after SEQ (or
  after the wait) with `{"seq", "waiting": [report, ...]}`: the operator long-polls it to scale
  up at the first held request, instead of finding it at its next periodic look.

When started with a token file, every call but /metrics and /healthz needs `Authorization: Bearer
<token>`: whoever can call PUT decides where a model's requests go.
"""

from __future__ import annotations

import hmac
import math

import prometheus_client
from aiohttp import web

from modeldeploy.activator.hold import Endpoint, Limits
from modeldeploy.activator.targets import Registry

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
_MAX_WAIT_S = 60.0


def _limits(body: dict[str, object]) -> Limits:
    held = body.get("maxHeldRequests", 100)
    timeout = body.get("holdTimeoutSeconds", 300)
    if not isinstance(held, int) or isinstance(held, bool) or held < 0:
        raise web.HTTPBadRequest(text="maxHeldRequests: an integer >= 0")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
        raise web.HTTPBadRequest(text="holdTimeoutSeconds: a number > 0")
    return Limits(held, float(timeout))


def _endpoints(body: dict[str, object]) -> tuple[Endpoint, ...]:
    out = []
    for e in body.get("endpoints") or []:  # type: ignore[attr-defined]
        try:
            out.append(Endpoint(str(e["address"]), int(e["grpcPort"]), int(e["httpPort"])))
        except (KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text="endpoints: [{address, grpcPort, httpPort}]") from None
    return tuple(out)


def make_app(registry: Registry, advertise: str, token: str = "") -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if token and request.path not in ("/metrics", "/healthz"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise web.HTTPUnauthorized(text="a bearer token is required")
        return await handler(request)

    async def put(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="a JSON object") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="a JSON object")
        ns, name = request.match_info["namespace"], request.match_info["name"]
        target = await registry.put(ns, name, _limits(body), _endpoints(body))
        return web.json_response({"address": advertise, "grpcPort": target.grpc_port, "httpPort": target.http_port,
                                  **target.gate.report()})

    async def delete(request: web.Request) -> web.Response:
        found = await registry.delete(request.match_info["namespace"], request.match_info["name"])
        return web.json_response({"deleted": found}, status=200 if found else 404)

    async def targets(_: web.Request) -> web.Response:
        return web.json_response({"targets": [t.gate.report() for t in registry.targets.values()]})

    async def demand(request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "-1"))
            wait = min(_MAX_WAIT_S, max(0.0, float(request.query.get("wait", "0"))))
        except ValueError:
            raise web.HTTPBadRequest(text="after: an integer, wait: seconds") from None
        seq = await registry.wait_demand(after, wait)
        return web.json_response({"seq": seq, "waiting": registry.waiting()})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=prometheus_client.generate_latest(), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[auth])
    app[REGISTRY] = registry
    app.router.add_put("/v1/targets/{namespace}/{name}", put)
    app.router.add_delete("/v1/targets/{namespace}/{name}", delete)
    app.router.add_get("/v1/targets", targets)
    app.router.add_get("/v1/demand", demand)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)

    async def close(_: web.Application) -> None:
        await registry.close()

    app.on_cleanup.append(close)
    return app
