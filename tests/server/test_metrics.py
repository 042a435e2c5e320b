"""Metrics: the monitoring config file, recording, and the exposition text (TF Serving's names
and labels, base-unit families). The real Prometheus scrape is in test_metrics_server.py."""

from __future__ import annotations

import pytest
from modelserver.config.model_config import load_monitoring_config
from modelserver.core.request_context import RequestContext
from modelserver.observability.metrics import DEFAULT_PATH, TF_LATENCY_BUCKETS_US, ServerMetrics, metrics_path
from prometheus_client.parser import text_string_to_metric_families


def test_metrics_path_from_the_monitoring_config_file(tmp_path):
    p = tmp_path / "monitoring.config"
    p.write_text('prometheus_config { enable: true, path: "/metrics" }\n')
    assert metrics_path(load_monitoring_config(p)) == "/metrics"
    p.write_text("prometheus_config { enable: true }\n")
    assert metrics_path(load_monitoring_config(p)) == DEFAULT_PATH
    p.write_text('prometheus_config { enable: false, path: "/metrics" }\n')
    assert metrics_path(load_monitoring_config(p)) is None
    assert metrics_path(None) is None


def _ctx(model="hp", version=1, label=None, api="predict", protocol="grpc", status="OK",
         total=0.004, queue=0.001, compute=0.002) -> RequestContext:
    c = RequestContext(protocol=protocol, api=api, model=model, version=version, label=label, status=status)
    c.t_queue_start = c.t_receive + 0.0005
    c.t_compute_start = c.t_queue_start + queue
    c.t_compute_end = c.t_compute_start + compute
    c.t_send = c.t_receive + total
    return c


def _families(m: ServerMetrics) -> dict:
    text = m.render().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}, text


def _value(fam, sample_name, **labels):
    for s in fam.samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {sample_name} {labels} in {fam.samples[:5]}")


def test_tf_serving_names_labels_and_buckets():
    m = ServerMetrics()
    for _ in range(3):
        m.finish(_ctx())
    m.finish(_ctx(status="INVALID_ARGUMENT"))
    m.finish(_ctx(protocol="rest", total=0.010))
    m.record_warmup("hp", 1, "/models/hp/1", 0.25)
    fams, text = _families(m)
    # the counter keeps TF Serving's bare name in samples and in HELP/TYPE
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="hp",status="OK"} 4.0' in text
    assert ':tensorflow:serving:request_count{model_name="hp",status="INVALID_ARGUMENT"} 1.0' in text
    lat = fams[":tensorflow:serving:request_latency"]
    assert lat.type == "histogram"
    grpc_buckets = [s for s in lat.samples if s.name.endswith("_bucket") and s.labels["entrypoint"] == "GRPC"]
    assert len(grpc_buckets) == 34  # 33 bounds 10*1.8^i, plus +Inf
    assert float(grpc_buckets[0].labels["le"]) == 10.0
    assert float(grpc_buckets[32].labels["le"]) == pytest.approx(TF_LATENCY_BUCKETS_US[32])
    assert grpc_buckets[0].labels["API"] == "Predict"
    assert _value(lat, ":tensorflow:serving:request_latency_count", entrypoint="REST") == 1
    # 4 ms = 4000 µs lies in the bucket le=4251.5... (10*1.8^10.3); sums are in µs
    assert _value(lat, ":tensorflow:serving:request_latency_sum", entrypoint="REST") == pytest.approx(10000, rel=1e-3)
    rt = fams[":tensorflow:serving:runtime_latency"]
    assert _value(rt, ":tensorflow:serving:runtime_latency_count", runtime="TF2", API="Predict") == 5
    q = fams[":tensorflow:serving:batching_session:queuing_latency"]
    assert _value(q, ":tensorflow:serving:batching_session:queuing_latency_sum") == pytest.approx(5000, rel=1e-3)
    w = fams[":tensorflow:serving:model_warmup_latency"]
    assert _value(w, ":tensorflow:serving:model_warmup_latency_sum", model_path="/models/hp/1") == 250000


def test_base_unit_metrics_per_model_version_label():
    m = ServerMetrics()
    m.finish(_ctx(version=1, label="stable"))
    m.finish(_ctx(version=2, label="canary", status="INTERNAL", total=0.5))
    m.finish(_ctx(version=2, label="canary"))
    meta = RequestContext(protocol="rest", api="get_model_metadata", model="hp", version=1)
    meta.t_send = meta.t_receive + 0.0001
    m.finish(meta)
    m.record_batch(("hp", 2, "serving_default"), 3, 4)
    m.add_queue_depth_source(lambda: {"hp": 5})
    m.add_queue_depth_source(lambda: {"hp": 1, "other": 2})
    m.set_in_flight_source(lambda: 3)
    fams, text = _families(m)
    assert _value(fams["modelserver_in_flight_requests"], "modelserver_in_flight_requests") == 3
    req = fams["modelserver_requests"]
    assert _value(req, "modelserver_requests_total", version="2", label="canary", code="OK") == 1
    assert _value(req, "modelserver_requests_total", api="get_model_metadata", protocol="rest") == 1
    err = fams["modelserver_request_errors"]
    assert [s.labels["code"] for s in err.samples if s.name.endswith("_total")] == ["INTERNAL"]
    dur = fams["modelserver_request_duration_seconds"]
    assert _value(dur, "modelserver_request_duration_seconds_sum", version="2", label="canary") == pytest.approx(0.504)
    assert _value(dur, "modelserver_request_duration_seconds_bucket", version="2", label="canary", le="0.005") == 1
    assert _value(fams["modelserver_batch_size"], "modelserver_batch_size_sum", version="2") == 4
    assert _value(fams["modelserver_batch_padding_rows"], "modelserver_batch_padding_rows_sum") == 1
    assert _value(fams["modelserver_queue_depth"], "modelserver_queue_depth", model="hp") == 6
    assert _value(fams["modelserver_queue_duration_seconds"], "modelserver_queue_duration_seconds_count",
                  version="1") == 1
    # metadata calls are not inference requests in TF Serving's families
    assert "get_model_metadata" not in text.split("modelserver_requests")[0]


def test_request_without_computation_records_no_runtime():
    m = ServerMetrics()
    c = RequestContext(protocol="rest", api="predict", model="hp", status="NOT_FOUND")
    c.t_send = c.t_receive + 0.001
    m.finish(c)
    fams, text = _families(m)
    assert ':tensorflow:serving:request_count{model_name="hp",status="NOT_FOUND"} 1.0' in text
    assert not [s for s in fams[":tensorflow:serving:runtime_latency"].samples]


def test_names_and_labels_the_server_does_not_serve_share_one_series():
    """Clients choose model names and labels; the series do not: a model the server does not
    serve counts under model "" and a label the model does not have under label "", so 1,000
    invented names add one series, not 1,000 (a scrape of 372 MB froze a server before)."""
    served = {"hp": {"stable": 1}}
    m = ServerMetrics(labels_of=served.get)
    for i in range(1000):
        m.finish(_ctx(model=f"m{i:07d}", version=None, status="NOT_FOUND"))
        m.finish(_ctx(model="hp", label=f"l{i}", status="INVALID_ARGUMENT"))
    m.finish(_ctx(model="hp", label="stable"))
    fams, text = _families(m)
    requests = [s for s in fams["modelserver_requests"].samples if s.name == "modelserver_requests_total"]
    assert {(s.labels["model"], s.labels["label"], s.labels["code"]): s.value for s in requests} == {
        ("", "", "NOT_FOUND"): 1000, ("hp", "", "INVALID_ARGUMENT"): 1000, ("hp", "stable", "OK"): 1}
    assert "m0000001" not in text and "l1" not in text
    assert ':tensorflow:serving:request_count{model_name="",status="NOT_FOUND"} 1000.0' in text
