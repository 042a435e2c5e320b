"""The model-server's configuration files as text protos, rendered without TensorFlow.

`models.config` is TF Serving's `ModelServerConfig` (a `model_config_list`), `batching.config` its
`BatchingParameters`, `monitoring.config` its `MonitoringConfig`. Tests parse the output with the
real `tensorflow_serving.config.model_server_config_pb2` (and descriptors of the other two protos)
to prove it is valid; the operator itself only writes text. `routing.json` is model-server's own
routing table (labels and traffic weights; server_image/modelserver/routing.py): labels live there,
not in models.config, so that a server starting while a labelled version cannot load waits (not
ready) instead of refusing its model config, and so that the operator can push them live.
"""

from __future__ import annotations

import json
from typing import Any

from modelserver import contract  # file names and ports shared with the server (pure Python)
from modelserver.config import (
    flags as server_flags,  # the server's own flag parser (pure Python, no TensorFlow)
)

from modeldeploy.api.v1alpha1 import Batching, ModelDeploymentSpec, WarmupSource, model_name

CONFIG_DIR = "/config"
MODELS_DIR = "/models"
MODEL_CACHE_DIR = "/model-cache"  # storage.uri: where the pod's server downloads versions (an emptyDir)
MODELS_CONFIG = contract.MODELS_CONFIG
BATCHING_CONFIG = contract.BATCHING_CONFIG
MONITORING_CONFIG = contract.MONITORING_CONFIG
ROUTING_CONFIG = contract.ROUTING_CONFIG
WARMUP_CONFIG = contract.WARMUP_CONFIG
WARMUP_REQUESTS_DIR = "/warmup-requests"  # the user's ConfigMap key (warmup.source configMap)
WARMUP_REQUESTS_FILE = "requests.json"
ADMIN_TOKEN_DIR = "/admin"
ADMIN_TOKEN_KEY = "token"

# The pod's preStop pause: endpoints drop the pod before the server gets SIGTERM.
PRESTOP_SLEEP_SECONDS = 5

# Flags the operator sets from the spec. Ports, probes, the Service and the mounted config files
# depend on them, so spec.server.extraArgs may not override them.
OWNED_FLAGS = frozenset({
    "port", "rest_api_port", "bind_address", "model_name", "model_base_path", "model_config_file",
    "model_config_file_poll_wait_seconds", "monitoring_config_file", "enable_model_warmup",
    "num_request_iterations_for_warmup", "enable_batching", "batching_parameters_file", "drain_timeout_seconds",
    "routing_config_file", "admin_port", "admin_token_file", "warmup_config_file",
    # spec.server.enableProfiler / enableReloadConfigRpc: both off unless the spec asks
    "enable_profiler", "enable_reload_config_rpc",
    "frontend_workers",  # spec.server.frontendWorkers
})


def quote(s: str) -> str:
    """A text-proto string literal (C-style escapes)."""
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def model_base_path(name: str) -> str:
    return f"{MODELS_DIR}/{name}"


def base_path(spec: ModelDeploymentSpec, name: str) -> str:
    """Where the server finds the model's versions: the object-storage URI, or the mounted volume."""
    return spec.model.storage.uri or model_base_path(name)


def models_config(spec: ModelDeploymentSpec, name: str, versions: tuple[int, ...] | None = None) -> str:
    """TF Serving's models.config for one model: the spec's versions (or `versions`, which the
    traffic decision widens while labels still point at versions the spec dropped), no labels."""
    lines = [
        "model_config_list {",
        "  config {",
        f"    name: {quote(name)}",
        f"    base_path: {quote(base_path(spec, name))}",
        '    model_platform: "tensorflow"',
        "    model_version_policy {",
    ]
    listed = versions if versions is not None else tuple(spec.model.versions or ())
    if spec.model.versions:
        lines.append("      specific {")
        lines += [f"        versions: {v}" for v in sorted(listed)]
        lines.append("      }")
    else:
        lines.append(f"      latest {{ num_versions: {spec.model.latest_versions} }}")
    lines.append("    }")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def batching_config(batching: Batching) -> str:
    """TF Serving's BatchingParameters text proto."""
    lines = [
        f"max_batch_size {{ value: {batching.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}",
        f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}",
        f"num_batch_threads {{ value: {batching.num_batch_threads} }}",
    ]
    lines += [f"allowed_batch_sizes: {n}" for n in batching.allowed_batch_sizes or []]
    if batching.pad_variable_length_inputs:
        lines.append("pad_variable_length_inputs: true")
    if batching.enable_large_batch_splitting:
        lines.append("enable_large_batch_splitting { value: true }")
    if batching.max_execution_batch_size is not None:
        lines.append(f"max_execution_batch_size {{ value: {batching.max_execution_batch_size} }}")
    return "\n".join(lines) + "\n"


def routing_config(document: dict[str, Any]) -> str:
    """model-server's routing.json (the same document the operator pushes to the admin port)."""
    return json.dumps(document, indent=2) + "\n"


def warmup_config(spec: ModelDeploymentSpec) -> str | None:
    """model-server's --warmup_config_file (warmup_sources.py), or None for the model's own file."""
    w = spec.warmup
    source = w.effective_source
    if not w.enabled or source == WarmupSource.model:
        return None
    if source == WarmupSource.config_map:
        doc: dict[str, Any] = {"source": "requests", "requestsFile": f"{WARMUP_REQUESTS_DIR}/{WARMUP_REQUESTS_FILE}"}
    else:
        g = w.generate
        doc = {"source": "generated", "batchSizes": list(g.batch_sizes) if g else [1], "count": g.count if g else 1,
               "data": g.data if g else "zero", "seed": g.seed if g else 0}
        if g and g.signatures:
            doc["signatures"] = list(g.signatures)
    return json.dumps(doc, indent=2) + "\n"


def monitoring_config() -> str:
    return f"prometheus_config {{\n  enable: true\n  path: {quote(contract.METRICS_PATH)}\n}}\n"


def drain_seconds(grace_period: int) -> int:
    """How long model-server waits for in-flight requests after SIGTERM: what the grace period leaves
    after the preStop pause, less a second, so the kubelet's SIGKILL never cuts a drain short."""
    return max(1, grace_period - PRESTOP_SLEEP_SECONDS - 1)


def server_args(spec: ModelDeploymentSpec) -> list[str]:
    """model-server (tensorflow_model_server) flags for the pod."""
    args = [
        f"--port={contract.GRPC_PORT}",
        f"--rest_api_port={contract.REST_PORT}",
        f"--model_config_file={CONFIG_DIR}/{MODELS_CONFIG}",
        f"--model_config_file_poll_wait_seconds={spec.server.config_poll_seconds}",
        f"--monitoring_config_file={CONFIG_DIR}/{MONITORING_CONFIG}",
        f"--enable_model_warmup={'true' if spec.warmup.enabled else 'false'}",
        f"--routing_config_file={CONFIG_DIR}/{ROUTING_CONFIG}",
        f"--admin_port={contract.ADMIN_PORT}",
        f"--admin_token_file={ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}",
        # The gRPC port is open to every client of the Service: TF Serving's unauthenticated reload RPC
        # (which can unload every model) and the profiler (which writes captures under the pod's /tmp
        # volume, --profiler_dir's default) only when the spec asks.
        f"--enable_profiler={'true' if spec.server.enable_profiler else 'false'}",
        f"--enable_reload_config_rpc={'true' if spec.server.enable_reload_config_rpc else 'false'}",
    ]
    if spec.warmup.enabled:
        args.append(f"--num_request_iterations_for_warmup={spec.warmup.request_iterations}")
        if warmup_config(spec) is not None:
            args.append(f"--warmup_config_file={CONFIG_DIR}/{WARMUP_CONFIG}")
    args.append(f"--drain_timeout_seconds={drain_seconds(spec.server.termination_grace_period_seconds)}")
    if spec.batching and spec.batching.enabled:
        args += ["--enable_batching=true", f"--batching_parameters_file={CONFIG_DIR}/{BATCHING_CONFIG}"]
    if spec.model.storage.uri:
        args.append(f"--model_cache_dir={MODEL_CACHE_DIR}")
    if spec.logging is not None:
        args += [f"--payload_log_url={spec.logging.url}", f"--payload_log_mode={spec.logging.mode}",
                 f"--payload_log_sample_rate={spec.logging.sample_rate:g}",
                 f"--payload_log_queue_size={spec.logging.queue_size}"]
    if spec.server.frontend_workers is not None:
        args.append(f"--frontend_workers={spec.server.frontend_workers}")
    args += list(spec.server.extra_args or [])
    return args


def tracing_env(spec: ModelDeploymentSpec, namespace: str, owner_name: str) -> list[dict[str, Any]]:
    """The OpenTelemetry SDK's standard variables for spec.observability.tracing ([] when off); the
    pod's name comes from the downward API (POD_NAME, expanded in OTEL_RESOURCE_ATTRIBUTES)."""
    tracing = spec.observability.tracing if spec.observability is not None else None
    if tracing is None:
        return []
    values = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": tracing.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": tracing.protocol,
        "OTEL_SERVICE_NAME": tracing.service_name or model_name(spec, owner_name),
        "OTEL_RESOURCE_ATTRIBUTES": f"k8s.pod.name=$(POD_NAME),k8s.namespace.name={namespace},"
                                    f"modeldeploy.name={owner_name}",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{tracing.sampling_ratio:g}",
    }
    pod_name = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    return [pod_name, *({"name": k, "value": v} for k, v in values.items())]


def args_problem(spec: ModelDeploymentSpec) -> str | None:
    """Why model-server would not start (or would not match the pod) with the rendered flags, if so.

    Checked before anything is applied, so that a typo in spec.server.extraArgs is an InvalidSpec
    status instead of crash-looping pods.
    """
    for arg in spec.server.extra_args or []:
        name = arg.lstrip("-").partition("=")[0]
        base = name[2:] if name.startswith("no") and name[2:] in OWNED_FLAGS else name
        if base in OWNED_FLAGS:
            return (
                f"spec.server.extraArgs: --{base} is set by the operator (ports, config files, warmup, "
                "batching, the profiler, the reload RPC and front-end workers come from the spec); remove it"
            )
    try:
        server_flags.parse_args(server_args(spec))
    except server_flags.FlagError as exc:
        return f"spec.server.extraArgs: model-server would not start: {exc}"
    return None
