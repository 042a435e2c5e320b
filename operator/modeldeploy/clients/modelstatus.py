"""What the model servers themselves say about each version: TF Serving's REST model status.

`GET <base>/v1/models/<name>` answers `{"model_version_status": [{"version": "3", "state": "AVAILABLE",
"status": {"error_code": "OK", "error_message": ""}}, ...]}`. The operator asks the ModelDeployment's
Service (one of its ready pods) when the Deployment has ready pods; the answer refines the per-version
states in status. Unreachable servers (an operator running outside the cluster) leave the states
as readiness tells them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from modelserver import contract  # the server's REST port and paths (pure Python)

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


@dataclass(frozen=True)
class VersionReport:
    state: str
    message: str = ""
    labels: tuple[str, ...] = ()  # the labels the server resolves to this version
    warmup: dict[str, Any] | None = None  # what the server replayed before AVAILABLE (admin port report)


def parse(body: dict[str, Any]) -> dict[int, VersionReport]:
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
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) URL built from our template
            return parse(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return {}
        raise _Unreachable from exc
    except (OSError, ValueError) as exc:
        raise _Unreachable from exc


def fetch(base_url: str, model: str, labels: Sequence[str] = (), timeout: float = 2.0) -> dict[int, VersionReport] | None:
    """I/O: ask one server for its versions and where each of `labels` points (TF Serving's
    `GET /v1/models/<name>/labels/<label>`); None when it cannot be reached or answers nonsense."""
    base = base_url.rstrip("/")
    try:
        reports = _get(base + contract.model_path(model), timeout)
        resolved: dict[str, int | None] = {}
        for label in labels:
            found = _get(base + contract.model_path(model, label), timeout) if reports else {}
            resolved[label] = next(iter(found), None)
    except _Unreachable:
        return None
    return with_labels(reports, resolved)
