"""One end of a worker's UNIX socket: framed messages, and calls with replies for the rare
control operations (a reload, a metrics scrape, a profile) whose arguments are pickled."""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
from typing import Any

import grpc

from modelserver.core.errors import ServingError
from modelserver.workers.shm import CALL, REPLY, Frames, frame

log = logging.getLogger("modelserver.workers")


class Peer(asyncio.Protocol):
    """Subclasses handle their message kinds in `received(msg)` and answer calls in `handle(op, arg)`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._frames = Frames()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._replying: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._turn_open = False  # a message went out this turn: the next ones are queued
        self.closed = self._loop.create_future()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for msg in self._frames.feed(data):
            kind = msg[0]
            if kind == CALL:
                task = asyncio.ensure_future(self._reply(msg[1], msg[2], msg[3]))
                self._replying.add(task)  # (the loop keeps only a weak reference to a task)
                task.add_done_callback(self._replying.discard)
            elif kind == REPLY:
                fut = self._calls.pop(msg[1], None)
                if fut is not None and not fut.done():
                    if msg[2]:
                        fut.set_result(pickle.loads(msg[3]))  # noqa: S301 - our own processes
                    else:
                        code, message = msg[3]
                        fut.set_exception(ServingError(grpc.StatusCode[code], message))
            else:
                self.received(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(ServingError(grpc.StatusCode.UNAVAILABLE, "the model process link closed"))
        self._calls.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.lost()

    # -- to override
    def received(self, msg: tuple[Any, ...]) -> None:
        raise NotImplementedError

    async def handle(self, op: str, arg: Any) -> Any:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"unknown operation {op}")

    def lost(self) -> None:
        """The other side is gone."""

    # -- sending
    def send(self, msg: tuple[Any, ...]) -> None:
        """Sends a message: at once when it is the first in this turn of the event loop (a lone
        request waits for nothing), else queued and written with the others of the turn in one
        system call when the turn ends (under load, many requests share a write and a wake-up)."""
        t = self.transport
        if t is None:
            return
        if self._turn_open:
            out = self._out
            out.append(frame(msg))
            if len(out) == 1:
                self._loop.call_soon(self._flush)
            return
        t.write(frame(msg))
        self._turn_open = True
        self._loop.call_soon(self._end_turn)

    def _end_turn(self) -> None:
        if not self._out:
            self._turn_open = False

    def _flush(self) -> None:
        self._turn_open = False
        out, self._out = self._out, []
        t = self.transport
        if t is not None and out:
            t.write(b"".join(out) if len(out) > 1 else out[0])

    async def call(self, op: str, arg: Any = None, timeout: float | None = None) -> Any:
        if self.transport is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "the model process link is closed")
        cid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[cid] = fut
        self.send((CALL, cid, op, pickle.dumps(arg, protocol=pickle.HIGHEST_PROTOCOL)))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._calls.pop(cid, None)

    async def _reply(self, cid: int, op: str, data: bytes) -> None:
        try:
            result = await self.handle(op, pickle.loads(data))  # noqa: S301 - our own processes
            self.send((REPLY, cid, True, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)))
        except ServingError as exc:
            self.send((REPLY, cid, False, (exc.code.name, exc.message)))
        except Exception as exc:  # a bug: the caller gets INTERNAL, the process goes on
            log.exception("%s failed", op)
            self.send((REPLY, cid, False, ("INTERNAL", f"{type(exc).__name__}: {exc}")))
