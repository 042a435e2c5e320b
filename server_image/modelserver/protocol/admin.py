"""The admin port (`--admin_port`): the operator's push path for routing tables.

Label moves and traffic weights must be live on every pod within seconds, which a ConfigMap
refresh (up to a minute) cannot do, so the operator also pushes each routing table (routing.py)
to every ready pod here and reads back what is in force:

    GET /v1/admin/models       -> 200 every model's versions (state, error, warmup, source, download),
                                  labels, and each object-storage model's store state
    GET /v1/admin/routing      -> 200 {"generation": G, "models": {...}}   (the table in force)
    PUT /v1/admin/routing      <- a routing document -> 200 the table now in force
                                  400 invalid, or a label on a version that is not AVAILABLE
                                  404 a model not served, 409 a generation older than in force
                                  408 not sent within 10 s, 413 over 1 MiB

It is not open to every client of the model ports: it listens on a port of its own, and every
request must carry `Authorization: Bearer <token>` where the token is the content of
`--admin_token_file` (the operator mounts it from a Secret, re-read when the file changes, so a
rotated Secret takes effect without a restart); the operator also renders a NetworkPolicy that
admits only its own pods to this port. Without `--admin_token_file` the admin port is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from modelserver.config.storage_uri import is_remote, redact
from modelserver.contract import ADMIN_MODELS_PATH, ADMIN_ROUTING_PATH
from modelserver.core.errors import ServingError, invalid_argument, wire_message
from modelserver.core.manager import Manager, VersionRecord
from modelserver.core.routing import parse_table
from modelserver.protocol.http_server import quiet_client_errors

log = logging.getLogger("modelserver.protocol.admin")

BODY_TIMEOUT_S = 10.0  # a routing document (at most 1 MiB) arrives within this


def models_json(manager: Manager) -> dict[str, Any]:
    """Every model's versions (state, error, warmup report, source and download), labels, and for
    an object-storage base path the store's state (`storage`: its URI, why the last listing failed,
    and the versions listed but not taken yet, with the reason: an upload in progress): what the operator reads from each pod to decide where labels and weights may move,
    and what its status shows."""
    models = {}
    for name, rec in sorted(manager.models.items()):
        models[name] = {
            "versions": {str(v): _version_json(r) for v, r in sorted(rec.versions.items())},
            "labels": dict(rec.labels),
        }
        if is_remote(rec.config.base_path):
            models[name]["storage"] = {"uri": redact(rec.config.base_path),
                                       "error": rec.storage_error.message if rec.storage_error else "",
                                       "code": rec.storage_error.code.name if rec.storage_error else "OK",
                                       "pending": {str(v): why for v, why in rec.pending.items()}}
    return {"ready": manager.is_ready(), "routingGeneration": manager.routing.generation, "models": models}


def _version_json(r: VersionRecord) -> dict[str, Any]:
    """A version's state, error and warmup report; for a version from object storage, where it came
    from and its download (seconds, bytes; `cached`: found in the local cache, nothing downloaded)."""
    from modelserver.core.manager import STATE_NAMES

    out: dict[str, Any] = {"state": STATE_NAMES.get(r.state, "UNKNOWN"), "error": r.error.message if r.error else "",
                           "warmup": r.warmup.as_json() if hasattr(r.warmup, "as_json") else None}
    if r.source:
        out["source"] = r.source
    if r.download is not None:
        out["download"] = {"seconds": round(r.download.seconds, 3), "bytes": r.download.bytes,
                           "cached": r.download.cached}
    return out


class TokenFile:
    """The bearer token, read from a file and re-read when the file changes (Secret rotation)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token = b""
        self.read()

    def read(self) -> bytes:
        st = os.stat(self.path)  # OSError: reported at start-up; later, the old token stays
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp != self._stamp:
            token = self.path.read_bytes().strip()
            if not token:
                raise ValueError(f"--admin_token_file {self.path} is empty")
            self._token, self._stamp = token, stamp
        return self._token

    def matches(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        try:
            token = self.read()
        except (OSError, ValueError):
            token = self._token
        # aiohttp hands undecodable header bytes over as surrogates: compared as the bytes sent
        return hmac.compare_digest(header[len("Bearer "):].strip().encode("utf-8", "surrogateescape"), token)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(obj).encode(), status=status, content_type="application/json")


def make_admin_app(manager: Manager, token: TokenFile,
                   applied: Callable[[], Awaitable[None]] | None = None) -> web.Application:
    """`applied()` is awaited after a routing push and before its answer (with front-end
    workers: until every worker has the new table, so that the pusher's next request sees it)."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if not token.matches(request.headers.get("Authorization")):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="model-server admin"'},
                                body=b'{"error": "unauthorized"}', content_type="application/json")
        return await handler(request)

    async def get_routing(request: web.Request) -> web.Response:
        return _json(manager.routing.as_json())

    async def get_models(request: web.Request) -> web.Response:
        return _json(models_json(manager))

    async def put_routing(request: web.Request) -> web.Response:
        try:
            try:
                async with asyncio.timeout(BODY_TIMEOUT_S):
                    raw = await request.read()
            except TimeoutError:
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "routing document not received within "
                                   f"{BODY_TIMEOUT_S:.0f} s", http=408) from None
            except (ConnectionResetError, RequestPayloadError) as exc:  # cut short, or not decodable
                raise invalid_argument(f"routing document could not be read: {exc}") from None
            try:
                doc = json.loads(raw)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
                raise invalid_argument(f"routing document is not JSON: {exc}") from None
            table = parse_table(doc, "routing document")
            manager.apply_routing(table)
            if applied is not None:
                await applied()
        except ServingError as exc:
            message = wire_message(exc.message)
            log.warning("routing push refused: %s", message)
            return _json({"error": message}, exc.http_status)
        log.info("routing generation %d in force (pushed): %s", table.generation,
                 json.dumps(table.as_json()["models"], sort_keys=True))
        return _json(manager.routing.as_json())

    quiet_client_errors()
    app = web.Application(middlewares=[auth], client_max_size=1 << 20)
    app.router.add_get(ADMIN_ROUTING_PATH, get_routing)
    app.router.add_get(ADMIN_MODELS_PATH, get_models)
    app.router.add_put(ADMIN_ROUTING_PATH, put_routing)
    return app
