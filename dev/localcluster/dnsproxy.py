"""Cluster DNS names for HTTP clients: an HTTP proxy on 127.0.0.1 that resolves Service names.

In a cluster, `http://half-plus-two.ml.svc:8501` reaches the Service; here there is no cluster DNS,
so processes that should use such names (the operator asks each ModelDeployment's Service for its
model status at `http://{name}.{namespace}.svc:8501`) get `http_proxy` pointing at this proxy. It
accepts absolute-form requests (`GET http://name.ns.svc:8501/path HTTP/1.1`) and `CONNECT
name.ns.svc:8500` tunnels (what gRPC clients send through a proxy), maps `<service>.<namespace>
[.svc[.cluster.local]]` and a Service port to that port's local listener, and splices the
connection there: one upstream per client connection (urllib, which the operator uses, sends
`Connection: close`). Unknown names get 502 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable

from localcluster.connections import LoopbackServer, splice

# (namespace, service, port number) -> local port, None if there is no such Service port
Resolve = Callable[[str, str, int], int | None]
_HOST = re.compile(r"^(?P<svc>[a-z0-9-]+)(?:\.(?P<ns>[a-z0-9-]+))?(?:\.svc(?:\.cluster\.local)?)?\.?$")


def parse_target(host: str, default_namespace: str = "default") -> tuple[str, str] | None:
    """'name.ns.svc' -> (ns, name); None for names that are not Service names."""
    m = _HOST.match(host.lower())
    if not m:
        return None
    return (m.group("ns") or default_namespace, m.group("svc"))


def parse_request_head(head: bytes) -> tuple[str, str, int, bytes] | None:
    """(method, host, port, the head rewritten for the upstream) of a proxy request, None if malformed."""
    first, _, rest = head.partition(b"\r\n")
    parts = first.decode("latin-1").split(" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return (method, host, int(port), b"") if port.isdigit() else None
    m = re.match(r"^http://([^/:]+)(?::(\d+))?(/.*)?$", target)
    if not m:
        return None
    path = m.group(3) or "/"
    return method, m.group(1), int(m.group(2) or 80), f"{method} {path} {version}\r\n".encode() + rest


class DnsProxy:
    """The proxy: `start` it, point clients' `http_proxy` at `url`, `close` it."""

    def __init__(self, resolve: Resolve):
        self.resolve = resolve
        self.server = LoopbackServer(self._serve)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> int:
        return await self.server.start()

    async def close(self) -> None:
        await self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        parsed = parse_request_head(head)
        if parsed is None:
            return await _answer(writer, 400, "malformed proxy request")
        method, host, port, upstream_head = parsed
        target = parse_target(host)
        local = self.resolve(target[0], target[1], port) if target else None
        if local is None:
            return await _answer(writer, 502, f"{host}:{port} is not a Service port of the local cluster")
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", local)
        except OSError as exc:
            return await _answer(writer, 502, f"{host}:{port}: {exc}")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(upstream_head)
        await splice(reader, writer, up_reader, up_writer)


async def _answer(writer: asyncio.StreamWriter, code: int, message: str) -> None:
    body = message.encode() + b"\n"
    reason = {400: "Bad Request", 502: "Bad Gateway"}[code]
    writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
