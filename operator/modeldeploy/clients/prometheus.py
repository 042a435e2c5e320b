"""I/O with Prometheus: one instant query, its answer as a plain value (None with the reason when
there is nothing usable). An unreachable Prometheus is an answer with the reason, never an error.
The queries themselves are pure text (decisions.queries).

A ModelDeployment may name its own Prometheus, so the operator reads whatever that URL answers:
each query ends within `timeout` seconds in all (5 by default) and reads at most `MAX_BYTES` of
answer (clients.bounded); past either it is an answer with the reason, like an unreachable one.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from modeldeploy.clients import bounded

# Our queries answer one series, or one per histogram bucket: a few KiB.
MAX_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    value: float | None
    problem: str = ""  # why value is None: unreachable, an error, an empty result


def parse(body: Any) -> Answer:
    """Pure: a Prometheus /api/v1/query answer with at most one series -> its value. An empty
    vector is no data; NaN (a quantile without traffic) is returned as NaN for the caller to judge."""
    if not isinstance(body, dict) or body.get("status") != "success":
        err = body.get("error") if isinstance(body, dict) else None
        return Answer(None, f"Prometheus error: {err or 'unexpected answer'}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list) and len(result) == 2:
        return Answer(_float(result[1]))
    if not isinstance(result, list):
        return Answer(None, "Prometheus answered no result")
    if not result:
        return Answer(None, "no series (no pod scraped yet, or no request in the window)")
    if len(result) > 1:
        return Answer(None, f"the query returned {len(result)} series, expected one")
    value = (result[0] or {}).get("value")
    if not isinstance(value, list) or len(value) != 2:
        return Answer(None, "Prometheus answered a malformed sample")
    return Answer(_float(value[1]))


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def instant(base_url: str, query: str, timeout: float = 5.0) -> Answer:
    """I/O: one instant query with at most one series; an unreachable Prometheus is an Answer with
    the reason, not an error."""
    body = _query(base_url, query, timeout)
    return body if isinstance(body, Answer) else parse(body)


@dataclass(frozen=True, slots=True)
class Series:
    samples: tuple[tuple[dict[str, str], float], ...]  # (labels, value) per series
    problem: str = ""  # why there are none: unreachable, an error, an empty result


def parse_vector(body: Any) -> Series:
    """Pure: a Prometheus /api/v1/query answer with any number of series -> (labels, value) each."""
    if not isinstance(body, dict) or body.get("status") != "success":
        err = body.get("error") if isinstance(body, dict) else None
        return Series((), f"Prometheus error: {err or 'unexpected answer'}")
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        return Series((), "Prometheus answered no vector")
    out = []
    for item in result:
        value = (item or {}).get("value")
        v = _float(value[1]) if isinstance(value, list) and len(value) == 2 else None
        if v is not None:
            out.append(({str(k): str(x) for k, x in (item.get("metric") or {}).items()}, v))
    return Series(tuple(out), "" if out else "no series (no request in the window)")


def vector(base_url: str, query: str, timeout: float = 5.0) -> Series:
    """I/O: one instant query answering several series (a histogram's buckets)."""
    body = _query(base_url, query, timeout)
    return Series((), body.problem) if isinstance(body, Answer) else parse_vector(body)


def _query(base_url: str, query: str, timeout: float) -> Any:
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        status, data = bounded.request("GET", url, timeout=timeout, max_bytes=MAX_BYTES,
                                       headers={"Accept": "application/json"})
    except bounded.LimitExceeded as exc:
        return Answer(None, f"Prometheus at {base_url}: {exc}")
    except (OSError, ValueError) as exc:
        return Answer(None, f"Prometheus unreachable at {base_url}: {exc}")
    try:
        return json.loads(data)
    except ValueError:
        return Answer(None, f"Prometheus answered HTTP {status}" if status >= 400 else
                      "Prometheus answered something that is not JSON")
