"""The model server's lifecycle as an object: `start()`, `wait()`, `drain()`, `stop()`.

`start()` builds the parts and binds the ports as named steps (as TF Serving's
`Server::BuildAndStart`), each pushing its own cleanup on an AsyncExitStack, so that a step that
fails (a port that cannot be bound, unusable trace or channel settings: `StartError`) unwinds
exactly what the steps before it started:

    core       the thread pools, the version manager and the shared ServerState
    observe    Prometheus metrics, the trace file, the TensorFlow profiler server
    batching   the shared Batcher (`--enable_batching`) and the warmup hook of the manager
    grpc       PredictionService and ModelService (and ProfilerService) on --port / --grpc_socket_path
    rest       the REST API on --rest_api_port
    admin      the admin API (routing pushes) on --admin_port
    workers    with --frontend_workers above 1: the front-end worker processes, which bind the gRPC
               and REST ports instead of this process (workers/pool.py)

`wait(stop)` loads the models, applies the routing file, starts the pollers and serves until
`stop` is set. `drain()` is the shutdown protocol: readiness turns 503; for DRAIN_HOLD_SECONDS the
REST port takes no new connections and answers on the open ones with "Connection: close", and new
gRPC calls are held; then gRPC shuts down (GOAWAY) while the held and in-flight requests finish, up
to --drain_timeout_seconds (with front-end workers, each of them does that while this process
answers their model calls, and this process stops once they have exited). `stop()` unwinds the
stack: the batcher finishes its queues, the trace file is closed, the thread pools are shut down.
`run()` does all of it, with SIGTERM and SIGINT setting `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from modelserver.batching.options import BatchingOptions
from modelserver.batching.scheduler import Batcher, batcher_for
from modelserver.config.flags import Flags, rest_api_port
from modelserver.config.model_config import ModelConfig
from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager
from modelserver.core.pollers import apply_initial_routing, start_pollers
from modelserver.core.runner import DirectRunner
from modelserver.core.servable import SessionOptions
from modelserver.core.state import ServerState
from modelserver.core.storage import default_storage
from modelserver.observability import metrics, profiler, tracing
from modelserver.protocol.admin import TokenFile, make_admin_app
from modelserver.protocol.grpc_service import add_services, server_options
from modelserver.protocol.rest import RestApi, make_app
from modelserver.protocol.tls import TlsConfig, server_credentials
from modelserver.protocol.v2_grpc import add_services as add_v2_services
from modelserver.protocol.v2_model import ModelStats
from modelserver.protocol.v2_rest import V2Rest
from modelserver.warmup import replay as warmup
from modelserver.warmup.sources import WarmupPlan
from modelserver.workers.cores import frontend_worker_count
from modelserver.workers.pool import WorkerPool

log = logging.getLogger("modelserver")

# On SIGTERM, how long new gRPC calls are held (then served) and REST answers with
# "Connection: close" before the servers shut down.
DRAIN_HOLD_SECONDS = 0.25


class StartError(Exception):
    """A part that could not be started (the server reports it and exits 1)."""


def saved_model_tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) or ("serve",)


class ModelServer:
    """One model-server: its parts, its ports, and the order they start and stop in."""

    reuse_port = False  # front-end workers share their ports (SO_REUSEPORT); a lone server does not

    def __init__(self, flags: Flags, configs: list[ModelConfig], monitoring_config: object | None = None,
                 batching_options: BatchingOptions | None = None, tls: TlsConfig | None = None,
                 warmup_plan: WarmupPlan | None = None, argv: list[str] | None = None) -> None:
        self.flags = flags
        self.configs = configs
        self.monitoring_config = monitoring_config
        self.batching_options = batching_options
        self.tls = tls
        self.warmup_plan = warmup_plan
        self.argv = argv or []  # the command line, for front-end workers
        self.workers: WorkerPool | None = None
        self.manager: Manager | None = None
        self.state: ServerState | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.rest_runner: web.AppRunner | None = None
        self._server_metrics: metrics.ServerMetrics | None = None
        self.v2_stats = ModelStats()  # Triton's statistics extension of the v2 protocol
        self._grpc_grace: float | None = None  # None (cancel calls) until drain() gives the grace
        self._closes: list[Callable[[], Awaitable[None]]] = []  # the ports' closes, gRPC first
        self._load: asyncio.Future[None] | None = None
        self._pollers: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    # -- the lifecycle --
    async def start(self) -> ModelServer:
        """Builds the parts and binds the ports; on failure, unwinds what was started and raises."""
        try:
            for step in (self._start_core, self._start_observe, self._start_batching, self._start_grpc,
                         self._start_rest, self._start_admin, self._start_workers):
                await step()
        except BaseException:
            await self.stop()
            raise
        return self

    async def wait(self, stop: asyncio.Event) -> int:
        """Loads the models and serves until `stop` is set: 0, or 1 when the model config is
        rejected (then it returns at once)."""
        assert self.manager is not None
        self.manager.routing_required = bool(self.flags.routing_config_file)
        self._load = asyncio.ensure_future(self.manager.reload(self.configs))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([self._load, stopped], return_when=asyncio.FIRST_COMPLETED)
            if self._load.done() and not await self._serve_loaded():
                return 1
            await stopped
            return 0
        finally:
            stopped.cancel()

    async def drain(self, hold: bool = True) -> None:
        """Readiness off, then every port closes while the requests it took finish (up to
        --drain_timeout_seconds); with `hold`, new requests are held or turned away first."""
        assert self.state is not None
        log.info("draining: %d request(s) in flight", self.state.in_flight)
        self.state.draining = True  # readiness 503
        for t in self._pollers:
            t.cancel()
        if self.workers is not None:
            await self.workers.drain(self.flags.drain_timeout_seconds)
        if hold:
            await self._hold_new_requests()
        self._grpc_grace = self.flags.drain_timeout_seconds
        closing = [asyncio.ensure_future(close()) for close in self._closes]
        if self.grpc_server is not None:
            await asyncio.sleep(0.05)  # shutdown has begun
            if self.state.drain_gate is not None:
                self.state.drain_gate.set()
        await asyncio.gather(*closing, return_exceptions=True)

    async def stop(self) -> None:
        """Unwinds every step in reverse: ports (if drain() has not closed them), the initial
        load, the batcher, the trace file, the thread pools."""
        await self._stack.aclose()

    async def run(self) -> int:
        """start, wait for SIGTERM/SIGINT, drain, stop: the process's exit code."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
        except StartError as exc:
            log.error("%s", exc)
            return 1
        rc = 0
        try:
            rc = await self.wait(stop)
        finally:
            try:
                await self.drain(hold=rc == 0)
            finally:
                await self.stop()
            log.info("stopped")
        return rc

    async def _hold_new_requests(self) -> None:
        """Clients must not lose a request that the server has taken but not answered: gRPC's
        shutdown answers the calls it has accepted but not yet handed to a handler CANCELLED, and
        closing an idle keep-alive HTTP connection resets a request already sent on it. So, for a
        moment, the REST port takes no new connections and answers on the open ones with
        "Connection: close", and new gRPC calls are held in the handlers; clients waiting on those
        answers send nothing new. Then gRPC shuts down (GOAWAY: clients reconnect elsewhere) and
        the held calls are served."""
        assert self.state is not None
        if self.rest_runner is not None:
            for site in list(self.rest_runner.sites):
                await site.stop()
        if self.grpc_server is not None:
            self.state.drain_gate = asyncio.Event()
        await asyncio.sleep(DRAIN_HOLD_SECONDS)

    async def _serve_loaded(self) -> bool:
        """Once the initial load is done: the routing file, then the pollers; False (logged) when
        the model config was rejected."""
        assert self.manager is not None and self._load is not None
        try:
            self._load.result()
        except ServingError as exc:
            log.error("model config rejected: %s", exc.message)
            return False
        routing_file = self.flags.routing_config_file
        routing_text = await apply_initial_routing(self.manager, Path(routing_file)) if routing_file else None
        log.info("initial load done; ready=%s", self.manager.is_ready())
        self._pollers = start_pollers(self.flags, self.manager, self.configs, routing_text)
        return True

    async def _cancel_load(self) -> None:
        if self._load is not None and not self._load.done():
            self._load.cancel()
            with contextlib.suppress(BaseException):
                await self._load

    # -- the steps --
    async def _start_core(self) -> None:
        flags = self.flags
        load_pool = ThreadPoolExecutor(flags.num_load_threads or 2, thread_name_prefix="load")
        self._stack.callback(load_pool.shutdown, wait=False, cancel_futures=True)
        model_pool = ThreadPoolExecutor(flags.model_threads or os.cpu_count() or 2, thread_name_prefix="model")
        self._stack.callback(model_pool.shutdown, wait=True, cancel_futures=True)
        storage = default_storage(flags.model_cache_dir, flags.model_cache_max_bytes, flags.model_download_concurrency)
        self._stack.push_async_callback(storage.close)
        self.manager = Manager(
            load_pool,
            allow_unavailable_labels=flags.allow_version_labels_for_unavailable_models,
            max_num_load_retries=flags.max_num_load_retries,
            load_retry_interval_s=flags.load_retry_interval_micros / 1e6,
            tags=saved_model_tags(flags.saved_model_tags),
            session_options=SessionOptions(thread_spinning=flags.tensorflow_thread_spinning,
                                           caller_thread=flags.tensorflow_caller_thread),
            storage=storage,
        )
        self.state = ServerState(flags, self.manager, DirectRunner(model_pool, flags.inline_call_max_us / 1e6),
                                 monitoring_config=self.monitoring_config)
        self.state.request_hooks.append(self.v2_stats.finish)  # every protocol's inference requests

    async def _start_observe(self) -> None:
        assert self.state is not None
        options = self.batching_options
        self._server_metrics = metrics.install(self.state, options.thread_pool_name if options else "")
        try:
            tracer = tracing.install(self.state, self._server_metrics)
        except ValueError as exc:
            raise StartError(str(exc)) from None
        if tracer is not None:
            self._stack.callback(tracer.close)
        if self.flags.profiler_port:
            tracing.start_profiler_server(self.flags.profiler_port)
            log.info("TensorFlow profiler server at port %d", self.flags.profiler_port)

    async def _start_batching(self) -> None:
        assert self.state is not None and self.manager is not None
        flags, server_metrics = self.flags, self._server_metrics
        if self.batching_options is not None:
            batcher: Batcher = batcher_for(self.batching_options, flags,
                                           server_metrics.record_batch if server_metrics else None)
            self._stack.push_async_callback(batcher.close)
            self.state.default_runner = batcher
            if server_metrics is not None:
                server_metrics.add_queue_depth_source(batcher.queue_depth)
                server_metrics.add_busy_threads_source(batcher.busy_threads)
        self.manager.on_version_loaded = warmup.load_hook(
            flags.enable_model_warmup, flags.num_request_iterations_for_warmup, server_metrics, self.warmup_plan)
        self._stack.push_async_callback(self._cancel_load)  # unwound after the ports close

    async def _start_grpc(self) -> None:
        assert self.state is not None
        flags = self.flags
        if not (flags.port or flags.grpc_socket_path) or self._worker_count() > 1:
            return
        try:
            options = server_options(flags.grpc_channel_arguments, flags.max_request_tensor_bytes)
        except ValueError as exc:
            raise StartError(str(exc)) from None
        if self.reuse_port:
            options = [(k, 1 if k == "grpc.so_reuseport" else v) for k, v in options]
        server = grpc.aio.server(options=options)
        add_services(server, self.state)
        add_v2_services(server, self.state, self.v2_stats)  # the Open Inference Protocol (KServe v2)
        if flags.enable_profiler:  # TensorBoard's profile capture, on the gRPC port as in TF Serving
            profiler.add_service(server, service=self._profiler_service())
        self._add_close(lambda: server.stop(self._grpc_grace))
        host = f"[{flags.bind_address}]" if ":" in flags.bind_address else flags.bind_address
        addresses = [f"{host}:{flags.port}"] if flags.port else []
        if flags.grpc_socket_path:
            addresses.append(f"unix:{flags.grpc_socket_path}")
        for address in addresses:
            _bind_grpc(server, address, self.tls)
        await server.start()
        self.grpc_server = server
        tls = self.tls
        log.info("Running gRPC ModelServer at %s%s ...", ", ".join(addresses),
                 "" if tls is None else " (TLS, client certificates required)" if tls.client_verify else " (TLS)")

    async def _start_rest(self) -> None:
        assert self.state is not None
        flags = self.flags
        port = rest_api_port(flags)
        if port != flags.rest_api_port:
            log.error("--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST API. "
                      "Skipped exporting HTTP/REST API.")
        if not port or self._worker_count() > 1:
            return

        def add_v2_routes(app: web.Application, api: RestApi) -> None:  # the Open Inference Protocol (KServe v2)
            assert self.state is not None
            V2Rest(self.state, api, self.v2_stats).add_routes(app)

        runner = web.AppRunner(make_app(self.state, add_v2_routes), shutdown_timeout=flags.drain_timeout_seconds, access_log=None,
                               keepalive_timeout=flags.rest_api_idle_timeout_seconds)
        await self._bind_site(runner, port, "the REST port")
        self.rest_runner = runner
        log.info("Exporting HTTP/REST API at:%s:%d ...", flags.bind_address, port)

    async def _start_admin(self) -> None:
        flags = self.flags
        if not flags.admin_port:
            return
        runner = web.AppRunner(make_admin_app(self.manager, TokenFile(flags.admin_token_file),  # type: ignore[arg-type]
                                              self._workers_synced),
                               access_log=None, keepalive_timeout=flags.rest_api_idle_timeout_seconds)
        await self._bind_site(runner, flags.admin_port, "the admin port")
        log.info("admin API (routing pushes) at %s:%d", flags.bind_address, flags.admin_port)

    async def _start_workers(self) -> None:
        count = self._worker_count()
        if count <= 1:
            return
        assert self.state is not None
        flags = self.flags
        self._check_ports_free()
        service = self._profiler_service() if flags.enable_profiler and (flags.port or flags.grpc_socket_path) else None
        pool = WorkerPool(self.state, self.argv, count, flags.frontend_worker_shm_bytes, self._server_metrics, service)
        self._stack.push_async_callback(pool.stop)
        try:
            await pool.start()
        except ServingError as exc:
            raise StartError(exc.message) from None
        self.workers = pool

    async def _workers_synced(self) -> None:
        if self.workers is not None:
            await self.workers.sync()

    def _check_ports_free(self) -> None:
        """Workers bind with SO_REUSEPORT, which would let them share a port with another server
        of the same user that binds it that way too; so the ports are bound once here first,
        without it, and a port in use is a start-up error (as for one process)."""
        flags = self.flags
        for port, what in ((flags.port, "gRPC"), (rest_api_port(flags), "the REST port")):
            if not port:
                continue
            family = socket.AF_INET6 if ":" in flags.bind_address else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((flags.bind_address, port))
                except OSError as exc:
                    raise StartError(f"cannot bind {what} {flags.bind_address}:{port}: {exc}") from None

    # -- helpers of the steps --
    def _worker_count(self) -> int:
        return frontend_worker_count(self.flags.frontend_workers)

    def _profiler_service(self) -> profiler.ProfilerService:
        return profiler.ProfilerService(self.flags.profiler_dir, self.flags.profiler_max_duration_seconds)

    async def _bind_site(self, runner: web.AppRunner, port: int, what: str) -> None:
        """Sets `runner` up on bind_address:port, its cleanup on the stack; StartError when the
        port cannot be bound."""
        await runner.setup()
        self._add_close(runner.cleanup)
        try:
            await web.TCPSite(runner, self.flags.bind_address, port, reuse_port=self.reuse_port or None).start()
        except OSError as exc:
            raise StartError(f"cannot bind {what} {self.flags.bind_address}:{port}: {exc}") from None

    def _add_close(self, close: Callable[[], Awaitable[Any]]) -> None:
        """A port's close, run once: by drain() (all ports at once), else when the stack unwinds."""
        closed = False

        async def once() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await close()

        self._closes.append(once)
        self._stack.push_async_callback(once)


def _bind_grpc(server: grpc.aio.Server, address: str, tls: TlsConfig | None) -> None:
    """Adds a listening address (TLS when configured); StartError when it cannot be bound."""
    credentials = server_credentials(tls) if tls is not None else None
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if not bound:
        raise StartError(f"cannot bind gRPC to {address}")
