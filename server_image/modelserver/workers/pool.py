"""The model process's side of the front-end workers: start them, answer their model calls,
keep their mirror of the versions and labels current, merge their metrics, restart a worker
that dies, and drain them on SIGTERM.

A model call (RUN) names the version the worker resolved; its inputs are numpy views on the
worker's shared memory, submitted to the same runner as in a single process (the one batcher,
so batches form across every worker's requests). If that version was unloaded after the worker's
last snapshot (a label moved away and its version went), the call is resolved again here by the
label or the model's split, as it would have been a moment later, rather than failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from modelserver.core.errors import ServingError
from modelserver.core.manager import AVAILABLE, Manager
from modelserver.core.request_context import RequestContext
from modelserver.core.servable import Servable
from modelserver.core.state import ServerState
from modelserver.workers.link import Peer
from modelserver.workers.mirror import Snapshots
from modelserver.workers.shm import ANSWER, CANCEL, FREE, RUN, STATE, Region, get, put

log = logging.getLogger("modelserver.workers")

WORKER_ENV = "MODELSERVER_FRONTEND_WORKER"  # index:socket fd:memfd:region bytes:model process pid
START_TIMEOUT_S = 120.0
RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)


class WorkerLink(Peer):
    """The model process's end of one worker's socket."""

    def __init__(self, pool: WorkerPool, worker: Worker) -> None:
        super().__init__()
        self.pool = pool
        self.worker = worker
        self.region = worker.region
        self.hello: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self.running: dict[int, _Drive] = {}  # model calls waiting, by request id

    def received(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == RUN:
            self._run(msg)
        elif kind == FREE:
            answers = self.region.answers
            for off in msg[1]:
                answers.free(off)
        elif kind == CANCEL:
            drive = self.running.get(msg[1])
            if drive is not None:
                self.worker.cancels += 1
                drive.cancel()

    async def handle(self, op: str, arg: Any) -> Any:
        return await self.pool.handle(self, op, arg)

    def lost(self) -> None:
        # model calls still running finish (the batch they are in goes on); their answers are dropped
        if not self.hello.done():
            self.hello.set_result((False, "the worker exited before it was up"))

    def _run(self, msg: tuple[Any, ...]) -> None:
        _, rid, model, version, sig_name, label, route_key, rows, deadline, wires, frees = msg
        if frees:
            answers = self.region.answers
            for off in frees:
                answers.free(off)
        try:
            servable = self.pool.servable(model, version, label, route_key)
            sig = servable.signature(sig_name)
            view = self.region.view
            inputs = {w[0]: get(view, w) for w in wires}
        except ServingError as exc:
            self.send((ANSWER, rid, exc.code.name, exc.message, None))
            return
        self.worker.calls += 1
        ctx = RequestContext("worker", "predict", model=model, version=servable.version, signature=sig.name,
                             batch_size=rows, deadline=deadline)
        runner = self.pool.state.runner_for(model)
        drive = _Drive(self._answer(rid, runner.submit((servable.name, servable.version, sig.name), sig.run, inputs,
                                                       ctx), ctx))
        if not drive.done:
            self.running[rid] = drive

    async def _answer(self, rid: int, call: Any, ctx: RequestContext) -> None:
        """Awaits a model call and answers it, whatever happens: the worker frees the call's
        input blocks only on its answer."""
        try:
            outputs = await call
        except ServingError as exc:
            self.send((ANSWER, rid, exc.code.name, exc.message, None))
            return
        except asyncio.CancelledError:  # the worker's request went away (CANCEL)
            self.send((ANSWER, rid, "CANCELLED", "the request was cancelled", None))
            return
        except Exception as exc:  # a bug: INTERNAL for this request, the server goes on
            log.error("model call failed", exc_info=exc)
            self.send((ANSWER, rid, "INTERNAL", f"{type(exc).__name__}: {exc}", None))
            return
        finally:
            self.running.pop(rid, None)
        if self.transport is None:
            return
        view, arena, unused = self.region.view, self.region.answers, list[int]()
        wires = [put(arena, view, n, a, unused) for n, a in outputs.items()]
        self.send((ANSWER, rid, "OK", wires, (ctx.t_queue_start, ctx.t_compute_start, ctx.t_compute_end)))


class _Drive:
    """Runs a model call's coroutine as far as it goes right now, then on from each future it
    waits for: a Task without the Task's extra turn of the event loop, so that a call the
    batcher runs at once (a quiet server) is answered within the same turn as its message."""

    __slots__ = ("coro", "waiting", "done")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.waiting: asyncio.Future[Any] | None = None
        self.done = False
        self.step(None)

    def step(self, _done: Any) -> None:
        self.waiting = None
        try:
            waiting = self.coro.send(None)
        except StopIteration:
            self.done = True
            return
        except BaseException:  # _answer answers every error; this is a bug
            self.done = True
            log.exception("model call driver failed")
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0))
            asyncio.get_running_loop().call_soon(self.step, None)
        else:
            waiting._asyncio_future_blocking = False
            self.waiting = waiting
            waiting.add_done_callback(self.step)

    def cancel(self) -> None:
        """Cancels what the call waits for (a queued request leaves the batcher's queue: it is
        skipped when the next batch forms), as Task.cancel does."""
        if self.waiting is not None:
            self.waiting.cancel()


class Worker:
    """One worker process and its socket and region (all three replaced when it restarts)."""

    def __init__(self, index: int, region_bytes: int) -> None:
        self.index = index
        self.region_bytes = region_bytes
        self.region = Region(region_bytes)
        self.proc: asyncio.subprocess.Process | None = None
        self.link: WorkerLink | None = None
        self.restarts = 0  # in a row (for the back-off)
        self.exits = 0  # unexpected exits, all told
        self.calls = 0  # model calls it sent
        self.cancels = 0  # of which it cancelled while they waited (their clients went away)
        self.started_at = 0.0


class WorkerPool:
    def __init__(self, state: ServerState, argv: list[str], count: int, region_bytes: int,
                 metrics: Any = None, profiler: Any = None) -> None:
        self.state = state
        self.manager: Manager = state.manager
        self.argv = argv
        self.count = count
        self.region_bytes = region_bytes
        self.metrics = metrics
        self.profiler = profiler
        self.workers = [Worker(i, region_bytes) for i in range(count)]
        self.draining = False
        self._snapshots = Snapshots()
        self._snapshot: bytes = b""
        self._fingerprint: Any = None
        self._push_pending = False
        self._tasks: list[asyncio.Task[None]] = []
        self.on_worker_exit: Callable[[int, int], None] | None = None  # tests: (index, returncode)

    # -- lifecycle
    async def start(self) -> None:
        """Starts every worker and waits until each has bound its ports; ServingError names the
        first that could not."""
        self.manager.on_change = self._schedule_push
        if self.metrics is not None:
            self.metrics.extra = self.families
        self._refresh_snapshot()
        results = await asyncio.gather(*(self._spawn(w) for w in self.workers))
        for ok, message in results:
            if not ok:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, message)
        for w in self.workers:
            self._tasks.append(asyncio.ensure_future(self._supervise(w)))
        self._tasks.append(asyncio.ensure_future(self._watch()))
        log.info("%d front-end worker(s) up: pids %s", self.count, [w.proc.pid for w in self.workers if w.proc])

    async def drain(self, timeout: float) -> None:
        """SIGTERM to every worker (each drains its ports as a single server does: readiness off,
        new requests held, in-flight ones finished) while this process answers their calls; then
        waits for them to exit (SIGKILL after `timeout` and a margin)."""
        self.draining = True
        self._push_now()
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout + 5)
            for p in procs:
                if p.returncode is None:
                    log.warning("front-end worker %d did not stop in time; killed", p.pid)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def stop(self) -> None:
        self.draining = True
        for t in self._tasks:
            t.cancel()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.proc.wait(), 5)
            if w.link is not None and w.link.transport is not None:
                w.link.transport.close()
            w.region.close()

    # -- one worker
    async def _spawn(self, w: Worker) -> tuple[bool, str]:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[WORKER_ENV] = f"{w.index}:{theirs.fileno()}:{w.region.fd}:{w.region_bytes}:{os.getpid()}"
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelserver.frontend", *self.argv,
                pass_fds=(theirs.fileno(), w.region.fd), env=env, stdin=asyncio.subprocess.DEVNULL)
        finally:
            theirs.close()
        w.started_at = time.monotonic()
        _, link = await loop.connect_accepted_socket(lambda: WorkerLink(self, w), ours)
        w.link = link
        link.send((STATE, self._snapshot))
        try:
            return await asyncio.wait_for(asyncio.shield(link.hello), START_TIMEOUT_S)
        except TimeoutError:
            return False, f"front-end worker {w.index} did not start in {START_TIMEOUT_S:.0f} s"

    async def _supervise(self, w: Worker) -> None:
        """Restarts the worker whenever it exits, unless the pool is draining."""
        while True:
            assert w.proc is not None
            rc = await w.proc.wait()
            if self.on_worker_exit is not None:
                self.on_worker_exit(w.index, rc)
            if self.draining:
                return
            lived = time.monotonic() - w.started_at
            if lived > 60:
                w.restarts = 0
            delay = RESTART_BACKOFF_S[min(w.restarts, len(RESTART_BACKOFF_S) - 1)]
            w.restarts += 1
            w.exits += 1
            log.error("front-end worker %d (pid %d) exited with %s; its in-flight requests failed; restarting in %.1f s",
                      w.index, w.proc.pid, rc, delay)
            if w.link is not None and w.link.transport is not None:
                w.link.transport.close()
            w.region.close()
            await asyncio.sleep(delay)
            if self.draining:
                return
            w.region = Region(w.region_bytes)  # the old one may still be read by a running batch
            ok, message = await self._spawn(w)
            if not ok:
                log.error("front-end worker %d: %s", w.index, message)

    # -- the mirror
    def _schedule_push(self) -> None:
        if not self._push_pending:
            self._push_pending = True
            asyncio.get_running_loop().call_soon(self._push_now)

    def _push_now(self) -> None:
        self._push_pending = False
        if self._refresh_snapshot():
            for w in self.workers:
                if w.link is not None:
                    w.link.send((STATE, self._snapshot))

    def _refresh_snapshot(self) -> bool:
        fp = self._snapshots.fingerprint(self.manager, self.draining)
        if fp == self._fingerprint:
            return False
        self._fingerprint = fp
        self._snapshot = self._snapshots.build(self.manager, self.draining)
        return True

    async def sync(self) -> None:
        """Pushes the current snapshot and returns once every worker has applied it (a worker
        answers calls in order, after the messages before them)."""
        self._push_now()
        links = [w.link for w in self.workers if w.link is not None and w.link.transport is not None]
        await asyncio.gather(*(ln.call("sync", None, timeout=10) for ln in links), return_exceptions=True)

    async def _watch(self) -> None:
        """A backstop for changes no hook reports (a version's state while it loads)."""
        while True:
            await asyncio.sleep(0.2)
            self._push_now()

    def servable(self, model: str, version: int, label: str | None, route_key: bytes | None) -> Servable:
        rec = self.manager.models.get(model)
        vr = rec.versions.get(version) if rec is not None else None
        if vr is not None and vr.state == AVAILABLE and vr.servable is not None:
            return vr.servable
        if label:  # the label has moved since the worker's snapshot
            return self.manager.resolve(model, label=label)
        return self.manager.resolve_unlabelled(model, route_key)[0]

    # -- control calls from workers
    async def handle(self, link: WorkerLink, op: str, arg: Any) -> Any:
        if op == "hello":
            if not link.hello.done():
                link.hello.set_result(arg)
            return None
        if op == "reload":
            try:
                await self.manager.reload(arg)
            finally:
                await self.sync()
            return None
        if op == "metrics":
            return await self.render_metrics()
        if op == "profile":
            return await self._profile(arg)
        if op == "terminate":
            if self.profiler is not None:
                self.profiler.terminate(arg)
            return None
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"unknown operation {op}")

    def families(self) -> list[Any]:
        """The workers' own metrics: how many, each one's model calls, process id and restarts."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("modelserver_frontend_workers", "Front-end worker processes running.")
        up.add_metric([], sum(1 for w in self.workers if w.proc is not None and w.proc.returncode is None))
        calls = CounterMetricFamily("modelserver_frontend_worker_model_calls", "Model calls each front-end worker "
                                    "handed to the model process.", labels=["worker"])
        exits = CounterMetricFamily("modelserver_frontend_worker_exits", "Front-end workers that exited "
                                    "unexpectedly (each was restarted).", labels=["worker"])
        pid = GaugeMetricFamily("modelserver_frontend_worker_pid", "Each front-end worker's process id.",
                                labels=["worker"])
        cancels = CounterMetricFamily("modelserver_frontend_worker_cancelled_calls", "Model calls a front-end "
                                      "worker cancelled while they waited (their clients went away).", labels=["worker"])
        for w in self.workers:
            calls.add_metric([str(w.index)], w.calls)
            cancels.add_metric([str(w.index)], w.cancels)
            exits.add_metric([str(w.index)], w.exits)
            pid.add_metric([str(w.index)], w.proc.pid if w.proc is not None else 0)
        return [up, calls, cancels, exits, pid]

    async def render_metrics(self) -> bytes:
        """The pod's metrics: this process's (batches, queues, warmup) and every worker's requests."""
        if self.metrics is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, "metrics are off")
        links = [w.link for w in self.workers if w.link is not None and w.link.transport is not None]
        parts = await asyncio.gather(*(ln.call("metrics_state", None, timeout=5) for ln in links),
                                     return_exceptions=True)
        recorded = [p for p in parts if isinstance(p, dict)]
        return self.metrics.merged(recorded).render()  # type: ignore[no-any-return]

    async def _profile(self, arg: tuple[bytes, str | None]) -> bytes:
        if self.profiler is None:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, "the profiler is off")
        data, path = arg
        request = self.profiler.msgs["ProfileRequest"].FromString(data)
        response = await self.profiler.capture(request, Path(path) if path else None)
        return response.SerializeToString()  # type: ignore[no-any-return]
