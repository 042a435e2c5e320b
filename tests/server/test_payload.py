"""Payload logging end to end: a real model-server sends sampled requests and answers as
CloudEvents (binary content mode) to an HTTP sink running in the test, for REST and gRPC; with
the sink refusing, slow or down, every request is still answered and the drop counter rises.
Plus the logger itself in-process (modes, sampling, header encoding)."""

from __future__ import annotations

import json
import re

import grpc
import numpy as np
import pytest
import requests
from modelserver.core.request_context import RequestContext
from modelserver.observability.payload import PayloadLogger, event_headers
from otel_sinks import EventSink
from server_support import ServerProcess, predict_request, started, wait_for

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _ctx(**kw: object) -> RequestContext:
    ctx = RequestContext("rest", "predict", model="m", version=3, signature="serving_default")
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_event_headers_are_cloudevents_binary_mode_attributes():
    ctx = _ctx(label="café 1", traceparent=f"00-{TRACE}-{PARENT}-01", status="OK")
    h = event_headers("request", ctx, "/modelserver/pod", "application/json", None, 1_700_000_000.25)
    assert h["ce-specversion"] == "1.0" and h["ce-type"] == "org.modeldeploy.inference.request"
    assert h["ce-id"] == f"{ctx.request_id}-request" and h["ce-requestid"] == str(ctx.request_id)
    assert h["ce-time"] == "2023-11-14T22:13:20.250000Z"
    assert (h["ce-model"], h["ce-modelversion"], h["ce-traceid"]) == ("m", "3", TRACE)
    assert h["ce-modellabel"] == "caf%C3%A9%201"  # outside printable ASCII: percent-encoded, as the binding says
    assert "ce-dataschema" not in h and h["Content-Type"] == "application/json"
    assert all(v.isascii() and " " not in v for v in h.values() if v is not h["Content-Type"])


def test_modes_and_sampling_in_process():
    with EventSink() as sink:
        answers = iter([0.1, 0.9, 0.2, 0.8])  # sampled when below the rate
        logger = PayloadLogger(sink.url, mode="response", sample_rate=0.5, rng=lambda: next(answers))
        try:
            for i in range(4):
                logger.finish(_ctx(request_payload=b'{"instances": [%d]}' % i, response_payload=b'{"p": [%d]}' % i))
            wait_for(lambda: logger.sent == 2, what="2 events sent", timeout=30)
        finally:
            logger.close()
    assert [e["body"] for e in sink.events] == [b'{"p": [0]}', b'{"p": [2]}']
    assert {e["headers"]["ce-type"] for e in sink.events} == {"org.modeldeploy.inference.response"}


def _server(models_dir, tmp_path, url: str, *args: str) -> ServerProcess:
    (tmp_path / "monitoring.config").write_text('prometheus_config { enable: true path: "/metrics" }\n')
    return started([f"--model_config_file={models_dir / 'models.config'}", "--file_system_poll_wait_seconds=0",
                    f"--monitoring_config_file={tmp_path / 'monitoring.config'}", f"--payload_log_url={url}", *args],
                   tmp_path / "server.log")


def test_rest_and_grpc_requests_and_answers_arrive_as_cloudevents(models_dir, tmp_path):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    body = b'{"instances": [1.0, 2.0]}'
    with EventSink(tmp_path / "events.jsonl") as sink:
        server = _server(models_dir, tmp_path, sink.url)
        try:
            r = requests.post(f"{server.url}/v1/models/two_versions/labels/canary:predict", data=body,
                              headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}, timeout=30)
            assert r.status_code == 200
            sent = predict_request("half_plus_two", {"x": np.array([[3.0]], np.float32)})
            with grpc.insecure_channel(server.target) as channel:
                answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(sent, timeout=30)
            wait_for(lambda: len(sink.events) == 4, what="4 events", timeout=30)
            assert server.metric("modelserver_payload_log_sent_total", "/metrics") == 4
            assert server.metric("modelserver_payload_log_dropped_total", "/metrics") == 0
        finally:
            server.stop()
    rest_req, rest_resp = (next(e for e in sink.of_type(k) if e["headers"]["ce-protocol"] == "rest")
                           for k in ("request", "response"))
    assert rest_req["body"] == body and rest_resp["body"] == r.content
    h = rest_req["headers"]
    assert (h["content-type"], h["ce-specversion"], h["ce-model"], h["ce-modelversion"], h["ce-modellabel"],
            h["ce-traceid"], h["ce-api"], h["ce-status"]) == (
        "application/json", "1.0", "two_versions", "2", "canary", TRACE, "predict", "OK")
    assert h["ce-source"].startswith("/modelserver/") and h["ce-id"] != rest_resp["headers"]["ce-id"]
    assert h["ce-requestid"] == rest_resp["headers"]["ce-requestid"]

    grpc_req, grpc_resp = (next(e for e in sink.of_type(k) if e["headers"]["ce-protocol"] == "grpc")
                           for k in ("request", "response"))
    assert grpc_req["headers"]["content-type"] == "application/x-protobuf"
    assert grpc_req["headers"]["ce-dataschema"] == "type.googleapis.com/tensorflow.serving.PredictRequest"
    assert grpc_resp["headers"]["ce-dataschema"] == "type.googleapis.com/tensorflow.serving.PredictResponse"
    assert predict_pb2.PredictRequest.FromString(grpc_req["body"]) == sent
    assert predict_pb2.PredictResponse.FromString(grpc_resp["body"]) == answer
    assert "ce-traceid" not in grpc_req["headers"]  # no trace context sent, no tracing on

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {"data", "data_base64"} & set(lines[0])


def test_v2_binary_bodies_keep_their_header_length_in_the_content_type(models_dir, tmp_path):
    """The v2 binary data extension's bodies are not JSON: the events say application/octet-stream
    with the JSON header's length, so that a reader can split them as the server did."""
    raw = np.array([1.0, 2.0], np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    with EventSink() as sink:
        server = _server(models_dir, tmp_path, sink.url)
        try:
            r = requests.post(f"{server.url}/v2/models/half_plus_two/infer", data=head + raw, timeout=30,
                              headers={"Inference-Header-Content-Length": str(len(head))})
            assert r.status_code == 200, r.text
            wait_for(lambda: len(sink.events) == 2, what="2 events", timeout=30)
        finally:
            server.stop()
    req, resp = (sink.of_type(k)[0] for k in ("request", "response"))
    assert req["body"] == head + raw and resp["body"] == r.content
    assert req["headers"]["content-type"] == f"application/octet-stream; inference-header-content-length={len(head)}"
    n = int(r.headers["Inference-Header-Content-Length"])
    assert resp["headers"]["content-type"] == f"application/octet-stream; inference-header-content-length={n}"
    assert np.frombuffer(resp["body"][n:], np.float32).tolist() == [2.5, 3.0]


def test_a_refusing_slow_or_absent_sink_never_fails_serving(models_dir, tmp_path):
    with EventSink(mode="refuse", delay=3.0) as sink:
        server = _server(models_dir, tmp_path, sink.url, "--payload_log_queue_size=4")

        def predict_all(n: int) -> None:
            for i in range(n):
                r = requests.post(f"{server.url}/v1/models/half_plus_two:predict", json={"instances": [float(i)]},
                                  timeout=30)
                assert r.status_code == 200, r.text

        def dropped(reason: str) -> float:
            return server.metric("modelserver_payload_log_dropped_total", "/metrics", reason=reason)

        def all_dropped() -> float:
            return dropped("sink_error") + dropped("queue_full")

        try:
            predict_all(5)  # refused (503): sink errors (and, past 4 waiting, queue_full)
            wait_for(lambda: all_dropped() == 10 and dropped("sink_error") >= 1, what="10 events dropped", timeout=30)
            sink.mode = "slow"  # 3 s an event, past the 2 s a send may take: the queue (4) fills, the rest drops
            full = dropped("queue_full")
            predict_all(20)
            wait_for(lambda: dropped("queue_full") >= full + 30, what="queue_full drops", timeout=30)
        finally:
            sink.mode = "ok"
        sink.__exit__(None, None, None)  # the sink goes away: connections refused
        try:
            wait_for(lambda: server.metric("modelserver_payload_log_queued", "/metrics") == 0,
                     what="the queue drained", timeout=60)
            before = all_dropped()
            predict_all(3)
            wait_for(lambda: all_dropped() == before + 6, what="6 more drops", timeout=30)
        finally:
            server.stop()
    warnings = re.findall(r"payload log: \d+ events dropped", server.log_path.read_text())
    assert 1 <= len(warnings) <= 1 + 60 // 10, warnings  # logged, at most once every 10 s


def test_the_sender_reads_chunked_and_closing_answers():
    """httppost.KeepAliveClient against answers http.client would take too: chunked bodies (with a
    trailer), `Connection: close`, and an HTTP/1.0 one; each counts, none stalls the sender."""
    import socket
    import threading

    from modelserver.observability.httppost import KeepAliveClient, SinkError
    from support import free_port

    answers = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
               b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
               b"HTTP/1.0 204 No Content\r\n\r\n",
               b"SSH-2.0-OpenSSH\r\n\r\n"]
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    got: list[bytes] = []

    def serve() -> None:
        pending = list(answers)
        while pending:
            conn, _ = listener.accept()
            with conn:
                buf = b""
                while pending:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                    while b"\r\n\r\n" in buf and buf.endswith(b"{}"):
                        got.append(buf)
                        buf = b""
                        answer = pending.pop(0)
                        conn.sendall(answer)
                        if b"close" in answer or answer.startswith(b"HTTP/1.0"):
                            break
                    else:
                        continue
                    if b"close" in answer or answer.startswith(b"HTTP/1.0"):
                        break

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = KeepAliveClient(f"http://127.0.0.1:{port}/e?x=1", timeout=5)
    try:
        assert [client.post({"ce-id": str(i)}, b"{}") for i in range(3)] == [200, 202, 204]
        with pytest.raises(SinkError):
            client.post({"ce-id": "3"}, b"{}")
    finally:
        client.close()
        listener.close()
    assert len(got) == 4 and got[0].startswith(b"POST /e?x=1 HTTP/1.1\r\n") and b"ce-id: 0\r\n" in got[0]


def test_replay_sends_logged_rest_requests_to_another_version_and_compares(models_dir, tmp_path, capsys):
    from modeldeploy import cli
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    events = tmp_path / "events.jsonl"
    with EventSink(events) as sink:
        server = _server(models_dir, tmp_path, sink.url)
        try:
            for body in ({"instances": [1.0, 2.0]}, {"instances": [5.0]}, {"inputs": [3.0]}):
                r = requests.post(f"{server.url}/v1/models/two_versions/labels/stable:predict", json=body, timeout=30)
                assert r.status_code == 200
            with grpc.insecure_channel(server.target) as channel:  # logged as protobuf: not replayed
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                    predict_request("half_plus_two", {"x": np.array([[3.0]], np.float32)}), timeout=30)
            wait_for(lambda: len(sink.events) == 8, what="8 events", timeout=30)
            logged = events.read_text()

            assert cli.main(["replay", str(events), "--url", server.url, "--label", "canary"]) == 0
            assert capsys.readouterr().out.split() == ["sent", "3", "ok", "3", "failed", "0", "same", "0",
                                                       "different", "3", "without", "0", "skipped", "1"]
            (tmp_path / "logged.jsonl").write_text(logged)
            assert cli.main(["replay", str(tmp_path / "logged.jsonl"), "--url", server.url, "--version", "1",
                             "--limit", "2"]) == 0
            assert capsys.readouterr().out.split()[:10] == ["sent", "2", "ok", "2", "failed", "0", "same", "2",
                                                            "different", "0"]
        finally:
            server.stop()
