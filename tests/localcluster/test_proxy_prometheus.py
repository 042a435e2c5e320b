"""Services and Prometheus targets: endpoint selection (pure, table-driven), the TCP proxy and the
Service-name HTTP proxy over real loopback sockets, scrape targets and config."""

from __future__ import annotations

import asyncio
import json

import pytest
from localcluster import dnsproxy, prometheus
from localcluster.objects import HOST_PORTS_ANNOTATION
from localcluster.proxy import Balancer, PortListener


def slices(*endpoints: tuple[int, bool, bool, bool]) -> list[dict]:
    """One slice per endpoint: (port, ready, serving, terminating)."""
    return [{"ports": [{"name": "http", "port": port}],
             "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": r, "serving": s, "terminating": t}}]}
            for port, r, s, t in endpoints]


@pytest.mark.parametrize(("eps", "picks"), [
    ([(1, True, True, False), (2, True, True, False)], [1, 2, 1, 2]),            # round-robin over ready ones
    ([(1, True, True, False), (2, False, False, False)], [1, 1, 1]),             # not ready: skipped
    ([(1, False, True, True), (2, True, True, False)], [2, 2]),                   # terminating: skipped while others are ready
    ([(1, False, True, True)], [1, 1]),                                          # only terminating ones left: kube-proxy falls back
    ([(1, False, False, True), (2, False, False, False)], [None]),               # nothing serving: reject
    ([], [None]),
])
def test_balancer(eps: list, picks: list) -> None:
    b = Balancer.from_slices(slices(*eps), "http")
    assert [(p[1] if (p := b.pick()) else None) for _ in picks] == picks


async def _backend(name: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(name + b":" + data)
        await writer.drain()
        writer.close()
    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _ask(port: int, payload: bytes = b"hi") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


async def test_the_proxy_spreads_connections_and_follows_endpoints() -> None:
    a, b = await _backend(b"a"), await _backend(b"b")
    pa, pb = (s.sockets[0].getsockname()[1] for s in (a, b))
    balancer = Balancer.from_slices(slices((pa, True, True, False), (pb, True, True, False)), "http")
    listener = PortListener(balancer)
    port = await listener.start()
    try:
        assert sorted([await _ask(port), await _ask(port)]) == [b"a:hi", b"b:hi"]
        balancer.update(slices((pa, True, True, False), (pb, False, True, True)), "http")
        assert [await _ask(port) for _ in range(3)] == [b"a:hi"] * 3
        balancer.update([], "http")
        assert await _ask(port) in (b"", b"<reset>")  # no endpoint: the connection is reset, as kube-proxy rejects it
    finally:
        await listener.close()
        for s in (a, b):
            s.close()
            await s.wait_closed()


@pytest.mark.parametrize(("host", "expected"), [
    ("web.ml.svc", ("ml", "web")), ("web.ml.svc.cluster.local", ("ml", "web")), ("web.ml", ("ml", "web")),
    ("web", ("default", "web")), ("Web.ML.svc.", ("ml", "web")), ("127.0.0.1", None), ("a.b.c.d", None),
])
def test_service_names(host: str, expected: tuple[str, str] | None) -> None:
    assert dnsproxy.parse_target(host) == expected


@pytest.mark.parametrize(("head", "expected"), [
    (b"GET http://web.ml.svc:8501/v1/models/m HTTP/1.1\r\nHost: web.ml.svc:8501\r\n\r\n",
     ("GET", "web.ml.svc", 8501, b"GET /v1/models/m HTTP/1.1\r\nHost: web.ml.svc:8501\r\n\r\n")),
    (b"CONNECT web.ml.svc:8500 HTTP/1.1\r\n\r\n", ("CONNECT", "web.ml.svc", 8500, b"")),
    (b"GET http://web HTTP/1.1\r\n\r\n", ("GET", "web", 80, b"GET / HTTP/1.1\r\n\r\n")),
    (b"GET /relative HTTP/1.1\r\n\r\n", None), (b"garbage\r\n\r\n", None),
])
def test_proxy_request_heads(head: bytes, expected: tuple | None) -> None:
    assert dnsproxy.parse_request_head(head) == expected


async def test_service_names_reach_the_service_port() -> None:
    backend = await _backend(b"svc")
    port = backend.sockets[0].getsockname()[1]
    proxy = dnsproxy.DnsProxy(lambda ns, name, p: port if (ns, name, p) == ("ml", "web", 8501) else None)
    await proxy.start()
    try:
        reply = await _ask(proxy.port, b"GET http://web.ml.svc:8501/x HTTP/1.1\r\n\r\n")
        assert reply == b"svc:GET /x HTTP/1.1\r\n\r\n"
        reply = await _ask(proxy.port, b"GET http://nope.ml.svc:8501/x HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 502") and b"not a Service port" in reply
    finally:
        await proxy.close()
        backend.close()
        await backend.wait_closed()


def scrape_pod(**over: object) -> dict:
    p = {"metadata": {"name": "hp2-abc-x", "namespace": "ml", "labels": {"app.kubernetes.io/name": "model-server",
                                                                       "serving.modeldeploy.io/model-deployment": "hp2"},
                      "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8501",
                                      "prometheus.io/path": "/monitoring/prometheus/metrics",
                                      HOST_PORTS_ANNOTATION: json.dumps({"8500": 41000, "8501": 41001})}},
         "spec": {"containers": [{"name": "model-server", "ports": [{"name": "grpc", "containerPort": 8500}, {"name": "http", "containerPort": 8501}]}]},
         "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        if value is None:
            p[section].pop(field, None) if field else p.pop(section)
        else:
            p[section][field] = value
    return p


@pytest.mark.parametrize(("pod", "target"), [
    (scrape_pod(), "127.0.0.1:41001"),
    (scrape_pod(status__conditions=[{"type": "Ready", "status": "False"}]), None),   # not ready
    (scrape_pod(metadata__deletionTimestamp="t"), None),                            # terminating
    (scrape_pod(metadata__annotations={"prometheus.io/scrape": "false"}), None),     # not marked
    (scrape_pod(metadata__annotations={"prometheus.io/scrape": "true", HOST_PORTS_ANNOTATION: "{}"}), None),  # no host port yet
])
def test_scrape_targets(pod: dict, target: str | None) -> None:
    found = prometheus.scrape_targets([pod])
    assert [t["targets"][0] for t in found] == ([target] if target else [])


def test_scrape_target_labels_and_config(tmp_path: object) -> None:
    (t,) = prometheus.scrape_targets([scrape_pod()])
    assert t["labels"] == {"app_kubernetes_io_name": "model-server", "serving_modeldeploy_io_model_deployment": "hp2",
                           "namespace": "ml", "pod": "hp2-abc-x", "container": "model-server",
                           "__metrics_path__": "/monitoring/prometheus/metrics", "__scheme__": "http"}
    cfg = prometheus.config(tmp_path / "t.json", 1.0, {"operator": "127.0.0.1:1"})  # type: ignore[operator]
    assert cfg["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["kubernetes-pods", "operator"]
