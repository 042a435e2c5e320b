"""I/O with model-server over HTTP: what the servers say about each version, and their admin ports.

- **Model status through the Service** (`fetch_status`): TF Serving's REST model status,
  `GET <base>/v1/models/<name>` answers `{"model_version_status": [{"version": "3", "state":
  "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}, ...]}`. The operator asks the
  ModelDeployment's Service (one of its ready pods) when the Deployment has ready pods and the
  pods' admin ports cannot be reached; the answer refines the per-version states in status.
  Unreachable servers (an operator running outside the cluster) leave the states as readiness
  tells them.
- **Each ready pod's admin port** (model-server `--admin_port`, see modelserver.protocol.admin):
  read what a pod serves (`fetch_reports`), push a routing table to it (`push`). The pods are the
  ready endpoints of the ModelDeployment's headless admin Service (its EndpointSlices, from the
  operator's cache), called directly, in parallel, with the bearer token of the ModelDeployment's
  admin token and short timeouts, so that one slow pod never holds a reconcile for long. Every
  failure is an answer (the pod's `unreachable` reason), never an exception.

The operator reads answers from servers whose image a ModelDeployment chooses: each request ends
within its timeout in all (2 s) and reads at most `MAX_BYTES` (clients.bounded), so that no answer
can hold a reconcile worker or fill the operator's memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from modelserver import contract

from modeldeploy.clients import bounded
from modeldeploy.decisions.records import Endpoint, PodReport, PushResult, VersionReport

# A model's status or a pod's report lists its versions and labels: a few KiB.
MAX_BYTES = 1024 * 1024

# TF Serving's ManagedState names -> the states we show in status.
STATES = {
    "START": "Loading",
    "LOADING": "Loading",
    "AVAILABLE": "Available",
    "UNLOADING": "Unloading",
    "END": "Failed",
    "UNKNOWN": "Unknown",
}
DEFAULT_URL_TEMPLATE = f"http://{{name}}.{{namespace}}.svc:{contract.REST_PORT}"


def parse_status(body: dict[str, Any]) -> dict[int, VersionReport]:
    """Pure: TF Serving's GetModelStatus JSON -> version -> report."""
    out: dict[int, VersionReport] = {}
    for entry in body.get("model_version_status") or []:
        try:
            version = int(entry.get("version"))
        except (TypeError, ValueError):
            continue
        raw = str(entry.get("state") or "UNKNOWN")
        status = entry.get("status") or {}
        message = str(status.get("error_message") or "")
        state = STATES.get(raw, "Unknown")
        if raw == "END" and status.get("error_code", "OK") == "OK":
            state = "Unloaded"
        out[version] = VersionReport(state, message)
    return out


def with_labels(reports: dict[int, VersionReport], resolved: dict[str, int | None]) -> dict[int, VersionReport]:
    """Pure: attach each label to the version the server resolved it to (None: not assigned there)."""
    by_version: dict[int, list[str]] = {}
    for label, version in sorted(resolved.items()):
        if version is not None and version in reports:
            by_version.setdefault(version, []).append(label)
    return {v: replace(r, labels=tuple(by_version.get(v, ()))) for v, r in reports.items()}


class _Unreachable(Exception):
    pass


def _get(url: str, timeout: float) -> dict[int, VersionReport]:
    """One status request: the reports, {} for 4xx (unknown model or label), _Unreachable otherwise."""
    try:
        status, data = bounded.request("GET", url, timeout=timeout, max_bytes=MAX_BYTES)
        if 400 <= status < 500:
            return {}
        if status >= 300:
            raise _Unreachable(f"HTTP {status}")
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise _Unreachable("unexpected answer")
        return parse_status(doc)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise _Unreachable from exc


def fetch_status(base_url: str, model: str, labels: Sequence[str] = (), timeout: float = 2.0) -> dict[int, VersionReport] | None:
    """I/O: ask one server for its versions and where each of `labels` points (TF Serving's
    `GET /v1/models/<name>/labels/<label>`), all within `timeout` seconds; None when it cannot be
    reached, answers nonsense or takes longer."""
    base = base_url.rstrip("/")
    deadline = time.monotonic() + timeout

    def get(url: str) -> dict[int, VersionReport]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Unreachable(f"no complete answer within {timeout:g} s")
        return _get(url, left)

    try:
        reports = get(base + contract.model_path(model))
        resolved: dict[str, int | None] = {}
        for label in labels:
            found = get(base + contract.model_path(model, label)) if reports else {}
            resolved[label] = next(iter(found), None)
    except _Unreachable:
        return None
    return with_labels(reports, resolved)


TIMEOUT_SECONDS = 2.0
Obj = dict[str, Any]


def ready_endpoints(slices: Iterable[Obj], port_name: str = "admin") -> list[Endpoint]:
    """Pure: the ready endpoints of EndpointSlices, with their named port, one per pod."""
    return _endpoints(slices, port_name, ready=True)


def unready_endpoints(slices: Iterable[Obj], port_name: str = "admin") -> list[Endpoint]:
    """Pure: the endpoints that are not ready (a server still loading, or one that cannot load its
    model: a store it cannot list), one per pod."""
    return _endpoints(slices, port_name, ready=False)


def _endpoints(slices: Iterable[Obj], port_name: str, ready: bool) -> list[Endpoint]:
    out: dict[str, Endpoint] = {}
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None)
        if port is None:
            continue
        for ep in s.get("endpoints") or []:
            if ((ep.get("conditions") or {}).get("ready") is not False) != ready or not ep.get("addresses"):
                continue
            pod = (ep.get("targetRef") or {}).get("name") or ep["addresses"][0]
            host = ep["addresses"][0]
            host = f"[{host}]" if ":" in host else host
            out.setdefault(pod, Endpoint(pod, f"http://{host}:{port}"))
    return [out[k] for k in sorted(out)]


def parse_report(pod: str, model: str, body: Any) -> PodReport:
    """Pure: GET /v1/admin/models's answer -> what the pod serves of `model` (an answer of another
    shape: unreachable, "unexpected answer")."""
    try:
        return _parse_report(pod, model, body)
    except (ValueError, TypeError, AttributeError):
        return PodReport(pod, unreachable="unexpected answer")


def _parse_report(pod: str, model: str, body: Any) -> PodReport:
    if not isinstance(body, dict):
        return PodReport(pod, unreachable="unexpected answer")
    entry = (body.get("models") or {}).get(model)
    gen = int(body.get("routingGeneration", -1))
    if not isinstance(entry, dict):
        return PodReport(pod, generation=gen)
    versions: dict[int, str] = {}
    errors: dict[int, str] = {}
    warmup: dict[int, dict[str, Any]] = {}
    downloads: dict[int, dict[str, Any]] = {}
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
        if (rec or {}).get("source"):
            download = rec.get("download")
            downloads[version] = {"source": str(rec["source"]), "download": {
                "seconds": float(download.get("seconds") or 0.0), "bytes": int(download.get("bytes") or 0),
                "cached": bool(download.get("cached"))} if isinstance(download, dict) else None}
    labels = {str(k): int(v) for k, v in (entry.get("labels") or {}).items()}
    store_error = str(((entry.get("storage") or {}).get("error")) or "")
    return PodReport(pod, versions, errors, gen, labels=labels, warmup=warmup, downloads=downloads,
                     store_error=store_error)


def _call(method: str, url: str, token: str, body: Obj | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    status, answer = bounded.request(method, url, timeout=timeout, max_bytes=MAX_BYTES, body=data, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        return status, json.loads(answer or b"null")
    except ValueError:
        if status >= 400:
            return status, None
        raise


def fetch_reports(endpoints: Sequence[Endpoint], token: str, model: str, timeout: float = TIMEOUT_SECONDS) -> list[PodReport]:
    """Every pod's report, asked in parallel."""
    def one(ep: Endpoint) -> PodReport:
        try:
            code, body = _call("GET", ep.url + contract.ADMIN_MODELS_PATH, token, None, timeout)
        except (OSError, ValueError) as exc:
            return PodReport(ep.pod, unreachable=str(getattr(exc, "reason", exc)))
        if code != 200:
            why = str(body.get("error", ""))[:200] if isinstance(body, dict) else ""
            return PodReport(ep.pod, unreachable=f"HTTP {code}: {why}", token_refused=code == 401)
        return parse_report(ep.pod, model, body)

    return _parallel(one, endpoints)


def push(endpoints: Sequence[Endpoint], token: str, document: Obj, timeout: float = TIMEOUT_SECONDS) -> list[PushResult]:
    """PUT the routing document to each pod, in parallel; each answer says what is in force there."""
    def one(ep: Endpoint) -> PushResult:
        try:
            code, body = _call("PUT", ep.url + contract.ADMIN_ROUTING_PATH, token, document, timeout)
        except (OSError, ValueError) as exc:
            return PushResult(ep.pod, -1, str(getattr(exc, "reason", exc)))
        gen = body.get("generation", -1) if isinstance(body, dict) else -1
        gen = gen if isinstance(gen, int) else -1
        if code == 200:
            return PushResult(ep.pod, gen)
        why = str(body.get("error") or "")[:200] if isinstance(body, dict) else ""
        return PushResult(ep.pod, gen, f"HTTP {code}: {why or 'refused'}")

    return _parallel(one, endpoints)


def _parallel(fn: Any, items: Sequence[Any]) -> list[Any]:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(16, len(items)), thread_name_prefix="podadmin") as pool:
        return list(pool.map(fn, items))
