"""OpenTelemetry traces end to end: a real model-server exports spans to an OTLP receiver running
in the test (gRPC and HTTP), for REST and gRPC requests, batched and unbatched, and a client's
W3C trace context continues into the server. Plus the pure settings table."""

from __future__ import annotations

import os
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from modelserver.observability.otel import TracingConfigError, tracing_settings
from otel_sinks import OtlpGrpcReceiver, OtlpHttpReceiver, attributes
from server_support import ServerProcess, predict_request, started, wait_for

SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
STATUS_ERROR = 2  # Status.STATUS_CODE_ERROR


def _flags(enable: bool = False, endpoint: str = "") -> Any:
    return types.SimpleNamespace(enable_tracing=enable, tracing_endpoint=endpoint)


@pytest.mark.parametrize(("flags", "env", "expected"), [
    (_flags(), {}, None),  # off by default
    (_flags(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),  # an endpoint alone does not turn it on
    (_flags(True), {}, {"exporter": "otlp", "protocol": "http/protobuf", "endpoint": ""}),
    (_flags(endpoint="http://c:4317"), {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     {"exporter": "otlp", "protocol": "grpc", "endpoint": "http://c:4317"}),
    (_flags(), {"OTEL_TRACES_EXPORTER": "console"}, {"exporter": "console", "protocol": "http/protobuf",
                                                    "endpoint": ""}),
    (_flags(True), {"OTEL_TRACES_EXPORTER": "none"}, None),  # the standard variable's "none" wins
    (_flags(True), {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
     {"exporter": "otlp", "protocol": "http/protobuf", "endpoint": ""}),  # the per-signal one first
])
def test_tracing_settings(flags, env, expected):
    assert tracing_settings(flags, env) == expected


@pytest.mark.parametrize("env", [{"OTEL_TRACES_EXPORTER": "zipkin"},
                                 {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}])
def test_unusable_settings_are_refused(env):
    with pytest.raises(TracingConfigError):
        tracing_settings(_flags(True), env)


def _server(models_dir, tmp_path, args: list[str], **env: str) -> ServerProcess:
    return started([f"--model_config_file={models_dir / 'models.config'}", "--file_system_poll_wait_seconds=0", *args],
                   tmp_path / "server.log", env=dict(os.environ, OTEL_BSP_SCHEDULE_DELAY="100", **env))


def _roots(rx: Any) -> list[Any]:
    return [s for s in rx.all() if s.kind == SERVER_KIND]


def _children(rx: Any, root: Any) -> dict[str, Any]:
    return {s.name: s for s in rx.all() if s.parent_span_id == root.span_id and s.trace_id == root.trace_id}


def _phases_of(rx: Any, root: Any, names: set[str]) -> dict[str, Any]:
    def complete() -> dict[str, Any] | None:
        kids = _children(rx, root)
        return kids if set(kids) >= names else None

    kids = wait_for(complete, what=f"the phases {sorted(names)} of {root.name}", timeout=30)
    for kid in kids.values():
        assert root.start_time_unix_nano <= kid.start_time_unix_nano <= kid.end_time_unix_nano <= root.end_time_unix_nano
    return kids


def test_rest_and_grpc_spans_continue_the_clients_trace(models_dir, tmp_path):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    rest_trace, rest_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    grpc_trace, grpc_parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    trace_file = tmp_path / "trace.jsonl"
    with OtlpGrpcReceiver() as rx:
        server = _server(models_dir, tmp_path, ["--enable_tracing", f"--trace_file={trace_file}"],
                         OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
                         OTEL_SERVICE_NAME="classifier")
        try:
            r = requests.post(f"{server.url}/v1/models/two_versions/labels/canary:predict", json={"instances": [1.0]},
                              headers={"traceparent": f"00-{rest_trace}-{rest_parent}-01", "tracestate": "vendor=1"},
                              timeout=30)
            assert r.status_code == 200
            with grpc.insecure_channel(server.target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                stub.Predict(predict_request("half_plus_two", {"x": np.array([[1.0], [2.0]], np.float32)}),
                             metadata=(("traceparent", f"00-{grpc_trace}-{grpc_parent}-01"),), timeout=30)
            assert requests.post(f"{server.url}/v1/models/nowhere:predict", json={"instances": [1.0]},
                                 timeout=30).status_code == 404
            assert requests.get(f"{server.url}/v1/health/ready", timeout=30).status_code == 200  # not traced
            roots = wait_for(lambda: r if len(r := _roots(rx)) >= 3 else None, what="3 request spans", timeout=30)
        finally:
            server.stop()
    assert len(_roots(rx)) == 3, [s.name for s in _roots(rx)]  # the health check made none
    assert {r.get("service.name") for r in rx.resources()} == {"classifier"}
    by_name = {s.name: s for s in roots}

    rest = by_name["predict two_versions"]
    assert (rest.trace_id.hex(), rest.parent_span_id.hex(), rest.trace_state) == (rest_trace, rest_parent, "vendor=1")
    assert attributes(rest) == {
        "model.name": "two_versions", "model.version": 2, "model.label": "canary", "model.signature": "serving_default",
        "model.api": "predict", "modelserver.protocol": "rest", "modelserver.status": "OK",
        "modelserver.batch_size": 1, "modelserver.request_id": attributes(rest)["modelserver.request_id"]}
    assert set(_phases_of(rx, rest, {"receive", "compute", "send"})) == {"receive", "compute", "send"}

    grpc_span = by_name["predict half_plus_two"]
    assert (grpc_span.trace_id.hex(), grpc_span.parent_span_id.hex()) == (grpc_trace, grpc_parent)
    attrs = attributes(grpc_span)
    assert (attrs["modelserver.protocol"], attrs["model.version"], attrs["modelserver.batch_size"]) == ("grpc", 1, 2)
    kids = _phases_of(rx, grpc_span, {"receive", "compute", "send"})
    assert attributes(kids["compute"]) == {"modelserver.batch_size": 2}

    failed = by_name["predict nowhere"]
    assert failed.parent_span_id == b""  # no traceparent: a new trace
    assert failed.status.code == STATUS_ERROR and attributes(failed)["modelserver.status"] == "NOT_FOUND"
    assert len(trace_file.read_text().splitlines()) == 3  # --trace_file keeps working beside it


def test_batched_requests_over_otlp_http_show_their_queue_wait_and_batch(models_dir, tmp_path):
    """One batch thread, held by bytes_model's read_file (it waits for a file) while four gRPC and
    one REST request queue for half_plus_two; once the file appears they run as one batch of five
    (max_batch_size 5; the 60 s timeout never passes), and each request's spans say so."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    (tmp_path / "batching.config").write_text(
        "max_batch_size { value: 5 }\nbatch_timeout_micros { value: 60000000 }\nnum_batch_threads { value: 1 }\n")
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    gate = tmp_path / "gate"
    with OtlpHttpReceiver() as rx:
        server = _server(models_dir, tmp_path, [f"--tracing_endpoint={rx.endpoint}", "--enable_batching",
                                                f"--batching_parameters_file={tmp_path / 'batching.config'}",
                                                f"--monitoring_config_file={tmp_path / 'monitoring.config'}"])
        try:
            with grpc.insecure_channel(server.target) as channel, ThreadPoolExecutor(2) as pool:
                held = pool.submit(requests.post, f"{server.url}/v1/models/bytes_model:predict", timeout=60,
                                   json={"signature_name": "read_file", "inputs": {"path": str(gate)}})
                server.wait_until(lambda: (tmp_path / "gate.started").exists(), "the batch thread held")
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                calls = [stub.Predict.future(predict_request("half_plus_two", {"x": np.array([[float(i)]], np.float32)}),
                                             timeout=60) for i in range(4)]
                rest = pool.submit(requests.post, f"{server.url}/v1/models/half_plus_two:predict",
                                   json={"instances": [[5.0]]}, timeout=60)
                server.wait_until(lambda: server.metric("modelserver_queue_depth", path="/metrics") == 5,
                                  "five requests queued")
                gate.write_text("open")
                for c in calls:
                    c.result()
                assert rest.result().status_code == 200 and held.result().status_code == 200
            roots = wait_for(lambda: r if len(r := [s for s in _roots(rx) if "half_plus_two" in s.name]) >= 5 else None,
                             what="5 request spans", timeout=30)
        finally:
            server.stop()
    sizes = []
    for root in roots:
        kids = _phases_of(rx, root, {"receive", "queue", "compute", "send"})
        assert kids["receive"].end_time_unix_nano <= kids["queue"].start_time_unix_nano + 1000
        assert kids["queue"].end_time_unix_nano <= kids["compute"].start_time_unix_nano + 1000
        size = attributes(root)["modelserver.batch_size"]
        assert attributes(kids["compute"])["modelserver.batch_size"] == size
        sizes.append(size)
    assert sizes == [5] * 5, sizes  # requests that waited together ran as one batch, and their spans say so
    assert {attributes(r)["modelserver.protocol"] for r in roots} == {"grpc", "rest"}


def test_off_installs_nothing(monkeypatch):
    """Tracing and payload logging off (the default): no request hook, and the front ends read no
    trace headers and keep no payloads."""
    from modelserver.config.flags import parse_args
    from modelserver.observability import tracing

    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)
    state = types.SimpleNamespace(flags=parse_args([]), request_hooks=[], trace_context=False, capture_payloads=False)
    assert tracing.install(state) is None
    assert (state.request_hooks, state.trace_context, state.capture_payloads) == ([], False, False)
