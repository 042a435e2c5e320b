"""What crosses between a front-end worker and the model process, and how.

Each worker has one shared memory region (a memfd the model process creates and the worker
inherits), in two halves: requests (the worker allocates, writes its input tensors, and frees a
block when the answer comes back) and answers (the model process allocates and writes the
outputs; the worker hands the freed blocks back on its next message). Both halves are `Arena`s:
blocks are taken in ring order and freed in any order, so allocating is a few comparisons and
memory never fragments. A tensor of at least `SHM_MIN_BYTES` travels as (offset, size) and is
read as a numpy view on the region (no copy: the batcher's merge is the one memcpy into the
batch); a smaller one, a string tensor, or one that does not fit the free part of the region
travels in the message itself.

Messages are length-prefixed `marshal` tuples on a UNIX stream socket (marshal: tuples of ints,
strings and bytes in about a microsecond each way, no pickle, no code objects accepted by
`unpack`); a socket read wakes the other side's event loop, which costs microseconds.
"""

from __future__ import annotations

import contextlib
import marshal
import mmap
import os
import struct
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

SHM_MIN_BYTES = 4096  # below this a tensor is copied into the message (cheaper than a block)
ALIGN = 64
_LEN = struct.Struct("<I")

# message kinds
RUN = 1  # worker -> model: (RUN, id, model, version, signature, label, route_key, rows, deadline, tensors, frees)
ANSWER = 2  # model -> worker: (ANSWER, id, code, outputs | message, times)
STATE = 3  # model -> worker: (STATE, snapshot bytes)
CALL = 4  # either way: (CALL, id, op, pickled args)
REPLY = 5  # either way: (REPLY, id, ok, pickled result | message)
FREE = 6  # worker -> model: (FREE, frees)
CANCEL = 7  # worker -> model: (CANCEL, id): the request is gone (its client left); drop it if still queued

# A tensor in a message: (name, dtype str, shape, offset, data): offset >= 0: `data` bytes at that
# offset of the sender's half; offset -1: `data` is the bytes; offset -2: a string tensor, `data`
# its elements as a list.
Wire = tuple[str, str, tuple[int, ...], int, object]


class Arena:
    """Blocks of one half of a region, allocated in ring order, freed in any order."""

    __slots__ = ("base", "size", "_blocks", "_by_start")

    def __init__(self, base: int, size: int) -> None:
        self.base = base  # offset of this half in the region
        self.size = size
        self._blocks: deque[list[int]] = deque()  # [start, end, freed] in allocation order
        self._by_start: dict[int, list[int]] = {}

    def alloc(self, n: int) -> int | None:
        """Offset (within the region) of a new block of `n` bytes, or None when it does not fit."""
        n = (n + ALIGN - 1) & ~(ALIGN - 1)
        blocks = self._blocks
        if not blocks:
            start = 0 if n <= self.size else -1
        else:
            first, last = blocks[0], blocks[-1]
            if last[0] >= first[0]:  # not wrapped: free space is [last.end, size) and [0, first.start)
                start = last[1] if last[1] + n <= self.size else 0 if n <= first[0] else -1
            else:  # wrapped: free space is [last.end, first.start)
                start = last[1] if last[1] + n <= first[0] else -1
        if start < 0:
            return None
        block = [start, start + n, 0]
        blocks.append(block)
        self._by_start[start] = block
        return self.base + start

    def free(self, offset: int) -> None:
        block = self._by_start.pop(offset - self.base, None)
        if block is None:
            return
        block[2] = 1
        blocks = self._blocks
        while blocks and blocks[0][2]:
            blocks.popleft()

    @property
    def used(self) -> int:
        return len(self._blocks)


class Region:
    """A worker's shared memory: a memfd mapped here, requests in the first half."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        if fd is None:
            fd = os.memfd_create("modelserver-worker", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        self.fd = fd
        self.map = mmap.mmap(fd, size)
        self.view = memoryview(self.map)
        half = size // 2
        self.requests = Arena(0, half)
        self.answers = Arena(half, size - half)

    def close(self) -> None:
        """Closes the descriptor; the mapping goes when the last numpy view on it does."""
        fd, self.fd = self.fd, -1
        if fd >= 0:  # once: a descriptor number closed twice may be someone else's by then
            with contextlib.suppress(OSError):
                os.close(fd)


def put(arena: Arena, view: memoryview, name: str, arr: np.ndarray, frees: list[int]) -> Wire:
    """One tensor for a message: in the region when large and there is room (its offset appended
    to `frees`, the blocks to release once the other side is done), else inline."""
    if arr.dtype.kind == "O":
        return (name, "O", arr.shape, -2, arr.ravel().tolist())
    nbytes = arr.nbytes
    if nbytes >= SHM_MIN_BYTES:
        off = arena.alloc(nbytes)
        if off is not None:
            dst = np.frombuffer(view, dtype=arr.dtype, count=arr.size, offset=off).reshape(arr.shape)
            np.copyto(dst, arr, casting="no")
            frees.append(off)
            return (name, arr.dtype.str, arr.shape, off, nbytes)
    return (name, arr.dtype.str, arr.shape, -1, np.ascontiguousarray(arr).tobytes())


def get(view: memoryview, wire: Wire) -> np.ndarray:
    """The array a message's tensor describes: a view on the region, or on the message's bytes."""
    _name, dtype, shape, off, data = wire
    payload: Any = data
    if off == -2:
        out = np.empty(len(payload), dtype=np.object_)
        out[:] = payload
        return out.reshape(shape)
    if off == -1:
        return np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape)
    dt = np.dtype(dtype)
    return np.frombuffer(view, dtype=dt, count=int(payload) // dt.itemsize, offset=off).reshape(shape)


def frame(msg: tuple[Any, ...]) -> bytes:
    body = marshal.dumps(msg)
    return _LEN.pack(len(body)) + body


class Frames:
    """Splits a byte stream into messages."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple]:  # type: ignore[type-arg]
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if end - pos - 4 < n:
                    break
                yield marshal.loads(memoryview(buf)[pos + 4:pos + 4 + n])
                pos += 4 + n
        finally:
            del buf[:pos]
