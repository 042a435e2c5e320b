"""The operator's reads of what it does not control end at a time limit and a size cap
(modeldeploy.clients.bounded, used by clients.prometheus and clients.servers): a server that drips
one byte a second (in the status line, or in the body) is given up at the limit, an answer larger
than the cap is refused while reading, and each is an answer with its reason, never an exception.

The servers here are raw sockets on loopback, as a hostile Prometheus or server image would
answer; each stops when the test does."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from modeldeploy.clients import bounded, prometheus, servers
from modeldeploy.decisions.records import Endpoint

T = TypeVar("T")
PROM_JSON = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[0,"42"]}]}}'


class Hostile(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.stop = threading.Event()
        self.sent = 0  # body bytes written to the socket

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Hostile = self.server  # type: ignore[assignment]
        self.request.settimeout(5)
        try:
            self.request.recv(65536)  # the request (small: one read)
            {"ok": self.ok, "drip_status": self.drip_status, "drip_body": self.drip_body, "declared_huge": self.declared_huge,
             "endless": self.endless}[server.mode](server)
        except OSError:
            pass  # the client went away: what these tests want

    def ok(self, server: Hostile) -> None:
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(PROM_JSON), PROM_JSON))

    def drip_status(self, server: Hostile) -> None:
        for b in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 10_000:
            if server.stop.wait(1.0):
                return
            self.request.sendall(bytes([b]))

    def drip_body(self, server: Hostile) -> None:
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{")
        while not server.stop.wait(1.0):
            self.request.sendall(b" ")
            server.sent += 1

    def declared_huge(self, server: Hostile) -> None:
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 600000000\r\n\r\n")
        self.endless_body(server)

    def endless(self, server: Hostile) -> None:
        self.request.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        while not server.stop.is_set():
            self.request.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            server.sent += len(chunk)

    def endless_body(self, server: Hostile) -> None:
        chunk = b"x" * 65536
        while not server.stop.is_set():
            self.request.sendall(chunk)
            server.sent += len(chunk)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    srv = Hostile()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    started = time.monotonic()
    out = fn()
    return out, time.monotonic() - started


def test_a_plain_answer_reads_as_before(hostile: Hostile) -> None:
    assert prometheus.instant(hostile.url, "up").value == 42.0


@pytest.mark.parametrize("mode", ["drip_status", "drip_body"])
def test_a_drip_ends_at_the_time_limit(hostile: Hostile, mode: str) -> None:
    """urllib's timeout is per socket read: one byte a second never trips it. The limit is the whole
    request's (checked here against three times the limit, as the point is that it ends at all)."""
    hostile.mode = mode
    answer, took = timed(lambda: prometheus.instant(hostile.url, "up", timeout=1.0))
    assert answer.value is None and "no complete answer within 1 s" in answer.problem
    assert took < 3.0, took
    (report,), took = timed(lambda: servers.fetch_reports([Endpoint("p", hostile.url)], "t", "m", timeout=1.0))
    assert "within 1 s" in report.unreachable and took < 3.0
    assert servers.fetch_status(hostile.url, "m", timeout=1.0) is None


@pytest.mark.parametrize("mode", ["declared_huge", "endless"])
def test_an_answer_larger_than_the_cap_is_refused_while_reading(hostile: Hostile, mode: str) -> None:
    hostile.mode = mode
    answer = prometheus.instant(hostile.url, "up", timeout=10.0)
    assert answer.value is None and f"more than the {prometheus.MAX_BYTES} bytes allowed" in answer.problem
    (pushed,) = servers.push([Endpoint("p", hostile.url)], "t", {"generation": 1}, timeout=10.0)
    assert "bytes allowed" in pushed.error
    with pytest.raises(bounded.LimitExceeded):
        bounded.request("GET", hostile.url, timeout=10.0, max_bytes=1000)


def test_nothing_listening_and_bad_urls_are_errors_not_hangs() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        bounded.request("GET", f"http://127.0.0.1:{port}/", timeout=2.0, max_bytes=10)
    with pytest.raises(ValueError):
        bounded.request("GET", "file:///etc/passwd", timeout=2.0, max_bytes=10)
