"""A front-end worker process: `python -m modelserver.frontend <model-server flags>`,
started by the model process (pool.py) with its socket, shared memory and index in
MODELSERVER_FRONTEND_WORKER.

It is a ModelServer whose core is a mirror (mirror.MirrorManager, fed by the model process's
snapshots) and whose model calls go over the socket (`RemoteRunner`); it binds the gRPC and REST
ports with SO_REUSEPORT beside the other workers and serves both protocols, metrics hooks,
traces and payload logs as a single server does. It has no admin port, no batcher and no
TensorFlow. It exits when the model process goes (its socket closes, or the parent-death signal).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
import weakref
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

from modelserver.workers.protos import without_tensorflow

without_tensorflow()  # before anything imports tensorflow_serving's messages

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from modelserver.config.files import ConfigError  # noqa: E402
from modelserver.config.flags import Flags, parse_or_exit  # noqa: E402
from modelserver.core.errors import ServingError  # noqa: E402
from modelserver.core.request_context import RequestContext  # noqa: E402
from modelserver.core.state import ServerState  # noqa: E402
from modelserver.main import read_config_files  # noqa: E402
from modelserver.observability.profiler import ProfilerService  # noqa: E402
from modelserver.server import ModelServer, StartError  # noqa: E402
from modelserver.workers.link import Peer  # noqa: E402
from modelserver.workers.mirror import MirrorManager  # noqa: E402
from modelserver.workers.pool import WORKER_ENV  # noqa: E402
from modelserver.workers.shm import ANSWER, CANCEL, FREE, RUN, STATE, Region, get, put  # noqa: E402

log = logging.getLogger("modelserver.workers")

Tensors = dict[str, np.ndarray]


class ModelLink(Peer):
    """The worker's end of its socket: model calls out, answers and snapshots in."""

    def __init__(self, region: Region) -> None:
        super().__init__()
        self.region = region
        self.manager: MirrorManager | None = None
        self.metrics: Any = None
        self.first_state = asyncio.get_running_loop().create_future()
        self.pending: dict[int, tuple[asyncio.Future[Any], list[int], RequestContext]] = {}
        self._ids = itertools.count(1)
        # answer blocks no array refers to any more (appended by finalizers, which may run on any
        # thread: a deque's append and popleft are atomic, a list swapped for a new one is not)
        self._answer_frees: collections.deque[int] = collections.deque()

    def received(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == ANSWER:
            self._answer(msg)
        elif kind == STATE:
            if self.manager is not None:
                self.manager.apply(msg[1])
            if not self.first_state.done():
                self.first_state.set_result(None)

    async def handle(self, op: str, arg: Any) -> Any:
        if op == "metrics_state":
            return self.metrics.recorded() if self.metrics is not None else None  # (None: metrics are off)
        if op == "sync":  # the snapshots before this call are applied
            return None
        return await super().handle(op, arg)

    def lost(self) -> None:
        if self.manager is not None:
            self.manager.linked = False  # readiness off
        gone = ServingError(grpc.StatusCode.UNAVAILABLE, "the model process is gone")
        for fut, _frees, _ctx in self.pending.values():
            if not fut.done():
                fut.set_exception(gone)
        self.pending.clear()

    # -- model calls
    async def call_model(self, key: Hashable, inputs: Tensors, ctx: RequestContext) -> Tensors:
        """A model call in the model process. If this request is cancelled meanwhile (its client
        went away), the model process is told, so that a call still queued there never runs."""
        rid, fut = self.run(key, inputs, ctx)
        try:
            return await fut  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            if rid in self.pending:
                self.send((CANCEL, rid))
            raise

    def run(self, key: Hashable, inputs: Tensors, ctx: RequestContext) -> tuple[int, asyncio.Future[Any]]:
        model, version, sig = cast(tuple[str, int, str], key)  # as DataPlane.run builds it
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        rid = next(self._ids)
        if self.transport is None:
            fut.set_exception(ServingError(grpc.StatusCode.UNAVAILABLE, "the model process is gone"))
            return rid, fut
        region, frees = self.region, list[int]()
        view, arena = region.view, region.requests
        wires = [put(arena, view, n, a, frees) for n, a in inputs.items()]
        released = self._take_frees()
        self.pending[rid] = (fut, frees, ctx)
        self.send((RUN, rid, model, version, sig, ctx.label, ctx.route_key, ctx.batch_size, ctx.deadline, wires, released))
        return rid, fut

    def _answer(self, msg: tuple[Any, ...]) -> None:
        _, rid, code, payload, times = msg
        entry = self.pending.pop(rid, None)
        if entry is None:
            return
        fut, frees, ctx = entry
        requests = self.region.requests
        for off in frees:  # the model process is done with the inputs
            requests.free(off)
        if fut.done():  # the request was cancelled meanwhile; release its answer's blocks at once
            if code == "OK":
                self._answer_frees.extend(w[3] for w in payload if w[3] >= 0)
            return
        if code != "OK":
            fut.set_exception(ServingError(grpc.StatusCode[code], payload))
            return
        ctx.t_queue_start, ctx.t_compute_start, ctx.t_compute_end = times
        view, outputs = self.region.view, {}
        for w in payload:
            arr = get(view, w)
            if w[3] >= 0:  # a view on the answer half: its block is released when no array uses it
                weakref.finalize(arr.base if isinstance(arr.base, np.ndarray) else arr, self._release, w[3])
            outputs[w[0]] = arr
        fut.set_result(outputs)

    def _release(self, offset: int) -> None:
        self._answer_frees.append(offset)

    def _take_frees(self) -> list[int]:
        q, out = self._answer_frees, []
        while q:
            out.append(q.popleft())
        return out

    async def flush_frees(self) -> None:
        """Hands released answer blocks back when no model call is carrying them."""
        while True:
            await asyncio.sleep(0.02)
            if self._answer_frees and self.transport is not None:
                self.send((FREE, self._take_frees()))


class RemoteRunner:
    """The runner of every model in a worker: the call runs in the model process."""

    def __init__(self, link: ModelLink) -> None:
        self.link = link

    async def submit(self, key: Hashable, fn: Any, inputs: Tensors, ctx: RequestContext) -> Tensors:
        return await self.link.call_model(key, inputs, ctx)


class ForwardingProfiler(ProfilerService):
    """The profiler service on a worker's gRPC port: the capture runs in the model process,
    where TensorFlow and the models are."""

    def __init__(self, link: ModelLink, root: str, max_duration_s: float) -> None:
        super().__init__(root, max_duration_s)
        self.link = link

    async def capture(self, request: Any, path: Path | None) -> Any:
        data = await self.link.call("profile", (request.SerializeToString(), str(path) if path else None))
        return self.msgs["ProfileResponse"].FromString(data)

    async def terminate_capture(self, session_id: str) -> None:
        await self.link.call("terminate", session_id)


class FrontendServer(ModelServer):
    """A ModelServer with a mirrored core, remote model calls, shared ports, and no admin port."""

    reuse_port = True

    def __init__(self, flags: Flags, config: Any, index: int, sock: socket.socket, region: Region) -> None:
        super().__init__(flags, config.models, config.monitoring, None, config.tls, None)
        self.index = index
        self._sock = sock
        self._region = region
        self.link: ModelLink | None = None

    async def start(self) -> ModelServer:
        try:
            return await super().start()
        except StartError as exc:
            if self.link is not None:
                await self.link.call("hello", (False, f"front-end worker {self.index}: {exc}"), timeout=10)
            raise

    async def wait(self, stop: asyncio.Event) -> int:
        assert self.link is not None
        await self.link.call("hello", (True, ""), timeout=30)
        flush = asyncio.ensure_future(self.link.flush_frees())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([stopped, self.link.closed], return_when=asyncio.FIRST_COMPLETED)
            if not stopped.done():
                log.error("front-end worker %d: the model process is gone; stopping", self.index)
            return 0
        finally:
            stopped.cancel()
            flush.cancel()

    async def _start_core(self) -> None:
        loop = asyncio.get_running_loop()
        _, link = await loop.connect_accepted_socket(lambda: ModelLink(self._region), self._sock)
        self.link = link
        manager = MirrorManager(link.call)
        link.manager = manager
        self._stack.callback(lambda: link.transport.close() if link.transport is not None else None)
        await asyncio.wait_for(link.first_state, 60)
        self.manager = manager
        self.state = ServerState(self.flags, manager, RemoteRunner(link), monitoring_config=self.monitoring_config)
        self.state.request_hooks.append(self.v2_stats.finish)
        self.state.render_metrics = lambda: link.call("metrics", None, timeout=10)

    async def _start_observe(self) -> None:
        await super()._start_observe()
        if self.link is not None:
            self.link.metrics = self._server_metrics

    def _worker_count(self) -> int:
        return 1  # binds the ports itself; starts no workers

    async def _start_batching(self) -> None:
        return None  # the model process batches

    async def _start_admin(self) -> None:
        return None  # the model process serves the admin port

    def _profiler_service(self) -> ProfilerService:
        assert self.link is not None
        return ForwardingProfiler(self.link, self.flags.profiler_dir, self.flags.profiler_max_duration_seconds)


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when the model process dies (PR_SET_PDEATHSIG), however it dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    spec = os.environ.get(WORKER_ENV, "")
    try:
        index, sock_fd, mem_fd, size, parent = (int(x) for x in spec.split(":"))
    except ValueError:
        sys.stderr.write(f"modelserver.frontend is started by model-server ({WORKER_ENV} is not set)\n")
        return 2
    _die_with_parent(parent)
    # TensorFlow's own profiler server (--profiler_port) runs in the model process only; a UNIX
    # socket (--grpc_socket_path) cannot be shared (no SO_REUSEPORT): the first worker serves it
    own = ["--profiler_port=0"] + (["--grpc_socket_path="] if index > 0 else [])
    flags = parse_or_exit([*(sys.argv[1:] if argv is None else argv), *own])
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[w{index}]: %(message)s")
    try:
        config = read_config_files(flags)
    except ConfigError as exc:
        sys.stderr.write(f"model-server worker {index}: {exc}\n")
        return 1
    sock = socket.socket(fileno=sock_fd)
    region = Region(size, fd=mem_fd)
    return asyncio.run(FrontendServer(flags, config, index, sock, region).run())


if __name__ == "__main__":
    sys.exit(main())
