"""Prometheus metrics: TF Serving's names and labels, plus base-unit metrics for canary analysis
and autoscaling. Served on the REST port at the monitoring path (`--monitoring_config_file`).

Recording is cheap: the request hook (`ServerMetrics.finish`, called once per request on the
event loop) does one dict lookup for its label set and a few bisects into plain lists; the
Prometheus families are only built when scraped (a custom prometheus_client collector, which
also lets TF Serving's names start with ':').

Label values are bounded by what the server serves, never by what clients send: a request for a
model the server does not serve is counted under model "" (one series per API, protocol and
code, however many names clients invent), and a label that is not one of the model's labels
under label "" (`ServerMetrics.finish`, with `labels_of` from the manager).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from modelserver.contract import (
    LATENCY_BUCKETS_SECONDS,
    LATENCY_METRIC,
    METRICS_PATH,
    SHADOW_DIFF_BUCKETS,
    SHADOW_RATIO_BUCKETS,
)
from modelserver.core.request_context import RequestContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PATH = METRICS_PATH

# TF Serving's buckets for latencies in microseconds: 10 * 1.8^i, i < 33 (up to about 2.7 h).
TF_LATENCY_BUCKETS_US: tuple[float, ...] = tuple(10 * 1.8**i for i in range(33))
# TF Serving's batching_session queuing latency buckets (µs): 100 * 1.2^i, i < 52.
TF_QUEUE_BUCKETS_US: tuple[float, ...] = tuple(100 * 1.2**i for i in range(52))
SECONDS_BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS: tuple[float, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


TF_API = {"predict": "Predict", "classify": "Classify", "regress": "Regress",
          "multi_inference": "MultiInference", "get_model_metadata": "GetModelMetadata"}
INFERENCE_APIS = frozenset({"predict", "classify", "regress", "multi_inference"})

def metrics_path(monitoring_config: Any) -> str | None:
    """The path to serve metrics at, from `--monitoring_config_file`'s MonitoringConfig message
    (parsed and checked by config.load_monitoring_config), or None when Prometheus is off."""
    if monitoring_config is None or not monitoring_config.prometheus_config.enable:
        return None
    return str(monitoring_config.prometheus_config.path or DEFAULT_PATH)


# --------------------------------------------------------------------------------------------
# Storage: plain lists, no locks on the hot path (the event loop records; scrapes copy).


class _Hist:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for b, c in zip(self.bounds, self.counts, strict=False):
            acc += c
            out.append((floatToGoString(b), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class _Series:
    """Everything one finished request touches, for one label set."""

    __slots__ = ("requests", "tf_latency", "runtime", "seconds", "queue_seconds", "compute_seconds", "tf_queue")

    def __init__(self) -> None:
        self.requests = 0
        self.tf_latency = _Hist(TF_LATENCY_BUCKETS_US)
        self.runtime = _Hist(TF_LATENCY_BUCKETS_US)
        self.seconds = _Hist(SECONDS_BUCKETS)
        self.queue_seconds = _Hist(SECONDS_BUCKETS)
        self.compute_seconds = _Hist(SECONDS_BUCKETS)
        self.tf_queue = _Hist(TF_QUEUE_BUCKETS_US)


QueueDepthSource = Callable[[], dict[str, int]]


class ServerMetrics:
    """The server's metrics: `finish` is a request-completion hook, `record_batch` the batcher's
    observer, `record_warmup` the load hook's. `render()` gives the exposition text."""

    def __init__(self, thread_pool_name: str = "batch_threads",
                 labels_of: Callable[[str], Mapping[str, int] | None] | None = None) -> None:
        self._labels_of = labels_of  # a served model's labels; None for a model not served
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._latency: dict[tuple[str, str], _Hist] = {}  # (model, version) -> OK inference answers
        self._shadow_results: dict[tuple[str, str, str], int] = {}  # (model, shadow version, result) -> requests
        self._shadow_diff: dict[tuple[str, str], _Hist] = {}
        self._shadow_ratio: dict[tuple[str, str], _Hist] = {}
        self._shadow_top1: dict[tuple[str, str, str], int] = {}  # (model, version, agree|disagree) -> rows
        self._batches: dict[tuple[str, str], _Hist] = {}
        self._padding: dict[tuple[str, str], _Hist] = {}
        self._warmup: dict[tuple[str, str, str], _Hist] = {}
        self._warmup_s: dict[tuple[str, str], _Hist] = {}
        self._lock = threading.Lock()  # only for the rare records from other threads
        self._queue_depth: list[QueueDepthSource] = []
        self._busy: list[Callable[[], int]] = []
        self._in_flight: Callable[[], int] | None = None
        self._thread_pool_name = thread_pool_name
        self.extra: Callable[[], Iterable[Metric]] | None = None  # more families (the front-end workers')
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # ---- recording

    def finish(self, ctx: RequestContext) -> None:
        """Request-completion hook (event loop thread)."""
        model, label = ctx.model, ctx.label
        if self._labels_of is not None and model:
            labels = self._labels_of(model)
            if labels is None:  # not a model this server serves: one bucket for every such name
                model, label = "", None
            elif label is not None and label not in labels:
                label = None
        key = (model, ctx.version if model else None, label, ctx.api, ctx.protocol, ctx.status)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.requests += 1
        end = ctx.t_send if ctx.t_send is not None else time.perf_counter()
        total = end - ctx.t_receive
        s.seconds.observe(total)
        if ctx.api in INFERENCE_APIS:
            s.tf_latency.observe(total * 1e6)
            if ctx.status == "OK" and model:
                lk = (model, _v(ctx.version))
                h = self._latency.get(lk)
                if h is None:
                    h = self._latency[lk] = _Hist(LATENCY_BUCKETS_SECONDS)
                h.observe(total)
        c0, c1 = ctx.t_compute_start, ctx.t_compute_end
        if c0 is not None and c1 is not None:
            s.compute_seconds.observe(c1 - c0)
            s.runtime.observe((c1 - c0) * 1e6)
            q0 = ctx.t_queue_start
            if q0 is not None:
                s.queue_seconds.observe(c0 - q0)
                s.tf_queue.observe((c0 - q0) * 1e6)

    def record_shadow(self, obs: Any) -> None:
        """Shadower hook (event loop thread): one mirrored request (core/shadow.Observation)."""
        k = (obs.model, str(obs.version))
        c = obs.comparison
        result = "mismatched" if c is not None and c.mismatched else obs.result
        rk = (*k, result)
        self._shadow_results[rk] = self._shadow_results.get(rk, 0) + 1
        if c is None:
            return
        if c.max_abs_diff is not None:
            self._shadow_diff.setdefault(k, _Hist(SHADOW_DIFF_BUCKETS)).observe(c.max_abs_diff)
        if c.rows:
            for agreement, n in (("agree", c.agreed), ("disagree", c.rows - c.agreed)):
                self._shadow_top1[(*k, agreement)] = self._shadow_top1.get((*k, agreement), 0) + n
        if obs.primary_seconds and obs.shadow_seconds is not None:
            self._shadow_ratio.setdefault(k, _Hist(SHADOW_RATIO_BUCKETS)).observe(obs.shadow_seconds / obs.primary_seconds)

    def record_batch(self, model_key: Hashable, rows: int, size: int) -> None:
        """Batcher observer: one executed batch of `rows` real rows padded to `size`."""
        model, version = _model_version(model_key)
        k = (model, version)
        h = self._batches.get(k)
        if h is None:
            h = self._batches[k] = _Hist(BATCH_SIZE_BUCKETS)
            self._padding[k] = _Hist(BATCH_SIZE_BUCKETS)
        h.observe(size)
        self._padding[k].observe(size - rows)

    def record_warmup(self, model: str, version: int, model_path: str, seconds: float) -> None:
        """Load hook: the warmup of one version took `seconds` (any thread)."""
        with self._lock:
            k = (model, str(version), model_path)
            h = self._warmup.get(k)
            if h is None:
                h = self._warmup[k] = _Hist(TF_LATENCY_BUCKETS_US)
            h.observe(seconds * 1e6)
            hs = self._warmup_s.get(k[:2])
            if hs is None:
                hs = self._warmup_s[k[:2]] = _Hist(SECONDS_BUCKETS)
            hs.observe(seconds)

    def add_queue_depth_source(self, source: QueueDepthSource) -> None:
        self._queue_depth.append(source)

    def add_busy_threads_source(self, source: Callable[[], int]) -> None:
        self._busy.append(source)

    def set_in_flight_source(self, source: Callable[[], int]) -> None:
        """Requests received and not yet answered (the autoscaler's concurrency metric)."""
        self._in_flight = source

    # ---- several processes (workers/pool.py: front-end workers record, the model process renders)

    def recorded(self) -> dict[str, Any]:
        """What the request hooks of this process have recorded, to be merged elsewhere."""
        return {"series": dict(self._series), "latency": dict(self._latency),
                "shadow_results": dict(self._shadow_results), "shadow_diff": dict(self._shadow_diff),
                "shadow_ratio": dict(self._shadow_ratio), "shadow_top1": dict(self._shadow_top1),
                "in_flight": self._in_flight() if self._in_flight is not None else 0}

    def merged(self, others: Sequence[Mapping[str, Any]]) -> ServerMetrics:
        """This process's metrics plus what `others` recorded (`recorded()` of each worker): one
        set of series for the pod, counters and histograms summed per label set, the in-flight
        gauge summed; batches, queues and warmups are this process's own."""
        out = ServerMetrics(self._thread_pool_name, self._labels_of)
        out._batches, out._padding = self._batches, self._padding
        out._warmup, out._warmup_s = self._warmup, self._warmup_s
        out._queue_depth, out._busy = self._queue_depth, self._busy
        out.extra = self.extra
        parts = [self.recorded(), *others]
        total = sum(int(p["in_flight"]) for p in parts)
        out._in_flight = lambda: total
        for p in parts:
            for k, s in p["series"].items():
                acc = out._series.get(k)
                if acc is None:
                    acc = out._series[k] = _Series()
                acc.requests += s.requests
                for name in _Series.__slots__[1:]:
                    _add(getattr(acc, name), getattr(s, name))
            for field, target in (("latency", out._latency), ("shadow_diff", out._shadow_diff),
                                  ("shadow_ratio", out._shadow_ratio)):
                for k, h in p[field].items():
                    acc_h = target.get(k)
                    if acc_h is None:
                        acc_h = target[k] = _Hist(h.bounds)
                    _add(acc_h, h)
            for field, counts in (("shadow_results", out._shadow_results), ("shadow_top1", out._shadow_top1)):
                for k, n in p[field].items():
                    counts[k] = counts.get(k, 0) + n
        return out

    # ---- exposition

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        # prometheus_client names a counter family `<name>_total` in HELP/TYPE; TF Serving's
        # counter keeps its bare name, so dashboards and the TYPE line agree with the samples.
        return text.replace(b" :tensorflow:serving:request_count_total ", b" :tensorflow:serving:request_count ")


def _model_version(model_key: Hashable) -> tuple[str, str]:
    if isinstance(model_key, tuple) and len(model_key) >= 2:
        return str(model_key[0]), "" if model_key[1] is None else str(model_key[1])
    return str(model_key), ""


def _v(version: int | None) -> str:
    return "" if version is None else str(version)


class _Collector:
    def __init__(self, m: ServerMetrics) -> None:
        self.m = m

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:  # noqa: C901 - one family after the other
        m = self.m
        series = list(m._series.items())

        # TF Serving's families ------------------------------------------------------------
        count = Metric(":tensorflow:serving:request_count",
                       "The total number of requests.", "counter")
        agg: dict[tuple[str, str], int] = {}
        for (model, _ver, _lbl, api, _proto, status), s in series:
            if api in INFERENCE_APIS:
                agg[(model, status)] = agg.get((model, status), 0) + s.requests
        for (model, status), n in sorted(agg.items()):
            count.samples.append(Sample(":tensorflow:serving:request_count",
                                        {"model_name": model, "status": status}, float(n)))
        yield count

        yield _tf_hist(":tensorflow:serving:request_latency",
                       "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                       ["model_name", "API", "entrypoint"],
                       [((model, TF_API.get(api, api), "GRPC" if proto.endswith("grpc") else "REST"), s.tf_latency)
                        for (model, _v_, _l, api, proto, _st), s in series if api in INFERENCE_APIS])
        yield _tf_hist(":tensorflow:serving:runtime_latency",
                       "Distribution of wall time (in microseconds) for Tensorflow runtime.",
                       ["model_name", "API", "runtime"],
                       [((model, TF_API.get(api, api), "TF2"), s.runtime)
                        for (model, _v_, _l, api, _p, _st), s in series if api in INFERENCE_APIS])
        yield _tf_hist(":tensorflow:serving:batching_session:queuing_latency",
                       "Distribution of wall time spent (in microseconds) in queuing",
                       ["thread_pool_name"],
                       [((m._thread_pool_name,), s.tf_queue) for _k, s in series])
        yield _tf_hist(":tensorflow:serving:model_warmup_latency",
                       "Distribution of wall time (in microseconds) for warming up the model.",
                       ["model_path"],
                       [((path,), h) for (_m, _ver, path), h in list(m._warmup.items())])

        # Base units, per model / version / label ----------------------------------------------
        labels = ["model", "version", "label", "api", "protocol", "code"]
        total = CounterMetricFamily("modelserver_requests", "Requests answered, by outcome (gRPC code).",
                                    labels=labels)
        errors = CounterMetricFamily("modelserver_request_errors",
                                     "Requests answered with an error (code other than OK).", labels=labels)
        for (model, ver, label, api, proto, status), s in series:
            lv = [model, _v(ver), label or "", api, proto, status]
            total.add_metric(lv, s.requests)
            if status != "OK":
                errors.add_metric(lv, s.requests)
        yield total
        yield errors
        yield _merged_hist("modelserver_request_duration_seconds",
                           "Time from receiving a request to sending its answer.",
                           ["model", "version", "label", "api", "protocol"], SECONDS_BUCKETS,
                           [((model, _v(ver), label or "", api, proto), s.seconds)
                            for (model, ver, label, api, proto, _st), s in series])
        yield _merged_hist(LATENCY_METRIC,
                           "Time from receiving an inference request to sending its OK answer, per version, "
                           "in buckets 2^(1/8) apart (for rollout analysis and autoscaling).",
                           ["model", "version"], LATENCY_BUCKETS_SECONDS, list(m._latency.items()))
        yield _merged_hist("modelserver_queue_duration_seconds",
                           "Time requests waited in the batching queue.", ["model", "version"],
                           SECONDS_BUCKETS,
                           [((model, _v(ver)), s.queue_seconds) for (model, ver, *_r), s in series])
        yield _merged_hist("modelserver_compute_duration_seconds",
                           "Time of the model computation that answered a request (its whole batch).",
                           ["model", "version"], SECONDS_BUCKETS,
                           [((model, _v(ver)), s.compute_seconds) for (model, ver, *_r), s in series])
        yield _merged_hist("modelserver_batch_size", "Executed batch sizes (after padding).",
                           ["model", "version"], BATCH_SIZE_BUCKETS,
                           list(m._batches.items()))
        yield _merged_hist("modelserver_batch_padding_rows", "Padding rows added per executed batch.",
                           ["model", "version"], BATCH_SIZE_BUCKETS,
                           list(m._padding.items()))
        yield _merged_hist("modelserver_model_warmup_duration_seconds", "Warmup time per loaded version.",
                           ["model", "version"], SECONDS_BUCKETS,
                           list(m._warmup_s.items()))
        yield from _shadow_families(m)
        depth = GaugeMetricFamily("modelserver_queue_depth", "Requests waiting in the batching queue.",
                                  labels=["model"])
        merged: dict[str, int] = {}
        if m._queue_depth:  # 0 for every model served so far, so the series exists when idle
            merged = {model: 0 for (model, *_rest), _s in series if model}
        for source in m._queue_depth:
            for model, n in source().items():
                merged[model] = merged.get(model, 0) + n
        for model, n in sorted(merged.items()):
            depth.add_metric([model], n)
        yield depth
        if m._in_flight is not None:
            flight = GaugeMetricFamily("modelserver_in_flight_requests",
                                       "Requests received and not yet answered, over every front end.")
            flight.add_metric([], m._in_flight())
            yield flight
        if m._busy:
            busy = GaugeMetricFamily("modelserver_batch_threads_busy", "Batch threads running a batch now.")
            busy.add_metric([], sum(source() for source in m._busy))
            yield busy


def _shadow_families(m: ServerMetrics) -> Iterator[Metric]:
    """The shadow's families (labels model and version: the shadow's version)."""
    results = CounterMetricFamily("modelserver_shadow_requests", "Requests mirrored to a shadow version, by "
                                  "result: compared, mismatched (outputs of other names or shapes), failed, dropped "
                                  "(too many shadow runs in flight).", labels=["model", "version", "result"])
    for (model, ver, result), n in sorted(m._shadow_results.items()):
        results.add_metric([model, ver, result], n)
    yield results
    top1 = CounterMetricFamily("modelserver_shadow_top1_rows", "Rows of [rows, classes] outputs whose top-1 class "
                               "the shadow and the primary agree or disagree on.", labels=["model", "version", "agreement"])
    for (model, ver, agreement), n in sorted(m._shadow_top1.items()):
        top1.add_metric([model, ver, agreement], n)
    yield top1
    yield _merged_hist("modelserver_shadow_max_abs_diff", "The largest absolute difference between the shadow's and "
                       "the primary's numeric outputs, per mirrored request.", ["model", "version"],
                       SHADOW_DIFF_BUCKETS, list(m._shadow_diff.items()))
    yield _merged_hist("modelserver_shadow_latency_ratio", "The shadow version's time over the primary's on the same "
                       "inputs (queue and model), per mirrored request.", ["model", "version"], SHADOW_RATIO_BUCKETS,
                       list(m._shadow_ratio.items()))
    if m.extra is not None:
        yield from m.extra()


def _tf_hist(name: str, doc: str, labels: list[str],
             items: Iterable[tuple[tuple[str, ...], _Hist]]) -> HistogramMetricFamily:
    """TF Serving's histograms: each keeps its own buckets."""
    return _merged_hist(name, doc, labels, None, items)


def _merged_hist(name: str, doc: str, labels: list[str], bounds: Sequence[float] | None,
                 items: Iterable[tuple[tuple[str, ...], _Hist]]) -> HistogramMetricFamily:
    """One family from per-key histograms, summed per label values (`bounds`: None keeps each
    histogram's own buckets)."""
    merged: dict[tuple[str, ...], _Hist] = {}
    for lv, h in items:
        if not any(h.counts):
            continue
        acc = merged.get(lv)
        if acc is None:
            acc = merged[lv] = _Hist(h.bounds if bounds is None else bounds)
        _add(acc, h)
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for lv, h in sorted(merged.items()):
        fam.add_metric(list(lv), h.buckets(), sum_value=h.sum)
    return fam


def _add(acc: _Hist, h: _Hist) -> None:
    counts = list(h.counts)  # copy first: the loop may be recording meanwhile
    for i, c in enumerate(counts):
        acc.counts[i] += c
    acc.sum += h.sum


def install(state: Any, thread_pool_name: str = "batch_threads") -> ServerMetrics | None:
    """Wires metrics into a ServerState when its monitoring config enables Prometheus: the request
    hook, and the exposition route on the REST port. Returns None when metrics are off."""
    from aiohttp import web

    path = metrics_path(state.monitoring_config)
    if path is None:
        return None
    manager = state.manager

    def labels_of(name: str) -> Mapping[str, int] | None:
        rec = manager.models.get(name)
        return None if rec is None else rec.labels

    m = ServerMetrics(thread_pool_name, labels_of)
    state.request_hooks.append(m.finish)
    state.plane.shadow.hooks.append(m.record_shadow)
    m.set_in_flight_source(lambda: state.in_flight)

    async def handler(_request: web.Request) -> web.Response:
        render = state.render_metrics  # set in a front-end worker: the model process renders the pod's
        body = await render() if render is not None else m.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    state.rest_routes.append(web.get(path, handler))
    return m
