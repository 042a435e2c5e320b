"""A small HTTP/1.1 POST client over one kept-alive connection, for payload logging's sender
thread: it costs a few tens of microseconds of CPU per event where http.client, which parses
every answer's headers with the email package, costs several times that, and that CPU is taken
from the requests the server is answering meanwhile (one GIL).

It reads an answer's status, its body by Content-Length or chunked encoding (and discards it), and
`Connection: close`; anything it cannot read is a `SinkError` (an OSError), and the connection is
dropped. http and https (the system's trust store).
"""

from __future__ import annotations

import socket
import ssl
import urllib.parse

MAX_HEAD = 64 << 10  # an answer's status line and headers, at most
MAX_BODY = 1 << 20  # an answer's body, at most (read and discarded)


class SinkError(OSError):
    """An answer that is not HTTP/1.x, or too large."""


class KeepAliveClient:
    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.netloc = parts.netloc
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock

    def post(self, headers: dict[str, str], body: bytes) -> int:
        """POSTs `body` with `headers` to the URL's path; the answer's status. Retries once on a
        fresh connection when a kept-alive one turns out closed; raises OSError otherwise."""
        head = [f"POST {self.path} HTTP/1.1\r\nHost: {self.netloc}\r\nContent-Length: {len(body)}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append("\r\n")
        data = "".join(head).encode("latin-1") + body
        for attempt in range(2):
            reused = self._sock is not None
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(data)
                return self._answer()
            except ValueError as exc:  # a malformed length or chunk size
                self.close()
                raise SinkError(f"an answer that does not parse: {exc}") from None
            except OSError:
                self.close()
                if attempt or not reused:
                    raise
        raise AssertionError("unreachable")

    # -- reading the answer --

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the sink closed the connection")
        self._buf += chunk

    def _line(self, limit: int = MAX_HEAD) -> bytes:
        while (i := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > limit:
                raise SinkError("an answer's line is too long")
            self._fill()
        line, self._buf = self._buf[:i], self._buf[i + 2:]
        return line

    def _skip(self, n: int) -> None:
        while len(self._buf) < n:
            self._fill()
        self._buf = self._buf[n:]

    def _answer(self) -> int:
        status_line = self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise SinkError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        status = int(parts[1])
        length, chunked, close = 0, False, parts[0] == b"HTTP/1.0"
        size = 0
        while line := self._line():
            size += len(line)
            if size > MAX_HEAD:
                raise SinkError("an answer's headers are too large")
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        if chunked:
            total = 0
            while (n := int(self._line().split(b";")[0] or b"0", 16)) > 0:
                total += n
                if total > MAX_BODY:
                    raise SinkError("an answer's body is too large")
                self._skip(n + 2)
            while self._line():  # trailers
                pass
        elif 0 <= length <= MAX_BODY:
            self._skip(length)
        else:
            raise SinkError("an answer's body is too large or of unknown length")
        if close:
            self.close()
        return status
