"""Execution hook: every model computation in the request path goes through a runner.

`await runner.submit(key, fn, inputs, ctx)` runs `fn(inputs)` (a signature call) and returns its
outputs. `DirectRunner` runs each call as it comes, on the model thread pool or, when that is
cheaper (`InlinePolicy`), on the event loop; the batching scheduler (`batching.Batcher`) has the
same `submit`, uses the same policy per batch, and is chosen per model instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from modelserver.core.request_context import RequestContext

Tensors = dict[str, np.ndarray]
SignatureFn = Callable[[Tensors], Tensors]


class Runner(Protocol):
    async def submit(self, key: Hashable, fn: SignatureFn, inputs: Tensors, ctx: RequestContext) -> Tensors: ...


class InlinePolicy:
    """Where a model call runs: right on the event loop, or on a thread.

    Handing a call to a thread and back (the hop) costs the loop a wake-up and the thread a
    hand-off of the GIL, on a small host often more than a small model's whole call (FINDINGS:
    a hop alone takes a third of a no-op gRPC server's throughput). So a call runs on the loop
    when its expected cost (its signature's recent seconds per row, times its rows) is below the
    measured cost of a hop (submit to start, plus end to back on the loop: `record_hop`), and
    below `cap_s`, so that a slow model never holds up the loop; `cap_s` 0: never. A signature's
    first call, and every call until a hop has been measured, goes to a thread; one call in
    `reprobe` that would run inline goes to a thread instead, keeping the hop figure current.
    """

    __slots__ = ("cap_s", "hop_s", "_cost_per_row", "_inlined", "reprobe")

    def __init__(self, cap_s: float, reprobe: int = 1024) -> None:
        self.cap_s = cap_s
        self.hop_s: float | None = None  # recent cost of a thread hop (seconds), once measured
        self._cost_per_row: dict[Hashable, float] = {}  # recent seconds per executed row, per key
        self._inlined = 0
        self.reprobe = reprobe

    def cheap(self, key: Hashable, rows: int) -> bool:
        """Whether a call of `rows` rows is expected to cost less than a thread hop (and the cap)."""
        per_row = self._cost_per_row.get(key)
        hop = self.hop_s
        return per_row is not None and hop is not None and per_row * rows < min(hop, self.cap_s)

    def reprobe_now(self) -> bool:
        """Counts a cheap call; True for one in `reprobe` (that one goes to a thread instead)."""
        self._inlined += 1
        return self._inlined % self.reprobe == 0

    def inline(self, key: Hashable, rows: int) -> bool:
        """Whether this call runs on the event loop: cheap, and not the periodic re-probe."""
        return self.cheap(key, rows) and not self.reprobe_now()

    def record_call(self, key: Hashable, seconds: float, rows: int) -> None:
        """A call's measured cost. One sample counts at most 4x the current estimate, so that a
        lone stall (a GC pause, a descheduled core) does not send the next calls to a thread."""
        per_row = seconds / max(1, rows)
        old = self._cost_per_row.get(key)
        self._cost_per_row[key] = per_row if old is None else 0.8 * old + 0.2 * min(per_row, 4 * old)

    def record_hop(self, seconds: float) -> None:
        old = self.hop_s
        self.hop_s = seconds if old is None else 0.8 * old + 0.2 * seconds


class DirectRunner:
    """Runs each call on `executor` (the model thread pool), or on the event loop when the
    `InlinePolicy` says the call is cheaper there (a signature's first call always goes to the
    pool, so unknown or slow signatures never block the loop)."""

    def __init__(self, executor: Executor, inline_below_s: float = 0.0005) -> None:
        self._executor = executor
        self.policy = InlinePolicy(inline_below_s)

    async def submit(self, key: Hashable, fn: SignatureFn, inputs: Tensors, ctx: RequestContext) -> Tensors:
        rows = max(1, ctx.batch_size)
        policy = self.policy
        if policy.inline(key, rows):
            try:
                return _timed_call(fn, inputs, ctx)
            finally:
                policy.record_call(key, ctx.t_compute_end - ctx.t_compute_start, rows)  # type: ignore[operator]
        sent = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, _timed_call, fn, inputs, ctx)
        finally:
            t0, t1 = ctx.t_compute_start, ctx.t_compute_end
            if t0 is not None and t1 is not None:
                policy.record_call(key, t1 - t0, rows)
                policy.record_hop((t0 - sent) + (time.perf_counter() - t1))


def _timed_call(fn: SignatureFn, inputs: Tensors, ctx: RequestContext) -> Tensors:
    ctx.t_compute_start = time.perf_counter()
    try:
        return fn(inputs)
    finally:
        ctx.t_compute_end = time.perf_counter()


class InlineRunner:
    """Runs the call on the calling thread (for code already off the event loop, e.g. warmup)."""

    async def submit(self, key: Hashable, fn: SignatureFn, inputs: Tensors, ctx: RequestContext) -> Tensors:
        return _timed_call(fn, inputs, ctx)
