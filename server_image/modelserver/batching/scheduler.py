"""Dynamic batching: TF Serving's `--enable_batching` / `--batching_parameters_file`, in asyncio.

Requests for the same (model, version, signature) whose inputs agree on dtype and non-batch
dimensions are queued together, merged along dimension 0 (padded up to the next allowed batch
size), run once on one of `num_batch_threads` worker threads, and split back. Everything that
decides is a pure function (the parameters file in options.py; batch keys, merge/pad/split in
merge.py); `Batcher` only schedules. Scheduling is event driven and costs one asyncio future per request:

* a batch starts as soon as it is full, or when its oldest request has waited
  `batch_timeout_micros`, provided a worker is idle;
* when every worker is idle (a quiet server), a request starts at once: no timeout is paid at
  low load, so batching costs nothing at concurrency 1;
* under load the workers are busy, requests pile up meanwhile, and each freed worker takes a
  full (or timed-out) batch, so the model is fed large batches;
* a batch expected to cost less than a thread hop (runner.InlinePolicy: measured, per model)
  runs right on the event loop instead of a worker: no wake-ups, and the request whose arrival
  completed the batch never suspends.

A full queue answers RESOURCE_EXHAUSTED at once; a request whose deadline passes while queued
answers DEADLINE_EXCEEDED and is never computed. A batch takes in another request only while its
merged, padded inputs stay within `max_batch_bytes` (--max_request_tensor_bytes): padding a long
row into 31 short ones cannot make a batch 32 times the size of any request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import grpc
import numpy as np

from modelserver.batching.merge import (
    Layout,
    Piece,
    SplitError,
    Tensors,
    batch_bytes,
    batch_rows,
    merge_inputs,
    merged_layout,
    padded_size,
    row_layout,
    shape_key,
    split_outputs,
)
from modelserver.batching.options import BatchingOptions
from modelserver.core.errors import ServingError, deadline_exceeded, invalid_argument, resource_exhausted
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import InlinePolicy

ModelFn = Callable[[Tensors], Tensors]
BatchObserver = Callable[[Hashable, int, int], None]  # (key, real rows, executed batch size)


class _Task:
    __slots__ = ("fn", "inputs", "rows", "ctx", "future", "taken", "done_rows", "parts", "expiry",
                 "enqueued", "layout")

    def __init__(self, fn: ModelFn, inputs: Tensors, rows: int, ctx: RequestContext,
                 future: asyncio.Future[Tensors], enqueued: float) -> None:
        self.fn = fn
        self.inputs = inputs
        self.rows = rows
        self.ctx = ctx
        self.future = future
        self.enqueued = enqueued  # loop.time()
        self.taken = 0  # rows already placed in batches (large batch splitting)
        self.done_rows = 0
        self.parts: dict[int, Tensors] | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.layout: Layout | None = None  # one row's dims and item sizes (set when batches are capped in bytes)


class _Queue:
    __slots__ = ("key", "model_key", "tasks", "rows", "solo")

    def __init__(self, key: Hashable, model_key: Hashable, solo: bool) -> None:
        self.key = key  # (model key, shape key), or a unique object for a request that runs alone
        self.model_key = model_key
        self.tasks: deque[_Task] = deque()
        self.rows = 0  # rows queued and not yet placed in a batch
        self.solo = solo


class Batcher:
    """Drop-in for the plain runner: `await submit(key, fn, inputs, ctx)`.

    One Batcher serves every model, like TF Serving's shared batch scheduler: its
    `num_batch_threads` workers are shared by all queues, and a freed worker takes the eligible
    queue whose oldest request has waited longest. Use it from one event loop.
    """

    def __init__(self, options: BatchingOptions, on_batch: BatchObserver | None = None,
                 inline_below_s: float = 0.0005, max_batch_bytes: int | None = None) -> None:
        self.options = options
        self._max_bytes = max_batch_bytes
        self.policy = InlinePolicy(inline_below_s)  # a batch on the event loop or on a batch thread
        self._limit = options.execution_batch_size
        self._capacity = options.max_enqueued_batches * self._limit  # rows per queue
        self._timeout = options.batch_timeout_micros / 1e6
        self._allowed = options.allowed_batch_sizes
        self._pad = options.pad_variable_length_inputs
        self._split = options.enable_large_batch_splitting
        self._queues: dict[Hashable, _Queue] = {}
        self._workers = options.num_batch_threads
        self._idle = options.num_batch_threads
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.num_batch_threads, thread_name_prefix=options.thread_pool_name)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._unbatchable: set[Hashable] = set()  # model keys whose outputs cannot be split
        self._on_batch = on_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_pending = False
        self._closed = False

    # ---- public

    async def submit(self, key: Hashable, fn: ModelFn, inputs: Tensors, ctx: RequestContext) -> Tensors:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
        rows = batch_rows(inputs)
        if rows is None or rows == 0 or key in self._unbatchable:
            qkey: Hashable = object()  # runs alone
            solo = True
            rows = rows or 1
        else:
            if rows > self.options.max_batch_size:
                raise invalid_argument(f"Task size {rows} is larger than maximum input batch size "
                                       f"{self.options.max_batch_size}")
            qkey = (key, shape_key(inputs, self._pad))
            solo = False
        if (not self._queues and self._idle == self._workers and not _loop_busy(loop)
                and self.policy.inline(key, rows if solo else padded_size(rows, self._allowed))):
            # A quiet server: nothing queued, no batch running, no other work waiting on the
            # loop, and a call cheaper than a thread hop (InlinePolicy): it runs right here and
            # the request never suspends; slow or unknown calls still go to a batch thread.
            return self._run_inline(key, fn, inputs, rows, ctx, solo)
        q = self._queues.get(qkey)
        if q is None:
            q = self._queues[qkey] = _Queue(qkey, key, solo)
        elif q.rows + rows > self._capacity:
            raise resource_exhausted("The batch scheduling queue to which this task was submitted is full")
        now = loop.time()
        ctx.t_queue_start = time.perf_counter()
        future: asyncio.Future[Tensors] = loop.create_future()
        task = _Task(fn, inputs, rows, ctx, future, now)
        if self._max_bytes is not None and not solo:
            task.layout = row_layout(inputs)
        if ctx.deadline is not None:
            left = ctx.deadline - ctx.t_queue_start
            if left <= 0:
                self._drop_queue_if_empty(q)
                raise deadline_exceeded("Deadline exceeded before the request was queued")
            task.expiry = loop.call_at(now + left, self._expire, task)
        q.tasks.append(task)
        q.rows += rows
        if not (self._poll_pending and q.rows < self._limit):
            self._schedule()  # (while a poll is pending, it looks at every queue on the next turn)
        return await future

    def queue_depth(self) -> dict[str, int]:
        """Requests waiting to run, per model name (the queue depth gauge)."""
        depth: dict[str, int] = {}
        for q in list(self._queues.values()):
            for t in list(q.tasks):
                if not t.future.done():
                    depth[t.ctx.model] = depth.get(t.ctx.model, 0) + 1
        return depth

    def busy_threads(self) -> int:
        """Batch threads running a batch now (the busy threads gauge)."""
        return self._workers - self._idle

    async def close(self) -> None:
        """Stops taking requests, lets queued and running batches finish, joins the workers."""
        self._closed = True
        while self._queues or self._idle < self._workers:
            await asyncio.sleep(0.005)
        self._executor.shutdown(wait=True)

    # ---- scheduling (event loop thread only)

    def _schedule(self) -> None:
        """Starts every batch that may start now.

        A queue may start when it is full, when its oldest request has waited
        `batch_timeout_micros`, or at once when the server is idle for it and the event loop has
        nothing else to do (a quiet server: no reason to wait). Idle for it: every batch thread
        idle, or, for a batch cheaper than a thread hop (it runs on the loop: InlinePolicy), no
        matter what the threads do. While the loop still has work queued (under load, that is
        more requests being admitted: grpc.aio hands the loop one new RPC at a time), an idle
        server holds the batch and looks again on the next loop turn, so requests that are
        already on their way join it instead of each paying a model call. A batch that needs a
        thread while none is free waits for one (`_done`).
        """
        loop = self._loop
        assert loop is not None
        policy = self.policy
        while self._queues:
            now = loop.time()
            loop_quiet = not _loop_busy(loop)
            all_idle = self._idle == self._workers
            best: _Queue | None = None
            best_head = 0.0
            wake: float | None = None
            held = False
            for q in self._queues.values():
                head = q.tasks[0].enqueued
                on_loop = policy.cheap(q.model_key, self._next_size(q))
                if not on_loop and self._idle == 0:
                    continue  # waits for a thread
                idle_for_q = on_loop or all_idle
                if q.solo or (loop_quiet and idle_for_q) or q.rows >= self._limit or now - head >= self._timeout:
                    if best is None or head < best_head:
                        best, best_head = q, head
                else:
                    held = held or idle_for_q
                    due = head + self._timeout
                    if wake is None or due < wake:
                        wake = due
            if best is None:
                if held and not self._poll_pending:
                    self._poll_pending = True
                    loop.call_soon(self._on_poll)
                if wake is not None:
                    self._arm(wake)
                return
            pieces, tasks = self._take(best)
            if pieces:
                self._launch(best, pieces, tasks)

    def _next_size(self, q: _Queue) -> int:
        """The size of the batch `q` would run next (before skipping cancelled requests)."""
        return 1 if q.solo else padded_size(min(q.rows, self._limit), self._allowed)

    def _arm(self, when: float) -> None:
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    def _on_poll(self) -> None:
        self._poll_pending = False
        self._schedule()

    def _drop_queue_if_empty(self, q: _Queue) -> None:
        if not q.tasks and self._queues.get(q.key) is q:
            del self._queues[q.key]

    def _take(self, q: _Queue) -> tuple[list[Piece], list[_Task]]:
        """Forms the next batch from the head of `q`, skipping cancelled and expired requests."""
        pieces: list[Piece] = []
        tasks: list[_Task] = []
        room = 1 if q.solo else self._limit
        tq = q.tasks
        layout: Layout | None = None  # of the batch so far (capped in bytes)
        while tq and room > 0:
            t = tq[0]
            avail = t.rows - t.taken
            if t.future.done():  # cancelled by its client, or expired
                tq.popleft()
                q.rows -= avail
                continue
            if t.layout is not None:
                grown = t.layout if layout is None else merged_layout(layout, t.layout)
                rows = self._limit - room + min(avail, room)
                if pieces and batch_bytes(grown, padded_size(rows, self._allowed)) > self._max_bytes:  # type: ignore[operator]
                    break  # the next batch takes it
                layout = grown
            if q.solo or avail <= room:
                pieces.append(Piece(t.inputs, t.taken, t.rows))
                tq.popleft()
                q.rows -= avail
                room -= avail
                t.taken = t.rows
            elif self._split:
                pieces.append(Piece(t.inputs, t.taken, t.taken + room))
                t.taken += room
                q.rows -= room
                room = 0
            else:
                break
            if t.expiry is not None:
                t.expiry.cancel()
                t.expiry = None
            tasks.append(t)
        self._drop_queue_if_empty(q)
        return pieces, tasks

    def _expire(self, task: _Task) -> None:
        task.expiry = None
        if not task.future.done() and task.taken == 0:
            task.ctx.status = "DEADLINE_EXCEEDED"
            task.future.set_exception(
                deadline_exceeded("Deadline exceeded while the request was queued for batching"))

    def _launch(self, q: _Queue, pieces: list[Piece], tasks: list[_Task]) -> None:
        """Runs a batch: right here on the event loop when the policy finds it cheaper than a
        thread hop (every waiting handler is resolved in this one callback, and a request whose
        submit formed the batch never suspends), else on a batch thread."""
        loop = self._loop
        assert loop is not None
        rows = sum(p.rows for p in pieces)
        size = rows if q.solo else padded_size(rows, self._allowed)
        model_key = q.model_key
        if self.policy.cheap(model_key, size) and (self._idle == 0 or not self.policy.reprobe_now()):
            try:
                outs = self._run(tasks[0].fn, pieces, tasks, size, q.solo, model_key)
            except Exception as exc:
                self._finish(None, exc, model_key, pieces, tasks, rows, size)
            else:
                self._finish(outs, None, model_key, pieces, tasks, rows, size)
            return
        self._idle -= 1
        sent = time.perf_counter()
        cf = self._executor.submit(self._run, tasks[0].fn, pieces, tasks, size, q.solo, model_key)

        def done(f: concurrent.futures.Future[list[Tensors]]) -> None:
            loop.call_soon_threadsafe(self._done, f, model_key, pieces, tasks, rows, size, sent)

        cf.add_done_callback(done)

    def _run_inline(self, key: Hashable, fn: ModelFn, inputs: Tensors, rows: int, ctx: RequestContext,
                    solo: bool) -> Tensors:
        ctx.t_queue_start = time.perf_counter()
        task = _Task(fn, inputs, rows, ctx, None, 0.0)  # type: ignore[arg-type]
        size = rows if solo else padded_size(rows, self._allowed)
        try:
            (out,) = self._run(fn, [Piece(inputs, 0, rows)], [task], size, solo, key)
        except SplitError as exc:
            raise ServingError(grpc.StatusCode.INTERNAL, f"Batched run could not be split: {exc}") from None
        if self._on_batch is not None:
            self._on_batch(key, rows, size)
        return out

    def _run(self, fn: ModelFn, pieces: list[Piece], tasks: list[_Task], size: int, solo: bool,
             model_key: Hashable) -> list[Tensors]:
        """Worker thread: merge, run once, split. When the model's outputs turn out not to be
        batched along dimension 0, each request is run alone (now and from then on)."""
        t0 = time.perf_counter()
        for t in tasks:
            t.ctx.t_compute_start = t0
            t.ctx.batch_size = size
        try:
            whole = [p.start == 0 and p.stop == t.rows for p, t in zip(pieces, tasks, strict=True)]
            if solo or (len(pieces) == 1 and whole[0] and size == pieces[0].rows):
                return [fn(tasks[0].inputs)]  # one whole request, nothing to merge or split
            out = fn(merge_inputs(pieces, size, self._pad))
            try:
                return split_outputs(out, pieces, size)
            except SplitError:
                if not all(whole):
                    raise
                self._unbatchable.add(model_key)
                return [fn(t.inputs) for t in tasks]
        finally:
            t1 = time.perf_counter()
            for t in tasks:
                t.ctx.t_compute_end = t1
            self.policy.record_call(model_key, t1 - t0, size)

    def _done(self, f: concurrent.futures.Future[list[Tensors]], model_key: Hashable,
              pieces: list[Piece], tasks: list[_Task], rows: int, size: int, sent: float) -> None:
        """A batch thread finished (event loop thread)."""
        self._idle += 1
        c = tasks[0].ctx
        if c.t_compute_start is not None and c.t_compute_end is not None:
            self.policy.record_hop((c.t_compute_start - sent) + (time.perf_counter() - c.t_compute_end))
        exc = f.exception()
        try:
            self._finish(f.result() if exc is None else None, exc, model_key, pieces, tasks, rows, size)
        finally:
            self._schedule()

    def _finish(self, outs: list[Tensors] | None, exc: BaseException | None, model_key: Hashable,
                pieces: list[Piece], tasks: list[_Task], rows: int, size: int) -> None:
        """Resolves a batch's waiting requests (and reports the batch), all in this one call."""
        if exc is None:
            assert outs is not None
            for t, p, out in zip(tasks, pieces, outs, strict=True):
                if t.future.done():
                    continue
                if p.rows == t.rows:
                    t.future.set_result(out)
                    continue
                if t.parts is None:
                    t.parts = {}
                t.parts[p.start] = out
                t.done_rows += p.rows
                if t.done_rows == t.rows:
                    ordered = [t.parts[s] for s in sorted(t.parts)]
                    t.future.set_result({name: np.concatenate([o[name] for o in ordered], axis=0)
                                         for name in ordered[0]})
        else:
            if isinstance(exc, SplitError):
                exc = ServingError(grpc.StatusCode.INTERNAL, f"Batched run could not be split: {exc}")
            for t in tasks:
                if not t.future.done():
                    t.future.set_exception(exc)
        if self._on_batch is not None:
            self._on_batch(model_key, rows, size)


def _loop_busy(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether other callbacks are waiting to run on this loop turn.

    Measured on model-server under perf_analyzer: at concurrency 1 the loop had nothing else
    queued at every batch-1 submit; at concurrency 32 it had work queued at about 94% of them.
    asyncio's loops keep that queue in `_ready`; a loop without one (e.g. uvloop) reads as never
    busy, which is the plain work-conserving rule.
    """
    return bool(getattr(loop, "_ready", None))


def batcher_for(options: BatchingOptions, flags: Any, on_batch: BatchObserver | None = None) -> Batcher:
    """The server's shared Batcher: the batching file's options, `--inline_call_max_us` (the
    cap of InlinePolicy: a batch whose expected cost is below both it and a thread hop runs on
    the event loop; 0 = never) and `--max_request_tensor_bytes` (the cap of a merged batch)."""
    return Batcher(options, on_batch=on_batch, inline_below_s=flags.inline_call_max_us / 1e6,
                   max_batch_bytes=flags.max_request_tensor_bytes or None)
