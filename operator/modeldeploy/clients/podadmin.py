"""I/O with each ready pod's admin port (model-server `--admin_port`, see
server_image/modelserver/admin.py): read what a pod serves, push a routing table to it.

The pods are the ready endpoints of the ModelDeployment's headless admin Service (its
EndpointSlices, from the operator's cache), called directly, in parallel, with the bearer token of
the ModelDeployment's admin Secret and short timeouts, so that one slow pod never holds a reconcile
for long. Every failure is an answer (the pod's `unreachable` reason), never an exception.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelserver import contract

from modeldeploy.decisions.traffic import PodReport

TIMEOUT_SECONDS = 2.0
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str
    url: str  # http://<address>:<admin port>


def ready_endpoints(slices: Iterable[Obj], port_name: str = "admin") -> list[Endpoint]:
    """Pure: the ready endpoints of EndpointSlices, with their named port, one per pod."""
    out: dict[str, Endpoint] = {}
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False or not ep.get("addresses"):
                continue
            pod = (ep.get("targetRef") or {}).get("name") or ep["addresses"][0]
            host = ep["addresses"][0]
            host = f"[{host}]" if ":" in host else host
            out.setdefault(pod, Endpoint(pod, f"http://{host}:{port}"))
    return [out[k] for k in sorted(out)]


def token_of(secret: Obj | None, key: str) -> str | None:
    """The token in a Secret as the API server returns it (base64 `data`)."""
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw).decode().strip() or None
    except (ValueError, UnicodeDecodeError):
        return None


def parse_report(pod: str, model: str, body: Any) -> PodReport:
    """Pure: GET /v1/admin/models's answer -> what the pod serves of `model`."""
    if not isinstance(body, dict):
        return PodReport(pod, unreachable="unexpected answer")
    entry = (body.get("models") or {}).get(model)
    gen = int(body.get("routingGeneration", -1))
    if not isinstance(entry, dict):
        return PodReport(pod, generation=gen)
    versions: dict[int, str] = {}
    errors: dict[int, str] = {}
    warmup: dict[int, dict[str, Any]] = {}
    for v, rec in (entry.get("versions") or {}).items():
        try:
            version = int(v)
        except ValueError:
            continue
        versions[version] = str((rec or {}).get("state") or "UNKNOWN")
        if (rec or {}).get("error"):
            errors[version] = str(rec["error"])
        if isinstance((rec or {}).get("warmup"), dict) and rec["warmup"].get("records"):
            warmup[version] = dict(rec["warmup"])
    labels = {str(k): int(v) for k, v in (entry.get("labels") or {}).items()}
    return PodReport(pod, versions, errors, gen, labels=labels, warmup=warmup)


def _call(method: str, url: str, token: str, body: Obj | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - pod addresses from EndpointSlices
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None


def fetch(endpoints: Sequence[Endpoint], token: str, model: str, timeout: float = TIMEOUT_SECONDS) -> list[PodReport]:
    """Every pod's report, asked in parallel."""
    def one(ep: Endpoint) -> PodReport:
        try:
            code, body = _call("GET", ep.url + contract.ADMIN_MODELS_PATH, token, None, timeout)
        except (OSError, ValueError) as exc:
            return PodReport(ep.pod, unreachable=str(getattr(exc, "reason", exc)))
        if code != 200:
            return PodReport(ep.pod, unreachable=f"HTTP {code}: {(body or {}).get('error', '') if isinstance(body, dict) else ''}")
        return parse_report(ep.pod, model, body)

    return _parallel(one, endpoints)


@dataclass(frozen=True, slots=True)
class PushResult:
    pod: str
    generation: int  # in force on the pod after the push (-1: unknown)
    error: str = ""


def push(endpoints: Sequence[Endpoint], token: str, document: Obj, timeout: float = TIMEOUT_SECONDS) -> list[PushResult]:
    """PUT the routing document to each pod, in parallel; each answer says what is in force there."""
    def one(ep: Endpoint) -> PushResult:
        try:
            code, body = _call("PUT", ep.url + contract.ADMIN_ROUTING_PATH, token, document, timeout)
        except (OSError, ValueError) as exc:
            return PushResult(ep.pod, -1, str(getattr(exc, "reason", exc)))
        gen = int(body.get("generation", -1)) if isinstance(body, dict) and "generation" in body else -1
        if code == 200:
            return PushResult(ep.pod, gen)
        why = body.get("error") if isinstance(body, dict) else None
        return PushResult(ep.pod, gen, f"HTTP {code}: {why or 'refused'}")

    return _parallel(one, endpoints)


def _parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(16, len(items)), thread_name_prefix="podadmin") as pool:
        return list(pool.map(fn, items))
