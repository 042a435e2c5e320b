"""`model-server`: the command line. Parses tensorflow_model_server's flags, reads and checks
every config file they name (a file that cannot be used is reported and exits 1 before anything
starts), configures TensorFlow (threads, GPU memory), then runs a ModelServer (server.py: the
ports, the models, and the drain on SIGTERM / SIGINT) on one asyncio event loop until it stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from modelserver import __version__
from modelserver.batching.options import BatchingOptions, load_batching_parameters
from modelserver.config.files import ConfigError
from modelserver.config.flags import Flags, ignored_combinations, parse_or_exit, unimplemented_given
from modelserver.config.model_config import (
    ModelConfig,
    load_model_config_file,
    load_monitoring_config,
    single_model_config,
)
from modelserver.core.errors import ServingError
from modelserver.core.routing import load_table
from modelserver.protocol.admin import TokenFile
from modelserver.protocol.tls import TlsConfig, load_ssl_config
from modelserver.warmup.sources import WarmupPlan, load_plan
from modelserver.workers.cores import frontend_worker_count

log = logging.getLogger("modelserver")


def initial_model_configs(flags: Flags) -> list[ModelConfig]:
    if flags.model_config_file:
        return load_model_config_file(flags.model_config_file)
    return single_model_config(flags.model_name, flags.model_base_path)


def tf_thread_counts(flags: Flags) -> tuple[int, int]:
    """(intra, inter) op threads; 0 leaves TensorFlow's default (sized for the host)."""
    both = flags.tensorflow_session_parallelism
    return (flags.tensorflow_intra_op_parallelism or both, flags.tensorflow_inter_op_parallelism or both)


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


def raise_open_files_limit() -> tuple[int, int] | None:
    """Raises this process's soft limit on open files to its hard limit (every connection is a
    descriptor: at the usual soft limit of 1,024, a thousand idle connections stop the server
    accepting any other). Returns (old, new), or None when it was already there or cannot move."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return None
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return None
    return soft, target


def check_admin_and_routing_flags(flags: Flags) -> None:
    """A routing file that cannot be read or parsed, or an admin port without a usable token,
    is a start-up error (ConfigError), like any other config file."""
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


@dataclass(frozen=True, slots=True)
class ConfigFiles:
    """Everything the flags point at, read and checked before anything starts."""

    models: list[ModelConfig]
    monitoring: Any = None  # MonitoringConfig, or None
    batching: BatchingOptions | None = None
    tls: TlsConfig | None = None
    warmup_plan: WarmupPlan | None = None


def read_config_files(flags: Flags) -> ConfigFiles:
    """Reads every config file the flags name; ConfigError (BatchingConfigError included) names
    the first that cannot be used."""
    models = initial_model_configs(flags)
    monitoring = load_monitoring_config(flags.monitoring_config_file) if flags.monitoring_config_file else None
    batching = load_batching_parameters(flags.batching_parameters_file) if flags.enable_batching else None
    tls = load_ssl_config(flags.ssl_config_file) if flags.ssl_config_file else None
    check_admin_and_routing_flags(flags)
    try:
        frontend_worker_count(flags.frontend_workers)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    plan = load_plan(flags.warmup_config_file) if flags.warmup_config_file else None
    return ConfigFiles(models, monitoring, batching, tls, plan)


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
        config = read_config_files(flags)
    except ConfigError as exc:
        sys.stderr.write(f"model-server: {exc}\n")
        return 1
    raised = raise_open_files_limit()
    if raised is not None:
        log.info("open files limit raised from %d to %d (RLIMIT_NOFILE)", *raised)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    configure_tensorflow(flags)
    # Imported here, after TensorFlow is configured: the server's modules import TensorFlow.
    from modelserver.server import ModelServer

    server = ModelServer(flags, config.models, config.monitoring, config.batching, config.tls, config.warmup_plan,
                         argv=sys.argv[1:] if argv is None else argv)
    return asyncio.run(server.run())


if __name__ == "__main__":
    sys.exit(main())
