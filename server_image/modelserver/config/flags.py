"""tensorflow_model_server's command line, parsed the way its flag library does.

Every flag that tensorflow_model_server knows is accepted (`--name=value`, `--name value`, bool
`--flag`, `--flag=true|false`, `--noflag`); flags we do not implement yet are accepted with a
warning so existing command lines keep working; unknown flags print the usage and exit 1.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from modelserver.contract import GRPC_PORT

# name: (type, default, implemented, help)
_FLAGS: dict[str, tuple[type, Any, bool, str]] = {
    "port": (int, GRPC_PORT, True, "gRPC port (0 = no gRPC server)"),
    "grpc_socket_path": (str, "", True, "also serve gRPC on this UNIX socket"),
    "rest_api_port": (int, 0, True, "REST (HTTP/JSON) port; 0 = no REST server"),
    "rest_api_num_threads": (int, 0, False, "REST threads (the REST server is asyncio here)"),
    "rest_api_timeout_in_ms": (int, 30000, True, "timeout of a REST request"),
    "rest_api_enable_cors_support": (bool, False, False, "CORS headers on REST"),
    "enable_batching": (bool, False, True, "enable dynamic batching"),
    "allow_version_labels_for_unavailable_models": (bool, False, True,
        "allow assigning a new label to a version that is not loaded yet"),
    "batching_parameters_file": (str, "", True, "BatchingParameters text proto"),
    "enable_per_model_batching_parameters": (bool, False, False, "per-model batching_params.pbtxt"),
    "model_config_file": (str, "", True, "ModelServerConfig text proto with a model_config_list"),
    "model_config_file_poll_wait_seconds": (int, 0, True, "re-read the model config file every N s (0 = off)"),
    "model_name": (str, "default", True, "model name (single-model mode)"),
    "model_base_path": (str, "", True, "model base path (single-model mode)"),
    "num_load_threads": (int, 0, True, "threads that load models (0 = 2)"),
    "num_unload_threads": (int, 0, False, "threads that unload models"),
    "max_num_load_retries": (int, 5, True, "retries of a failed version load"),
    "load_retry_interval_micros": (int, 60_000_000, True, "wait between load retries"),
    "file_system_poll_wait_seconds": (int, 1, True, "poll base paths for new versions every N s (0 = once)"),
    "flush_filesystem_caches": (bool, True, False, "flush file-system caches after loading"),
    "tensorflow_session_parallelism": (int, 0, True, "TF threads (intra and inter op)"),
    "tensorflow_session_config_file": (str, "", False, "SessionConfig text proto"),
    "tensorflow_intra_op_parallelism": (int, 0, True, "TF intra-op threads"),
    "tensorflow_inter_op_parallelism": (int, 0, True, "TF inter-op threads"),
    "use_alts_credentials": (bool, False, False, "ALTS credentials"),
    "ssl_config_file": (str, "", True, "SSLConfig text proto: serve gRPC over TLS (mutual with client_verify)"),
    "platform_config_file": (str, "", False, "PlatformConfigMap text proto"),
    "per_process_gpu_memory_fraction": (float, 0.0, True, "fraction of each GPU's memory to use (0 = grow)"),
    "saved_model_tags": (str, "serve", True, "MetaGraphDef tags (comma separated)"),
    "grpc_channel_arguments": (str, "", True, "gRPC server arguments, key=value,key=value"),
    "grpc_max_threads": (int, 0, False, "gRPC threads (asyncio here)"),
    "enable_model_warmup": (bool, True, True, "replay assets.extra/tf_serving_warmup_requests"),
    "num_request_iterations_for_warmup": (int, 1, True, "replays of each warmup record"),
    "version": (bool, False, True, "print the version and exit"),
    "monitoring_config_file": (str, "", True, "MonitoringConfig text proto"),
    "remove_unused_fields_from_bundle_metagraph": (bool, True, False, "drop unused MetaGraphDef fields"),
    "prefer_tflite_model": (bool, False, False, "prefer model.tflite"),
    "num_tflite_pools": (int, 1, False, "TFLite pools"),
    "num_tflite_interpreters_per_pool": (int, 1, False, "TFLite interpreters per pool"),
    "enable_signature_method_name_check": (bool, False, False, "check Predict signature method names"),
    "xla_cpu_compilation_enabled": (bool, False, False, "XLA on CPU"),
    "enable_profiler": (bool, True, True, "TF profiler service on the gRPC port"),
    "thread_pool_factory_config_file": (str, "", False, "ThreadPoolFactoryConfig text proto"),
    "mixed_precision": (str, "", False, "bfloat16 mixed precision"),
    "skip_initialize_tpu": (bool, False, False, "skip TPU initialization"),
    "enable_grpc_healthcheck_service": (bool, False, False, "grpc.health.v1 service"),
    "use_tflite_model": (bool, False, False, "deprecated; prefer_tflite_model"),
    # our own (names that tensorflow_model_server does not use)
    "rest_api_max_request_bytes": (int, 64 * 1024 * 1024, True, "largest REST request body (413 above)"),
    "rest_api_idle_timeout_seconds": (float, 75.0, True,
        "close a REST or admin connection that sends no complete request head for this long after "
        "opening or after its last answer (idle keep-alive, slow headers)"),
    "max_request_tensor_bytes": (int, 64 * 1024 * 1024, True,
        "largest total size of a request's input tensors (and of a batch's merged inputs), counted from "
        "their declared shapes before anything is allocated; the default gRPC receive limit is twice it"),
    "enable_reload_config_rpc": (bool, True, True,
        "serve ModelService.HandleReloadConfigRequest (false: UNIMPLEMENTED)"),
    "profiler_dir": (str, "/tmp", True,
        "the only directory the profiler service writes captures under (a capture's repository_root "
        "must lie inside it)"),
    "profiler_max_duration_seconds": (float, 60.0, True, "longest profiler capture (longer ones are cut)"),
    "bind_address": (str, "0.0.0.0", True, "address the gRPC and REST servers listen on"),
    "model_threads": (int, 0, True, "threads that run model calls (0 = number of CPUs)"),
    "inline_call_max_us": (int, 500, True,
        "run a model call on the event loop when idle and its recent calls took less (0 = never)"),
    "tensorflow_thread_spinning": (bool, True, True,
        "TF pool threads spin after each op before sleeping (false: ConfigProto disable_thread_spinning)"),
    "tensorflow_caller_thread": (str, "auto", True,
        "run a signature's ops on the calling thread: auto (the faster, measured per signature) | always | never"),
    "frontend_workers": (str, "1", True,
        "processes that accept and decode requests (both protocols) beside the one that runs the models: "
        "a number, or auto (from the CPUs this container may use); 1 = one process, as tensorflow_model_server"),
    "frontend_worker_shm_bytes": (int, 32 * 1024 * 1024, True,
        "shared memory per front-end worker for tensors crossing to the model process (half each way)"),
    "drain_timeout_seconds": (float, 30.0, True, "on SIGTERM, wait this long for in-flight requests"),
    "trace_file": (str, "", True, "write request traces (JSON lines) to this file"),
    "trace_sample_rate": (int, 0, True, "trace every Nth request to --trace_file (0: every request)"),
    "profiler_port": (int, 0, True, "start the TensorFlow profiler server on this port (0 = off)"),
    "enable_tracing": (bool, False, True,
        "OpenTelemetry traces, exported as the OTEL_* variables say (OTLP over HTTP by default; also on when "
        "OTEL_TRACES_EXPORTER is set, off when it is none)"),
    "tracing_endpoint": (str, "", True,
        "the OTLP collector traces go to (turns tracing on; default: OTEL_EXPORTER_OTLP_ENDPOINT)"),
    "payload_log_url": (str, "", True,
        "send sampled requests and answers as CloudEvents (binary mode) to this HTTP sink (empty: off)"),
    "payload_log_mode": (str, "all", True, "what --payload_log_url receives: request | response | all"),
    "payload_log_sample_rate": (float, 1.0, True, "fraction of inference requests logged (0 to 1)"),
    "payload_log_queue_size": (int, 1000, True,
        "events waiting for the sink, at most (more are dropped and counted, never waited for)"),
    "payload_log_queue_bytes": (int, 64 * 1024 * 1024, True, "bytes of payload waiting for the sink, at most"),
    "routing_config_file": (str, "", True,
        "routing table (JSON: labels and traffic weights per model), polled with the model config"),
    "admin_port": (int, 0, True, "admin HTTP port for routing pushes (0 = off; needs --admin_token_file)"),
    "admin_token_file": (str, "", True, "file holding the admin port's bearer token"),
    "warmup_config_file": (str, "", True,
        "warmup requests: JSON {source: model|generated|requests, ...} (default: the model's own file)"),
    "model_cache_dir": (str, "", True,
        "where versions read from object storage (s3://, gs://, az://, https://) are downloaded and loaded from "
        "(default: <temp dir>/modelserver-cache)"),
    "model_cache_max_bytes": (int, 0, True,
        "downloaded versions that no model serves are removed, least recently used first, while the cache holds "
        "more than this (0: keep only what is served)"),
    "model_download_concurrency": (int, 8, True,
        "ranged reads (of at most 8 MiB each) in flight while downloading versions from object storage"),
}


@dataclass(frozen=True)
class Flags:
    """Parsed values (every known flag as an attribute) and the names given explicitly."""

    values: dict[str, Any]
    given: frozenset[str]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


# flags whose value must be one of these
_CHOICES: dict[str, tuple[str, ...]] = {"tensorflow_caller_thread": ("auto", "always", "never"),
                                        "payload_log_mode": ("request", "response", "all")}


class FlagError(ValueError):
    pass


_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _convert(name: str, typ: type, raw: str) -> Any:
    if typ is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise FlagError(f"Illegal value '{raw}' specified for bool flag '{name}'")
    try:
        return typ(raw)
    except ValueError:
        kind = {int: "int", float: "float"}.get(typ, typ.__name__)
        raise FlagError(f"Illegal value '{raw}' specified for {kind} flag '{name}'") from None


def parse_args(argv: list[str]) -> Flags:
    """Pure parser: raises FlagError naming the bad argument."""
    values = {k: v[1] for k, v in _FLAGS.items()}
    given: set[str] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            raise FlagError(f"Unexpected argument: {arg}")
        body = arg.lstrip("-")
        name, eq, raw = body.partition("=")
        if name not in _FLAGS and name.startswith("no") and not eq and _FLAGS.get(name[2:], (None,))[0] is bool:
            values[name[2:]] = False
            given.add(name[2:])
            continue
        if name not in _FLAGS:
            raise FlagError(f"Unknown argument {arg}")
        typ = _FLAGS[name][0]
        if not eq:
            if typ is bool:
                raw = "true"
            elif i < len(argv):
                raw = argv[i]
                i += 1
            else:
                raise FlagError(f"Missing value for flag --{name}")
        values[name] = _convert(name, typ, raw)
        if name in _CHOICES and values[name] not in _CHOICES[name]:
            raise FlagError(f"Illegal value '{raw}' specified for flag '{name}' (one of {', '.join(_CHOICES[name])})")
        given.add(name)
    return Flags(values, frozenset(given))


def unimplemented_given(flags: Flags) -> list[str]:
    """Flags the user set that are accepted but have no effect here (warned about at start)."""
    return sorted(n for n in flags.given if not _FLAGS[n][2])


def ignored_combinations(flags: Flags) -> list[str]:
    """Flags the user set that this command line makes ineffective (warned about at start)."""
    given = flags.given
    out = []
    if "batching_parameters_file" in given and not flags.enable_batching:
        out.append("--batching_parameters_file has no effect without --enable_batching")
    if flags.model_config_file:
        out += [f"--{n} has no effect with --model_config_file" for n in ("model_name", "model_base_path")
                if n in given]
    elif "model_config_file_poll_wait_seconds" in given:
        out.append("--model_config_file_poll_wait_seconds has no effect without --model_config_file")
    if flags.monitoring_config_file and not flags.rest_api_port:
        out.append("--monitoring_config_file has no effect without --rest_api_port (metrics are served there)")
    if "num_request_iterations_for_warmup" in given and not flags.enable_model_warmup:
        out.append("--num_request_iterations_for_warmup has no effect with --enable_model_warmup=false")
    return out


def rest_api_port(flags: Flags) -> int:
    """The REST port to open: 0 (none) when it equals the gRPC port, as TF Serving does."""
    return 0 if flags.rest_api_port == flags.port else flags.rest_api_port


def usage() -> str:
    lines = ["usage: model-server", "Flags:"]
    for name, (typ, default, implemented, help_) in _FLAGS.items():
        tname = {int: "int32", float: "float", str: "string", bool: "bool"}[typ]
        note = "" if implemented else " (accepted, not implemented)"
        lines.append(f"\t--{name}={default if typ is not str else repr(default)}\t{tname}\t{help_}{note}")
    return "\n".join(lines)


def parse_or_exit(argv: list[str]) -> Flags:
    try:
        return parse_args(argv)
    except FlagError as exc:
        sys.stderr.write(f"{usage()}\n{exc}\n")
        raise SystemExit(1) from None
