"""The controller's measurements from Prometheus, when a decision is due: a progressive rollout's
check (the new and the old version's requests, error ratio and p99 over the check's window) and
the autoscaler's metric (or why there is none: no URL, unreachable, no series, NaN, stale samples).

The queries are decisions.queries' text, asked through clients.prometheus; the figures go into the
pure decisions (decisions.rollout, decisions.autoscale) as their `Measured` records.
"""

from __future__ import annotations

import bisect
import math

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import prometheus
from modeldeploy.decisions import autoscale, queries, rollout


def rollout_check(r: api.Rollout, default_url: str, namespace: str, name: str, from_v: int, to_v: int,
                  window_s: int, shadowing: bool = False) -> rollout.Measured:
    """Both versions over the same window; while the rollout shadows, what the shadow runs saw."""
    url = r.prometheus.url if r.prometheus else default_url
    window = f"{window_s}s"
    return rollout.Measured(version_metrics(url, namespace, name, to_v, window),
                            version_metrics(url, namespace, name, from_v, window),
                            shadow_metrics(url, namespace, name, to_v, window) if shadowing else None)


def shadow_metrics(url: str, namespace: str, name: str, version: int, window: str) -> rollout.ShadowMetrics:
    if not url:
        return rollout.ShadowMetrics({}, problem="no Prometheus URL (spec.rollout.prometheus.url, or the operator's "
                                     "--prometheus-url)")
    results = prometheus.vector(url, queries.shadow_by(namespace, name, version, window, "requests_total", "result"))
    if results.problem.startswith(("Prometheus unreachable", "Prometheus error", "Prometheus answered HTTP")):
        return rollout.ShadowMetrics({}, problem=results.problem)
    top1 = {labels.get("agreement", ""): v for labels, v in prometheus.vector(
        url, queries.shadow_by(namespace, name, version, window, "top1_rows_total", "agreement")).samples}
    ratios = prometheus.vector(url, queries.shadow_by(namespace, name, version, window, "latency_ratio_bucket", "le"))
    diffs = prometheus.vector(url, queries.shadow_by(namespace, name, version, window, "max_abs_diff_bucket", "le"))
    return rollout.ShadowMetrics(
        {labels.get("result", ""): v for labels, v in results.samples},
        bucket_counts(ratios.samples, rollout.RATIO_BOUNDS), bucket_counts(diffs.samples, rollout.DIFF_BOUNDS),
        top1.get("agree"), top1.get("disagree"))


def version_metrics(url: str, namespace: str, name: str, version: int, window: str) -> rollout.VersionMetrics:
    if not url:
        return rollout.VersionMetrics(None, None, None, "no Prometheus URL (spec.rollout.prometheus.url, or the "
                                      "operator's --prometheus-url)")
    requests = prometheus.instant(url, queries.version_answers(namespace, name, version, window))
    if requests.problem.startswith(("Prometheus unreachable", "Prometheus error", "Prometheus answered HTTP")):
        return rollout.VersionMetrics(None, None, None, requests.problem)
    errors = prometheus.instant(url, queries.version_errors(namespace, name, version, window)).value
    buckets = prometheus.vector(url, queries.version_latency_buckets(namespace, name, version, window))
    return rollout.VersionMetrics(_number(requests.value), _number(errors), bucket_counts(buckets.samples))


def bucket_counts(samples: tuple[tuple[dict[str, str], float], ...],
                  bounds: tuple[float, ...] = rollout.LATENCY_BOUNDS) -> tuple[float, ...] | None:
    """Cumulative `le` series -> per-bucket counts over `bounds` (+Inf last); None
    when there are none. `increase` extrapolates, so counts may be fractional and a cumulative
    count may dip by a hair below the previous bucket's: such dips count as zero."""
    cumulative = [0.0] * (len(bounds) + 1)
    found = False
    for labels, value in samples:
        le = labels.get("le", "")
        try:
            bound = float(le)
        except ValueError:
            continue
        if math.isnan(value):
            continue
        i = len(bounds) if math.isinf(bound) else _index(bounds, bound)
        if i is not None:
            cumulative[i] = value
            found = True
    if not found:
        return None
    for i in range(1, len(cumulative)):  # a bucket a scrape did not return holds the one below's count
        cumulative[i] = max(cumulative[i], cumulative[i - 1])
    return tuple([cumulative[0]] + [cumulative[i] - cumulative[i - 1] for i in range(1, len(cumulative))])


def _index(bounds: tuple[float, ...], bound: float) -> int | None:
    """The bucket whose upper bound is `bound` (Prometheus prints them rounded)."""
    i = bisect.bisect_left(bounds, bound * (1 - 1e-9) if bound > 0 else bound)
    return i if i < len(bounds) and abs(bounds[i] - bound) <= 1e-6 * abs(bounds[i]) else None


def _number(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def autoscaler_metric(a: api.Autoscaling, default_url: str, namespace: str, name: str, ready: int, now: float) -> autoscale.Measured:
    url = a.prometheus.url if a.prometheus else default_url
    if not url:
        return autoscale.Measured(now, None, "no Prometheus URL (spec.autoscaling.prometheus.url, or the operator's --prometheus-url)")
    age = prometheus.instant(url, queries.scrape_age_seconds(namespace, name))
    if age.value is None or math.isnan(age.value):
        return autoscale.Measured(now, None, age.problem or "no scrape of the pods yet")
    if age.value > autoscale.stale_after(a):
        return autoscale.Measured(now, None, f"the freshest samples are {age.value:.0f} s old (stale)")
    answer = prometheus.instant(url, autoscale.query_for(a, namespace, name))
    value = answer.value
    if value is not None and api.Metric(a.metric) == api.Metric.rps and not math.isnan(value):
        value = value / ready if ready else None  # per ready replica
    return autoscale.Measured(now, value, answer.problem)


def idle_requests(url: str, namespace: str, name: str, window_s: int) -> tuple[float | None, str]:
    """Inference requests in the last `window_s` seconds (scale to zero), or None and why: no URL,
    Prometheus unreachable, or no fresh scrape of the pods (no series while they are scraped is 0)."""
    if not url:
        return None, "no Prometheus URL (spec.autoscaling.prometheus.url, or the operator's --prometheus-url)"
    age = prometheus.instant(url, queries.scrape_age_seconds(namespace, name))
    if age.value is None or math.isnan(age.value):
        return None, age.problem or "no scrape of the pods yet"
    if age.value > max(60.0, window_s / 2):
        return None, f"the freshest samples are {age.value:.0f} s old (stale)"
    answer = prometheus.instant(url, queries.inference_requests(namespace, name, f"{window_s}s"))
    if answer.value is None and not answer.problem.startswith("no series"):
        return None, answer.problem
    value = answer.value
    return (0.0 if value is None or math.isnan(value) else value), ""
