"""The pure parts of front-end workers: the shared memory arena (ring order, frees in any order,
wrap-around, full), tensors through a region and through a message, and message framing across
arbitrary read boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from modelserver.workers.shm import ALIGN, SHM_MIN_BYTES, Arena, Frames, Region, frame, get, put


def test_the_arena_allocates_in_ring_order_and_frees_in_any_order() -> None:
    a = Arena(1000, 8 * ALIGN)
    offs = [a.alloc(2 * ALIGN) for _ in range(4)]
    assert offs == [1000, 1000 + 2 * ALIGN, 1000 + 4 * ALIGN, 1000 + 6 * ALIGN]
    assert a.alloc(1) is None  # full
    a.free(offs[1])  # out of order: nothing is reclaimed until the oldest goes
    assert a.alloc(1) is None
    a.free(offs[0])  # the two oldest go: room at the start (wrap-around)
    assert a.alloc(4 * ALIGN) == 1000
    assert a.alloc(1) is None
    for off in (offs[2], offs[3], 1000):
        a.free(off)
    assert a.used == 0
    assert a.alloc(8 * ALIGN) == 1000  # empty: the whole arena again
    a.free(1000)
    assert a.alloc(8 * ALIGN + 1) is None  # larger than the arena
    a.free(12345)  # an unknown offset is ignored


def test_a_wrapped_arena_fills_the_gap_before_its_oldest_block() -> None:
    a = Arena(0, 10 * ALIGN)
    first, second = a.alloc(4 * ALIGN), a.alloc(4 * ALIGN)
    a.free(first)
    assert a.alloc(3 * ALIGN) == 0  # wraps: the end has 2 blocks' room, the start 4
    assert a.alloc(1 * ALIGN) == 3 * ALIGN
    assert a.alloc(1) is None  # the gap up to `second` is full
    assert second == 4 * ALIGN


def test_tensors_cross_through_the_region_or_the_message() -> None:
    region = Region(1 << 16)
    try:
        frees: list[int] = []
        big = np.arange(SHM_MIN_BYTES, dtype=np.float32).reshape(64, -1)
        small = np.array([1, 2, 3], dtype=np.int64)
        strided = np.arange(4096, dtype=np.float64)[::2]  # not contiguous: copied as it is read
        words = np.array([b"a\x00b", b"", b"cd"], dtype=object)
        wires = [put(region.requests, region.view, n, arr, frees)
                 for n, arr in (("big", big), ("small", small), ("strided", strided), ("words", words))]
        assert [w[3] >= 0 for w in wires] == [True, False, True, False]  # in the region: the large ones
        assert frees == [wires[0][3], wires[2][3]]
        for w, arr in zip(wires, (big, small, strided, words), strict=True):
            out = get(region.view, w)
            assert out.dtype == arr.dtype and out.shape == arr.shape
            np.testing.assert_array_equal(out, arr)
        assert np.shares_memory(get(region.view, wires[0]), np.frombuffer(region.view, np.uint8))  # a view, no copy
        # too large for the free part of the region: in the message instead
        huge = np.zeros(1 << 16, dtype=np.uint8)
        assert put(region.requests, region.view, "huge", huge, frees)[3] == -1
    finally:
        region.close()
        region.close()  # once only: the descriptor is not closed twice


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096])
def test_frames_survive_any_read_boundary(chunk: int) -> None:
    msgs = [(1, 2, "model", None, [("x", "<f4", (2,), -1, b"\x00" * 8)], []), (5, 7, True, b"x" * 5000), (3, b"")]
    stream = b"".join(frame(m) for m in msgs)
    frames = Frames()
    got = []
    for i in range(0, len(stream), chunk):
        got.extend(frames.feed(stream[i:i + chunk]))
    assert got == msgs
