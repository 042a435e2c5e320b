"""TCP plumbing shared by the Service proxy (`proxy`) and the Service-name HTTP proxy (`dnsproxy`).

`LoopbackServer` listens on 127.0.0.1 and runs a handler for each accepted connection, keeping
track of them so that `close` ends every connection still open (not only the listening socket);
`splice` copies two connections into each other until both directions have ended; `reset` closes
a connection with a TCP RST, as kube-proxy rejects a connection to a Service without endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopbackServer:
    """A TCP server on 127.0.0.1 whose connections `close` ends too."""

    def __init__(self, handle: Handler):
        self.handle = handle
        self.server: asyncio.Server | None = None
        self.port = 0
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        """Listen on `port` (0: one the OS picks; if `port` is taken now, any free one); the port."""
        try:
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        except OSError:
            if not port:
                raise
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            writer.close()
        finally:
            self._connections.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        for t in list(self._connections):
            t.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a RST (SO_LINGER 0) rather than a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                 b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    """Copy both ways until both directions have ended (half-closes pass through)."""
    try:
        await asyncio.gather(_pipe(a_reader, b_writer), _pipe(b_reader, a_writer))
    finally:
        for w in (a_writer, b_writer):
            w.close()
