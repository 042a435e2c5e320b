"""One HTTP request with a size cap and a total time limit: how the operator reads what it does not
control (a Prometheus a ModelDeployment names, the model servers' answers).

urllib's `timeout` bounds each socket operation, not the request: a server that sends one byte a
second never trips it, and `resp.read()` reads whatever size the server sends. `request` bounds
both: the whole exchange (connect, headers, body) ends at `timeout` seconds, and the body is read
in pieces (`read1`) up to `max_bytes`; past either limit it raises `LimitExceeded` (an `OSError`,
so callers that treat a failed request as an answer need no new case). A watchdog timer shuts the
socket down at the deadline, which also ends a drip inside the status line or the headers, where
http.client reads on its own.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Mapping

CHUNK = 64 * 1024


class LimitExceeded(OSError):
    """The answer was larger than the cap, or did not end within the time limit."""


def _shutdown(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def request(method: str, url: str, *, timeout: float, max_bytes: int, body: bytes | None = None,
            headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of one request to an http(s) URL; `LimitExceeded` past `timeout` seconds in
    all or `max_bytes` of body, `OSError` when it cannot connect, `ValueError` for a URL that is not
    http(s)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    deadline = time.monotonic() + timeout
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    watchdog = threading.Timer(timeout, _shutdown, (conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise LimitExceeded(f"the answer is more than the {max_bytes} bytes allowed ({int(declared)} declared)")
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LimitExceeded(f"no complete answer within {timeout:g} s")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read1(min(CHUNK, max_bytes + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise LimitExceeded(f"the answer is more than the {max_bytes} bytes allowed")
                chunks.append(chunk)
            if time.monotonic() >= deadline:  # the watchdog ended it
                raise LimitExceeded(f"no complete answer within {timeout:g} s")
            if declared is not None and declared.isdigit() and size < int(declared):
                raise OSError(f"the answer ended after {size} of its {int(declared)} bytes")
            return resp.status, b"".join(chunks)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, LimitExceeded):
                raise
            if time.monotonic() >= deadline - 0.001:
                raise LimitExceeded(f"no complete answer within {timeout:g} s") from exc
            if isinstance(exc, OSError):
                raise
            raise OSError(f"bad HTTP answer: {exc!r}") from exc
    finally:
        watchdog.cancel()
        conn.close()
