"""I/O with the activator's HTTP API (modeldeploy.activator.admin): put a ModelDeployment's gate
(its limits and ready pods; the answer says where its ports are and what it holds), forget one,
and long-poll the demand. Every failure is an answer (`Activator.problem`), never an exception,
except in `wait_demand`, which its caller retries."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aiohttp

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import bounded
from modeldeploy.decisions.scaletozero import Activator, PodEndpoint

TIMEOUT_SECONDS = 2.0
MAX_BYTES = 1024 * 1024


def _headers(token: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}


def parse(answer: Any) -> Activator:
    """Pure: the PUT's answer -> Activator (a malformed one: a problem)."""
    try:
        cold = answer.get("lastColdStart") or {}
        return Activator(str(answer["address"]), int(answer["grpcPort"]), int(answer["httpPort"]),
                         int(answer.get("held") or 0), _num(answer.get("waitingSince")), _num(cold.get("heldAt")),
                         _num(cold.get("releasedAt")), _num(cold.get("answeredAt")))
    except (KeyError, TypeError, ValueError, AttributeError):
        return Activator(problem="unexpected answer")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def sync(url: str, token: str, namespace: str, name: str, limits: api.ScaleToZero,
         pods: list[PodEndpoint]) -> Activator:
    body = {"maxHeldRequests": limits.max_held_requests, "holdTimeoutSeconds": limits.hold_timeout_seconds,
            "endpoints": [{"address": p.address, "grpcPort": p.grpc_port, "httpPort": p.http_port} for p in pods]}
    try:
        status, data = bounded.request("PUT", f"{url.rstrip('/')}/v1/targets/{namespace}/{name}",
                                       timeout=TIMEOUT_SECONDS, max_bytes=MAX_BYTES,
                                       body=json.dumps(body).encode(), headers=_headers(token))
    except (OSError, ValueError) as exc:
        return Activator(problem=str(exc) or type(exc).__name__)
    if status != 200:
        return Activator(problem=f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
    try:
        return parse(json.loads(data))
    except ValueError:
        return Activator(problem="unexpected answer")


def forget(url: str, token: str, namespace: str, name: str) -> None:
    """Best effort: a gate left behind only holds two idle ports."""
    with contextlib.suppress(OSError, ValueError):
        bounded.request("DELETE", f"{url.rstrip('/')}/v1/targets/{namespace}/{name}", timeout=TIMEOUT_SECONDS,
                        max_bytes=MAX_BYTES, headers=_headers(token))


async def wait_demand(session: aiohttp.ClientSession, url: str, token: str, after: int,
                      wait: float) -> tuple[int, list[tuple[str, str]]]:
    """Until a gate's demand begins after `after` (or `wait` seconds): the new sequence and the
    ModelDeployments with held requests. OSError / ValueError when the activator cannot answer."""
    try:
        async with session.get(f"{url.rstrip('/')}/v1/demand", params={"after": str(after), "wait": f"{wait:g}"},
                               headers=_headers(token), timeout=aiohttp.ClientTimeout(total=wait + TIMEOUT_SECONDS)) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            doc = json.loads(await r.content.read(MAX_BYTES))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    try:
        return int(doc["seq"]), [(str(w["namespace"]), str(w["name"])) for w in doc.get("waiting") or []]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError("unexpected answer") from exc
