"""A work queue of keys: what to reconcile next, as controller-runtime's (client-go's workqueue).

Events say *that* something changed, never *what to do*: each one only marks its ModelDeployment
dirty here, and a worker later reconciles the whole object from the cache. So:

- **Dedupe.** A key waits in the queue at most once; adding it again while it waits does
  nothing, and adding it while a worker runs it marks it dirty: it runs once more after the
  current run, never twice at once. A burst of events for one ModelDeployment costs one run, two
  at most, and no lock per object is needed (the queue never runs one key on two workers).
- **Timers.** `add_after(key, seconds)` adds the key later; the earliest time asked for wins.
  Each run returns when it wants to run again (the periodic re-check today; a rollout step or an
  autoscaler interval later) and a run clears the key's timer first, so a key's next timer is
  always what its last run asked for.
- **Rate limit.** A run that raises `Retry(delay)` (or fails unexpectedly) comes back after a
  per-key exponential backoff: delay, 2·delay, 4·delay ... at most `max_delay`; a run that
  succeeds forgets the failures.
- **Workers.** `workers` asyncio tasks, each awaiting `handler(key)`; the handler may hand the
  work to a thread (the operator's reconciles are synchronous).

`forget(key)` drops a key's timer and failures (a deleted object). Everything runs on one event
loop (kopf's); `add` and `add_after` are not thread-safe, call them from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("modeldeploy.controller.workqueue")
K = TypeVar("K", bound=Hashable)


class Retry(Exception):
    """A transient failure (conflict, throttling, API unavailable): run the key again after `delay`
    seconds the first time, doubled on each further failure (up to the queue's max_delay)."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


def backoff(first: float, failures: int, max_delay: float = 60.0) -> float:
    """first, 2*first, 4*first ... at most max_delay."""
    return float(min(max_delay, first * 2 ** min(failures, 30)))


class WorkQueue(Generic[K]):
    """Keys to run, deduplicated; see the module docstring. `handler(key)` returns the seconds
    until the key should run again, or None for not at all (until the next add)."""

    def __init__(self, handler: Callable[[K], Awaitable[float | None]], workers: int = 8, *,
                 max_delay: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._handler = handler
        self._workers = workers
        self._max_delay = max_delay
        self._clock = clock
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._waiting: set[K] = set()  # in _ready
        self._active: set[K] = set()  # being run by a worker
        self._dirty: set[K] = set()  # added while active: run again after
        self._due: dict[K, float] = {}  # key -> when its timer fires
        self._timers: list[tuple[float, int, K]] = []  # heap; entries not matching _due are stale
        self._seq = itertools.count()
        self._timer_changed = asyncio.Event()
        self._failures: dict[K, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.runs = 0
        self.retries = 0

    # -- adding --
    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        when = self._clock() + delay
        if self._due.get(key, float("inf")) <= when:
            return
        self._due[key] = when
        heapq.heappush(self._timers, (when, next(self._seq), key))
        self._timer_changed.set()

    def forget(self, key: K) -> None:
        self._due.pop(key, None)
        self._failures.pop(key, None)

    def __len__(self) -> int:
        """Keys waiting to run now (the queue's depth)."""
        return len(self._waiting)

    def scheduled(self, key: K) -> float | None:
        """Seconds until the key's timer fires, None without one."""
        when = self._due.get(key)
        return None if when is None else max(0.0, when - self._clock())

    # -- running --
    def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [asyncio.create_task(self._worker(), name=f"workqueue worker {i}") for i in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._timer(), name="workqueue timers"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._waiting.discard(key)
            self._active.add(key)
            self._due.pop(key, None)  # this run covers the timer; the run says when to come back
            try:
                after = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Retry as exc:
                self._fail(key, exc.delay, str(exc))
            except Exception:
                log.exception("running %s failed", key)
                self._fail(key, 1.0, "unexpected error")
            else:
                self._failures.pop(key, None)
                if after is not None:
                    self.add_after(key, after)
            finally:
                self.runs += 1
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)

    def _fail(self, key: K, first: float, why: str) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.retries += 1
        delay = backoff(first, failures, self._max_delay)
        log.info("retrying %s in %.1fs: %s", key, delay, why)
        self.add_after(key, delay)

    async def _timer(self) -> None:
        while True:
            now = self._clock()
            while self._timers and self._timers[0][0] <= now:
                when, _, key = heapq.heappop(self._timers)
                if self._due.get(key) == when:
                    del self._due[key]
                    self.add(key)
            self._timer_changed.clear()
            timeout = self._timers[0][0] - now if self._timers else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_changed.wait(), timeout)
