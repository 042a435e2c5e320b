"""`kubectl port-forward` to a pod: the `portforward.k8s.io` protocol over SPDY/3.1, in a WebSocket.

kubectl (1.31 and later) opens `GET /api/v1/namespaces/N/pods/P/portforward` as a WebSocket with
the subprotocol `SPDY/3.1+portforward.k8s.io` and speaks SPDY inside its binary messages, as it
would to the kubelet (kube-apiserver tunnels it there). For each connection to a local port kubectl
opens two SPDY streams with headers `streamType: error|data`, `port: <container port>` and the same
`requestID`; the server answers each with SYN_REPLY, copies the data stream to and from the pod's
port, and writes a failure, as text, to the error stream. Here the pod's container port is its
host port on 127.0.0.1 (the `host-ports` annotation); only declared container ports can be
forwarded, since pods share this machine's network. SPDY's header blocks are zlib streams with the
protocol's dictionary; flow control is not used (kubectl's SPDY library ignores it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

log = logging.getLogger("localcluster.portforward")
PROTOCOL = "SPDY/3.1+portforward.k8s.io"
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
CHUNK = 32 * 1024

_WORDS = (  # '|' between words: one of them is "200 OK"
    "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|accept-language|"
    "accept-ranges|age|allow|authorization|cache-control|connection|content-base|content-encoding|"
    "content-language|content-length|content-location|content-md5|content-range|content-type|date|etag|"
    "expect|expires|from|host|if-match|if-modified-since|if-none-match|if-range|if-unmodified-since|"
    "last-modified|location|max-forwards|pragma|proxy-authenticate|proxy-authorization|range|referer|"
    "retry-after|server|te|trailer|transfer-encoding|upgrade|user-agent|vary|via|warning|"
    "www-authenticate|method|get|status|200 OK|version|HTTP/1.1|url|public|set-cookie|keep-alive|origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# SPDY/3's header compression dictionary (the spec's section 2.6.10.1): length-prefixed words, then text.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS.split("|")) + _TAIL.encode()


def control_frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | 3, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


def parse_header_block(block: bytes) -> dict[str, str]:
    """SPDY/3's name/value block (decompressed): a count, then length-prefixed names and values."""
    (count,), pos, out = struct.unpack_from(">I", block), 4, {}
    for _ in range(count):
        (n,) = struct.unpack_from(">I", block, pos)
        name = block[pos + 4:pos + 4 + n].decode().lower()
        pos += 4 + n
        (n,) = struct.unpack_from(">I", block, pos)
        out[name] = block[pos + 4:pos + 4 + n].decode()
        pos += 4 + n
    return out


@dataclass
class Forward:
    """One forwarded connection: kubectl's error and data streams for one requestID, and the pod socket."""

    port: int
    error_stream: int = 0
    data_stream: int = 0
    writer: asyncio.StreamWriter | None = None
    pump: asyncio.Task[None] | None = None
    pending: list[bytes] = field(default_factory=list)  # data that came before the pod connection


class Session:
    """The server side of one SPDY connection (one `kubectl port-forward`), fed with the bytes kubectl sends."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], host_ports: dict[int, int], pod: str):
        self.send, self.host_ports, self.pod = send, host_ports, pod
        self._buffer = b""
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._forwards: dict[str, Forward] = {}
        self._by_stream: dict[int, Forward] = {}

    async def feed(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 8:
            (length,) = struct.unpack_from(">I", self._buffer, 4)
            length &= 0xFFFFFF
            if len(self._buffer) < 8 + length:
                return
            frame, self._buffer = self._buffer[:8 + length], self._buffer[8 + length:]
            await self._frame(frame)

    async def _frame(self, frame: bytes) -> None:
        first, flags_length = struct.unpack_from(">II", frame)
        flags, payload = flags_length >> 24, frame[8:]
        if not first & 0x80000000:  # a data frame
            fwd = self._by_stream.get(first & 0x7FFFFFFF)
            if fwd is not None and fwd.data_stream == first & 0x7FFFFFFF:
                self._to_pod(fwd, payload, bool(flags & FLAG_FIN))
            return
        kind = first & 0xFFFF
        if kind == SYN_STREAM:
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = parse_header_block(self._inflate.decompress(payload[10:]))
            await self._stream(stream_id, headers)
        elif kind == PING:
            await self.send(control_frame(PING, payload))
        elif kind == RST_STREAM:
            fwd = self._by_stream.get(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
            if fwd is not None:
                self._drop(fwd)
        # SETTINGS, WINDOW_UPDATE, HEADERS and GOAWAY ask nothing of a port-forward server

    async def _stream(self, stream_id: int, headers: dict[str, str]) -> None:
        block = self._deflate.compress(struct.pack(">I", 0)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        await self.send(control_frame(SYN_REPLY, struct.pack(">I", stream_id) + block))
        key = headers.get("requestid", "")
        fwd = self._forwards.setdefault(key, Forward(int(headers.get("port") or 0)))
        self._by_stream[stream_id] = fwd
        if headers.get("streamtype") == "error":
            fwd.error_stream = stream_id
        elif headers.get("streamtype") == "data":
            fwd.data_stream = stream_id
            fwd.pump = asyncio.create_task(self._connect(fwd))

    async def _connect(self, fwd: Forward) -> None:
        host_port = self.host_ports.get(fwd.port)
        try:
            if host_port is None:
                raise OSError(f"port {fwd.port} is not a declared containerPort of pod {self.pod} (the local cluster "
                              f"forwards declared ports only: {sorted(self.host_ports) or 'none'})")
            reader, fwd.writer = await asyncio.open_connection("127.0.0.1", host_port)
        except OSError as exc:
            await self._fail(fwd, f"error forwarding port {fwd.port} to pod {self.pod}: {exc}")
            return
        for chunk in fwd.pending:
            fwd.writer.write(chunk) if chunk else fwd.writer.write_eof()
        fwd.pending.clear()
        try:
            while chunk := await reader.read(CHUNK):
                await self.send(data_frame(fwd.data_stream, chunk))
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.info("port-forward %s:%d: %s", self.pod, fwd.port, exc)
        await self._finish(fwd)

    def _to_pod(self, fwd: Forward, data: bytes, fin: bool) -> None:
        chunks = [data] if data else []
        chunks += [b""] if fin else []  # b"": kubectl closed its side
        if fwd.writer is None:
            fwd.pending += chunks
            return
        for chunk in chunks:
            with contextlib.suppress(OSError, RuntimeError):
                fwd.writer.write(chunk) if chunk else fwd.writer.write_eof()

    async def _fail(self, fwd: Forward, message: str) -> None:
        if fwd.error_stream:
            await self.send(data_frame(fwd.error_stream, message.encode()))
        await self._finish(fwd)

    async def _finish(self, fwd: Forward) -> None:
        """The pod's side ended: both streams end (FIN), as the kubelet closes them."""
        for stream_id in (fwd.data_stream, fwd.error_stream):
            if stream_id:
                await self.send(data_frame(stream_id, b"", fin=True))
        self._drop(fwd, pump=False)

    def _drop(self, fwd: Forward, pump: bool = True) -> None:
        if fwd.writer is not None:
            fwd.writer.close()
        if pump and fwd.pump is not None:
            fwd.pump.cancel()
        for stream_id in (fwd.data_stream, fwd.error_stream):
            self._by_stream.pop(stream_id, None)
        self._forwards = {k: v for k, v in self._forwards.items() if v is not fwd}

    async def close(self) -> None:
        for fwd in list(self._forwards.values()):
            self._drop(fwd)


async def serve(request: web.Request, host_ports: dict[int, int], pod: str) -> web.StreamResponse:
    """Upgrades the request to the WebSocket kubectl asks for and serves port-forwards until it closes."""
    ws = web.WebSocketResponse(protocols=[PROTOCOL], max_msg_size=0)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text=f"port-forward needs a WebSocket with the subprotocol {PROTOCOL} "
                                 "(kubectl 1.31 or later; KUBECTL_PORT_FORWARD_WEBSOCKETS=false is not supported here)")
    await ws.prepare(request)
    session = Session(ws.send_bytes, host_ports, pod)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.feed(msg.data)
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
    finally:
        await session.close()
    return ws
