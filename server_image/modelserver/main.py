"""`model-server`: wires flags, config, manager, gRPC and REST on one asyncio event loop.

Model calls run off the loop on a thread pool (runner.DirectRunner); loads on their own pool.
SIGTERM / SIGINT drain: readiness turns 503, the REST port stops accepting connections and
answers with "Connection: close", new gRPC calls are held for DRAIN_HOLD_SECONDS; then gRPC shuts
down (GOAWAY), the held and in-flight requests finish (up to --drain_timeout_seconds), and the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelserver import __version__
from modelserver.batching.options import BatchingConfigError, BatchingOptions, load_batching_parameters
from modelserver.config.flags import Flags, ignored_combinations, parse_or_exit, unimplemented_given
from modelserver.config.model_config import (
    ConfigError,
    ModelConfig,
    load_model_config_file,
    load_monitoring_config,
    single_model_config,
)
from modelserver.core.errors import ServingError
from modelserver.core.pollers import apply_initial_routing, start_pollers
from modelserver.protocol.tls import TlsConfig, load_ssl_config, server_credentials
from modelserver.warmup.sources import load_plan

log = logging.getLogger("modelserver")

# On SIGTERM, how long new gRPC calls are held (then served) and REST answers with
# "Connection: close" before the servers shut down.
DRAIN_HOLD_SECONDS = 0.25


def initial_model_configs(flags: Flags) -> list[ModelConfig]:
    if flags.model_config_file:
        return load_model_config_file(flags.model_config_file)
    return single_model_config(flags.model_name, flags.model_base_path)


def tf_thread_counts(flags: Flags) -> tuple[int, int]:
    """(intra, inter) op threads; 0 leaves TensorFlow's default (sized for the host)."""
    both = flags.tensorflow_session_parallelism
    return (flags.tensorflow_intra_op_parallelism or both, flags.tensorflow_inter_op_parallelism or both)


def rest_api_port(flags: Flags) -> int:
    """The REST port to open: 0 (none) when it equals the gRPC port, as TF Serving does."""
    return 0 if flags.rest_api_port == flags.port else flags.rest_api_port


def saved_model_tags(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip()) or ("serve",)


def gpu_memory_limit_mb(total_mb: int, fraction: float) -> int:
    return max(1, int(total_mb * fraction))


def _gpu_total_memory_mb() -> list[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split() if x.strip().isdigit()]


def configure_tensorflow(flags: Flags) -> None:
    """Thread counts and GPU memory (growth, or a fixed fraction per GPU) before TF starts."""
    import tensorflow as tf

    intra, inter = tf_thread_counts(flags)
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    fraction = float(flags.per_process_gpu_memory_fraction)
    totals = _gpu_total_memory_mb() if fraction > 0 else []
    for i, gpu in enumerate(gpus):
        if fraction > 0 and i < len(totals):
            limit = gpu_memory_limit_mb(totals[i], fraction)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            log.info("GPU %d: memory limited to %d MB (%.2f of %d MB)", i, limit, fraction, totals[i])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)


async def serve(flags: Flags, configs: list[ModelConfig], monitoring_config: object | None,
                batching_options: BatchingOptions | None = None, tls: TlsConfig | None = None,
                warmup_plan: object | None = None) -> int:
    import grpc

    from modelserver.batching.scheduler import batcher_for
    from modelserver.core.manager import Manager
    from modelserver.core.runner import DirectRunner
    from modelserver.core.servable import SessionOptions
    from modelserver.core.state import ServerState
    from modelserver.observability import metrics, tracing
    from modelserver.protocol.grpc_service import add_services, server_options
    from modelserver.protocol.rest import make_app
    from modelserver.warmup import replay as warmup

    loop = asyncio.get_running_loop()
    model_pool = ThreadPoolExecutor(flags.model_threads or os.cpu_count() or 2, thread_name_prefix="model")
    load_pool = ThreadPoolExecutor(flags.num_load_threads or 2, thread_name_prefix="load")
    manager = Manager(
        load_pool,
        allow_unavailable_labels=flags.allow_version_labels_for_unavailable_models,
        max_num_load_retries=flags.max_num_load_retries,
        load_retry_interval_s=flags.load_retry_interval_micros / 1e6,
        tags=saved_model_tags(flags.saved_model_tags),
        session_options=SessionOptions(thread_spinning=flags.tensorflow_thread_spinning,
                                       caller_thread=flags.tensorflow_caller_thread),
    )
    state = ServerState(flags, manager, DirectRunner(model_pool, flags.inline_call_max_us / 1e6),
                        monitoring_config=monitoring_config)
    # batching, warmup, metrics, tracing: plugged into the runner and hook points
    server_metrics = metrics.install(state, batching_options.thread_pool_name if batching_options else "")
    batcher = None
    if batching_options is not None:
        batcher = batcher_for(batching_options, flags, server_metrics.record_batch if server_metrics else None)
        state.default_runner = batcher
        if server_metrics is not None:
            server_metrics.add_queue_depth_source(batcher.queue_depth)
            server_metrics.add_busy_threads_source(batcher.busy_threads)
    manager.on_version_loaded = warmup.load_hook(flags.enable_model_warmup,
                                                 flags.num_request_iterations_for_warmup, server_metrics, warmup_plan)
    try:
        tracer = tracing.install(state)
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    if flags.profiler_port:
        tracing.start_profiler_server(flags.profiler_port)
        log.info("TensorFlow profiler server at port %d", flags.profiler_port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    host = flags.bind_address
    grpc_server = None
    if flags.port or flags.grpc_socket_path:
        try:
            options = server_options(flags.grpc_channel_arguments)
        except ValueError as exc:
            log.error("%s", exc)
            return 1
        grpc_server = grpc.aio.server(options=options)
        add_services(grpc_server, state)
        if flags.enable_profiler:  # TensorBoard's profile capture, on the gRPC port as in TF Serving
            from modelserver.observability.profiler import add_service as add_profiler_service

            add_profiler_service(grpc_server)
        grpc_host = f"[{host}]" if ":" in host else host
        addresses = [f"{grpc_host}:{flags.port}"] if flags.port else []
        if flags.grpc_socket_path:
            addresses.append(f"unix:{flags.grpc_socket_path}")
        credentials = server_credentials(tls) if tls is not None else None
        for address in addresses:
            try:
                bound = (grpc_server.add_secure_port(address, credentials) if credentials is not None
                         else grpc_server.add_insecure_port(address))
            except RuntimeError:
                bound = 0
            if not bound:
                log.error("cannot bind gRPC to %s", address)
                return 1
        await grpc_server.start()
        log.info("Running gRPC ModelServer at %s%s ...", ", ".join(addresses),
                 "" if tls is None else " (TLS, client certificates required)" if tls.client_verify else " (TLS)")
    rest_runner = None
    rest_port = rest_api_port(flags)
    if rest_port != flags.rest_api_port:
        log.error("--rest_api_port cannot be same as --port. Please use a different port for HTTP/REST API. "
                  "Skipped exporting HTTP/REST API.")
    if rest_port:
        from aiohttp import web

        rest_runner = web.AppRunner(make_app(state), shutdown_timeout=flags.drain_timeout_seconds,
                                    access_log=None)
        await rest_runner.setup()
        try:
            await web.TCPSite(rest_runner, host, rest_port).start()
        except OSError as exc:
            log.error("cannot bind the REST port %s:%d: %s", host, rest_port, exc)
            await rest_runner.cleanup()
            if grpc_server is not None:
                await grpc_server.stop(None)
            return 1
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, rest_port)
    try:
        admin_runner = await start_admin(flags, manager)
    except OSError as exc:
        log.error("cannot bind the admin port %s:%d: %s", host, flags.admin_port, exc)
        if rest_runner is not None:
            await rest_runner.cleanup()
        if grpc_server is not None:
            await grpc_server.stop(None)
        return 1

    rc = 0
    tasks: list[asyncio.Task[None]] = []
    try:
        manager.routing_required = bool(flags.routing_config_file)
        load = asyncio.ensure_future(manager.reload(configs))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([load, stopped], return_when=asyncio.FIRST_COMPLETED)
        if load.done():
            try:
                load.result()
            except ServingError as exc:
                log.error("model config rejected: %s", exc.message)
                rc = 1
                stop.set()
            routed = bool(flags.routing_config_file) and await apply_initial_routing(
                manager, Path(flags.routing_config_file))
            if rc == 0:
                log.info("initial load done; ready=%s", manager.is_ready())
            tasks = start_pollers(flags, manager, routed)
        await stopped
    finally:
        log.info("draining: %d request(s) in flight", state.in_flight)
        state.draining = True  # readiness 503
        for t in tasks:
            t.cancel()
        drains: list[Awaitable[object]] = []
        if rc == 0:
            # Clients must not lose a request that the server has taken but not answered:
            # gRPC's shutdown answers the calls it has accepted but not yet handed to a handler
            # CANCELLED, and closing an idle keep-alive HTTP connection resets a request already
            # sent on it. So, for a moment, the REST port takes no new connections and answers
            # on the open ones with "Connection: close", and new gRPC calls are held in the
            # handlers; clients waiting on those answers send nothing new. Then gRPC shuts down
            # (GOAWAY: clients reconnect elsewhere) and the held calls are served.
            if rest_runner is not None:
                for site in list(rest_runner.sites):
                    await site.stop()
            if grpc_server is not None:
                state.drain_gate = asyncio.Event()
            await asyncio.sleep(DRAIN_HOLD_SECONDS)
        if grpc_server is not None:
            drains.append(asyncio.ensure_future(grpc_server.stop(flags.drain_timeout_seconds)))
            await asyncio.sleep(0.05)  # shutdown has begun
            if state.drain_gate is not None:
                state.drain_gate.set()
        if rest_runner is not None:
            drains.append(rest_runner.cleanup())
        if admin_runner is not None:
            drains.append(admin_runner.cleanup())  # type: ignore[attr-defined]
        await asyncio.gather(*drains, return_exceptions=True)
        if not load.done():
            load.cancel()
            with contextlib.suppress(BaseException):
                await load
        if batcher is not None:
            await batcher.close()
        if tracer is not None:
            tracer.close()
        model_pool.shutdown(wait=True, cancel_futures=True)
        load_pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")
    return rc


def check_admin_and_routing_flags(flags: Flags) -> None:
    """A routing file that cannot be read or parsed, or an admin port without a usable token,
    is a start-up error (ConfigError), like any other config file."""
    from modelserver.core.routing import load_table
    from modelserver.protocol.admin import TokenFile

    if flags.routing_config_file:
        try:
            load_table(flags.routing_config_file)
        except ServingError as exc:
            raise ConfigError(exc.message) from None
    if flags.admin_port:
        if not flags.admin_token_file:
            raise ConfigError("--admin_port needs --admin_token_file (the admin port is never open without a token)")
        try:
            TokenFile(flags.admin_token_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--admin_token_file: {getattr(exc, 'strerror', None) or exc}") from None


async def start_admin(flags: Flags, manager: object) -> object | None:
    """The admin port's aiohttp runner (None when off); raises OSError when it cannot bind."""
    if not flags.admin_port:
        return None
    from aiohttp import web

    from modelserver.protocol.admin import TokenFile, make_admin_app

    runner = web.AppRunner(make_admin_app(manager, TokenFile(flags.admin_token_file)),  # type: ignore[arg-type]
                           access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, flags.bind_address, flags.admin_port).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("admin API (routing pushes) at %s:%d", flags.bind_address, flags.admin_port)
    return runner


def main(argv: list[str] | None = None) -> int:
    flags = parse_or_exit(sys.argv[1:] if argv is None else argv)
    if flags.version:
        print(f"model-server {__version__} (TensorFlow Serving compatible)")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in unimplemented_given(flags):
        log.warning("flag --%s is accepted for compatibility but has no effect", name)
    for message in ignored_combinations(flags):
        log.warning("%s", message)
    try:
        configs = initial_model_configs(flags)
        monitoring = load_monitoring_config(flags.monitoring_config_file) if flags.monitoring_config_file else None
        batching = load_batching_parameters(flags.batching_parameters_file) if flags.enable_batching else None
        tls = load_ssl_config(flags.ssl_config_file) if flags.ssl_config_file else None
        check_admin_and_routing_flags(flags)
        plan = load_plan(flags.warmup_config_file) if flags.warmup_config_file else None
    except (ConfigError, BatchingConfigError) as exc:
        sys.stderr.write(f"model-server: {exc}\n")
        return 1
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    configure_tensorflow(flags)
    return asyncio.run(serve(flags, configs, monitoring, batching, tls, plan))


if __name__ == "__main__":
    sys.exit(main())
