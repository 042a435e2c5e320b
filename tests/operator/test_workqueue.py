"""The work queue (workqueue.py) on a real event loop: dedupe, one run per key at a time, timers,
backoff. Timing assertions are lower bounds only (a timer never fires early; a loaded machine
may make it late)."""

from __future__ import annotations

import asyncio
import time

import pytest
from modeldeploy.controller.workqueue import Retry, WorkQueue, backoff


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_burst_for_one_key_is_one_run() -> None:
    runs: list[str] = []

    async def handler(key: str) -> None:
        runs.append(key)

    q: WorkQueue[str] = WorkQueue(handler, workers=2)
    for _ in range(50):
        q.add("a")
    q.add("b")
    assert len(q) == 2
    q.start()
    await until(lambda: q.runs == 2)
    await asyncio.sleep(0.05)
    await q.stop()
    assert sorted(runs) == ["a", "b"]


async def test_an_add_during_a_run_runs_once_more_after_it_never_beside_it() -> None:
    running, most, runs = 0, 0, 0
    release = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal running, most, runs
        running += 1
        most = max(most, running)
        runs += 1
        if runs == 1:
            await release.wait()
        running -= 1

    q: WorkQueue[str] = WorkQueue(handler, workers=4)
    q.add("a")
    q.start()
    await until(lambda: runs == 1)
    for _ in range(20):  # a burst while the first run is on: marks it dirty, once
        q.add("a")
    release.set()
    await until(lambda: q.runs == 2)
    await asyncio.sleep(0.05)
    await q.stop()
    assert runs == 2 and most == 1


async def test_timers_the_earliest_wins_and_a_run_clears_its_timer() -> None:
    times: list[float] = []
    started = time.monotonic()

    async def handler(key: str) -> float | None:
        times.append(time.monotonic() - started)
        return None

    q: WorkQueue[str] = WorkQueue(handler, workers=1)
    q.start()
    q.add_after("a", 5.0)
    q.add_after("a", 0.1)  # earlier: wins
    q.add_after("a", 3.0)  # later: ignored
    assert q.scheduled("a") == pytest.approx(0.1, abs=0.05)
    await until(lambda: q.runs == 1)
    assert times[0] >= 0.1 and q.scheduled("a") is None
    q.add_after("b", 0.2)
    q.add("b")  # an event before the timer: runs now, and the run clears the timer
    await until(lambda: q.runs == 2)
    assert q.scheduled("b") is None
    await q.stop()


async def test_a_run_says_when_to_come_back() -> None:
    runs = 0

    async def handler(key: str) -> float | None:
        nonlocal runs
        runs += 1
        return 0.05 if runs < 3 else None

    q: WorkQueue[str] = WorkQueue(handler, workers=1)
    q.add("a")
    q.start()
    await until(lambda: runs == 3)
    await asyncio.sleep(0.2)
    await q.stop()
    assert runs == 3 and q.scheduled("a") is None


async def test_failures_back_off_per_key_and_success_forgets_them() -> None:
    stamps: list[float] = []

    async def handler(key: str) -> None:
        stamps.append(time.monotonic())
        if len(stamps) <= 2:
            raise Retry("conflict", 0.1)

    q: WorkQueue[str] = WorkQueue(handler, workers=1)
    q.add("a")
    q.start()
    await until(lambda: len(stamps) == 3)
    await q.stop()
    assert stamps[1] - stamps[0] >= 0.1 and stamps[2] - stamps[1] >= 0.2  # 0.1, then doubled
    assert q.retries == 2 and q.scheduled("a") is None


async def test_an_unexpected_error_is_retried_and_forget_drops_the_timer() -> None:
    async def handler(key: str) -> None:
        raise RuntimeError("bug")

    q: WorkQueue[str] = WorkQueue(handler, workers=1)
    q.add("a")
    q.start()
    await until(lambda: q.runs == 1)
    assert q.scheduled("a") is not None  # retried in about a second
    q.forget("a")
    assert q.scheduled("a") is None
    await q.stop()


def test_backoff_doubles_up_to_the_limit() -> None:
    assert [backoff(0.5, n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff(1, 100) == 60.0 and backoff(1, 3, max_delay=5) == 5.0
