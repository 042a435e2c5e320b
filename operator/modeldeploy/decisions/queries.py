"""The PromQL the operator asks about a ModelDeployment's pods (pure text).

Series come from model-server's own metrics (`modelserver_*`, base units) as Prometheus scrapes
them with the pod's labels: `namespace`, `pod` and `serving_modeldeploy_io_model_deployment`
(the chart's PodMonitor keeps that label; the local cluster's Prometheus sets the same ones).
Only inference APIs count (predict, classify, regress, multi-inference), not status or metadata
calls. Queries are pure functions of (namespace, name, window); clients.prometheus asks them.
"""

from __future__ import annotations

from modelserver import contract  # the latency histogram's name (pure Python)

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
    """A latency quantile of OK inference answers (ms), from the per-version histogram whose buckets
    are 9% apart (contract.LATENCY_BUCKETS_SECONDS)."""
    sel = selector(namespace, name, **extra)
    return (f"histogram_quantile({quantile}, sum by (le) "
            f"(rate({contract.LATENCY_METRIC}_bucket{sel}[{window}]))) * 1000")


def version_answers(namespace: str, name: str, version: int, window: str) -> str:
    """Inference answers of one version in the window (any code)."""
    sel = selector(namespace, name, api=INFERENCE_APIS, version=str(version))
    return f"sum(increase(modelserver_requests_total{sel}[{window}]))"


def version_errors(namespace: str, name: str, version: int, window: str) -> str:
    """Inference answers of one version in the window that were not OK (0 when there were none)."""
    sel = selector(namespace, name, api=INFERENCE_APIS, version=str(version))[:-1] + ',code!="OK"}'
    return f"sum(increase(modelserver_requests_total{sel}[{window}])) or vector(0)"


def shadow_by(namespace: str, name: str, version: int, window: str, series: str, by: str) -> str:
    """A shadow metric of one (shadow) version in the window, one series per `by` label value
    (`series`: requests_total, top1_rows_total, or a histogram's _bucket)."""
    sel = selector(namespace, name, version=str(version))
    return f"sum by ({by}) (increase(modelserver_shadow_{series}{sel}[{window}]))"


def version_latency_buckets(namespace: str, name: str, version: int, window: str) -> str:
    """One version's OK answers per latency bucket in the window: one series per `le` (cumulative)."""
    sel = selector(namespace, name, version=str(version))
    return f"sum by (le) (increase({contract.LATENCY_METRIC}_bucket{sel}[{window}]))"


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


def inference_requests(namespace: str, name: str, window: str) -> str:
    """Inference requests answered in the window, every pod and code (scale to zero's idle test;
    no series at all, with the pods scraped, is 0)."""
    return f"sum(increase(modelserver_requests_total{selector(namespace, name, api=INFERENCE_APIS)}[{window}]))"


def in_flight_per_pod(namespace: str, name: str) -> str:
    return f"avg(modelserver_in_flight_requests{selector(namespace, name)})"


def scrape_age_seconds(namespace: str, name: str) -> str:
    """Seconds since the freshest scrape of this ModelDeployment's pods (stale data detection)."""
    return f"time() - max(timestamp(up{selector(namespace, name)}))"
