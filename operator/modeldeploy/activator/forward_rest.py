"""A ModelDeployment's REST port on the activator: every request is held by the gate until there
is a ready pod, then forwarded to one (round-robin), whole, and its answer sent back as the pod
gave it (status, headers, body; compressed bodies stay compressed). TF Serving's REST API has no
deadline header: a REST client's deadline is its own timeout, and a client that leaves while its
request is held frees its place at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import aiohttp
from aiohttp import web

from modeldeploy.activator import metrics
from modeldeploy.activator.hold import DeadlineExceeded, Endpoint, Gate, HoldError, Refused

# hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself
_SKIP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
         "host", "content-length"}
_GONE_CHECK_S = 0.2


def _error(status: int, message: str, retry_after: int) -> web.Response:
    return web.Response(status=status, text=json.dumps({"error": message}), content_type="application/json",
                        headers={"Retry-After": str(retry_after)})


class RestForwarder:
    def __init__(self, gate: Gate):
        self.gate = gate
        self._session: aiohttp.ClientSession | None = None
        self._turn = itertools.count()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            endpoints, held = await self._wait(request)
        except Refused as exc:
            return _error(429, str(exc), exc.retry_after)
        except DeadlineExceeded as exc:
            return _error(504, str(exc), exc.retry_after)
        except HoldError as exc:
            return _error(503, str(exc), exc.retry_after)
        except ConnectionResetError:
            metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "rest", "gone").inc()
            raise
        if not held:
            metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "rest", "forwarded").inc()
        answer = await self._forward(request, body, endpoints)
        if held:
            self.gate.answered()
        return answer

    async def _wait(self, request: web.Request) -> tuple[tuple[Endpoint, ...], bool]:
        """The gate's wait, given up (ConnectionResetError) when the client closes its connection."""
        task = asyncio.ensure_future(self.gate.wait("rest"))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=_GONE_CHECK_S)
                if done:
                    return task.result()
                if request.transport is None or request.transport.is_closing():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise ConnectionResetError("the client left while its request was held")
        finally:
            if not task.done():
                task.cancel()

    async def _forward(self, request: web.Request, body: bytes, endpoints: tuple[Endpoint, ...]) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP}
        start = next(self._turn)
        last = ""
        for i in range(min(2, len(endpoints))):  # a pod that refuses the connection: the next one, once
            ep = endpoints[(start + i) % len(endpoints)]
            url = f"http://{ep.address}:{ep.http_port}{request.path_qs}"
            try:
                async with self.session().request(request.method, url, data=body, headers=headers) as up:
                    data = await up.read()
                    out = {k: v for k, v in up.headers.items() if k.lower() not in _SKIP}
                    return web.Response(status=up.status, body=data, headers=out)
            except aiohttp.ClientConnectorError as exc:
                last = str(exc)
        metrics.REQUESTS.labels(self.gate.namespace, self.gate.name, "rest", "failed").inc()
        return _error(503, f"model {self.gate.name}: no ready pod could be reached ({last})", 1)
