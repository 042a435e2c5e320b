"""The PromQL the operator asks about a ModelDeployment's pods, and Prometheus' answers as plain
values (None with the reason when there is nothing usable).

Series come from model-server's own metrics (`modelserver_*`, base units) as Prometheus scrapes
them with the pod's labels: `namespace`, `pod` and `serving_modeldeploy_io_model_deployment`
(the chart's PodMonitor keeps that label; the local cluster's Prometheus sets the same ones).
Only inference APIs count (predict, classify, regress, multi-inference), not status or metadata
calls. Queries are pure functions of (namespace, name, window); `instant` is the only I/O.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

MD_LABEL = "serving_modeldeploy_io_model_deployment"
INFERENCE_APIS = "predict|classify|regress|multi_inference"
QUANTILES = {"latencyP50Ms": 0.5, "latencyP95Ms": 0.95, "latencyP99Ms": 0.99}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(namespace: str, name: str, **extra: str) -> str:
    """`{namespace="ns", serving_modeldeploy_io_model_deployment="name", ...}` (extra values are
    regular expressions when they contain `|`)."""
    parts = [f'namespace="{_escape(namespace)}"', f'{MD_LABEL}="{_escape(name)}"']
    parts += [f'{k}=~"{v}"' if "|" in v else f'{k}="{_escape(v)}"' for k, v in extra.items()]
    return "{" + ",".join(parts) + "}"


def latency_ms(namespace: str, name: str, quantile: float, window: str, **extra: str) -> str:
    sel = selector(namespace, name, api=INFERENCE_APIS, **extra)
    return (f"histogram_quantile({quantile}, sum by (le) "
            f"(rate(modelserver_request_duration_seconds_bucket{sel}[{window}]))) * 1000")


def requests_per_second(namespace: str, name: str, window: str, **extra: str) -> str:
    return f"sum(rate(modelserver_requests_total{selector(namespace, name, api=INFERENCE_APIS, **extra)}[{window}]))"


SERVER_ERRORS = "INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|UNKNOWN|RESOURCE_EXHAUSTED|DATA_LOSS"


def error_ratio(namespace: str, name: str, window: str, codes: str = SERVER_ERRORS, **extra: str) -> str:
    """Errors over requests; by default errors are server-side failures and deadline misses, not
    client mistakes (`codes`: a regular expression of gRPC code names, or "!OK": every code but OK)."""
    sel = selector(namespace, name, api=INFERENCE_APIS, **extra)
    errs = (selector(namespace, name, api=INFERENCE_APIS, code=codes, **extra) if codes != "!OK" else
            selector(namespace, name, api=INFERENCE_APIS, **extra)[:-1] + ',code!="OK"}')
    return (f"(sum(rate(modelserver_requests_total{errs}[{window}])) or vector(0)) / "
            f"sum(rate(modelserver_requests_total{sel}[{window}]))")


def in_flight_per_pod(namespace: str, name: str) -> str:
    return f"avg(modelserver_in_flight_requests{selector(namespace, name)})"


def scrape_age_seconds(namespace: str, name: str) -> str:
    """Seconds since the freshest scrape of this ModelDeployment's pods (stale data detection)."""
    return f"time() - max(timestamp(up{selector(namespace, name)}))"


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
    """I/O: one instant query; an unreachable Prometheus is an Answer with the reason, not an error."""
    url = f"{base_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the spec's Prometheus URL
            return parse(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            return parse(json.loads(exc.read()))
        except ValueError:
            return Answer(None, f"Prometheus answered HTTP {exc.code}")
    except (OSError, ValueError) as exc:
        return Answer(None, f"Prometheus unreachable at {base_url}: {exc}")
