"""What the Open Inference Protocol (KServe v2) says about models, for both of its transports
(v2_rest, v2_grpc): which servable and signature a request names, a model's metadata, Triton's
model configuration and statistics extensions, and the server's metadata.

The mapping to TF Serving's concepts:
- a v2 model is a TF Serving model; its `version` is a version number, or else a version label
  (`/v2/models/m/versions/stable/infer`); with none, the request follows the model's traffic
  split and route key, as an unversioned TF Serving request does;
- the signature is `serving_default` unless the request's parameter SIGNATURE_PARAMETER names
  another; a v2 tensor's name is the signature's input or output key;
- `ready` is TF Serving's AVAILABLE, which a version reaches only after its warmup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modelserver import __version__
from modelserver.core.dataplane import ModelRef
from modelserver.core.errors import invalid_argument
from modelserver.core.manager import AVAILABLE
from modelserver.core.request_context import RequestContext
from modelserver.core.servable import Servable, Signature
from modelserver.core.state import ServerState
from modelserver.protocol.v2_types import datatype_of, signature_shape

SIGNATURE_PARAMETER = "signature_name"  # a request parameter naming the signature to call
SERVER_NAME = "model-server"
PLATFORM = "tensorflow_savedmodel"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
INFERENCE_APIS = frozenset({"predict", "classify", "regress", "multi_inference"})


def model_ref(name: str, version: str | None) -> ModelRef:
    """A v2 model name and version string: digits are a version number, other text a label."""
    if not version:
        return ModelRef(name)
    if version.isascii() and version.isdigit():
        number = int(version) if len(version) <= 19 else 2**63
        if number >= 2**63:
            raise invalid_argument(f"Model version {version[:40]} is not a 64-bit number")
        return ModelRef(name, version=number)
    return ModelRef(name, label=version)


def signature_name(parameters: dict[str, Any]) -> str:
    value = parameters.get(SIGNATURE_PARAMETER, "")
    if not isinstance(value, str):
        raise invalid_argument(f"Parameter {SIGNATURE_PARAMETER} must be a string")
    return value


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def tensors_metadata(specs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "datatype": datatype_of(s.dtype), "shape": signature_shape(s.shape)}
            for k, s in specs.items()]


def available_versions(state: ServerState, name: str) -> list[str]:
    rec = state.manager.models.get(name)
    if rec is None:
        return []
    return [str(v) for v, vr in sorted(rec.versions.items()) if vr.state == AVAILABLE]


def model_metadata(state: ServerState, servable: Servable, sig: Signature) -> dict[str, Any]:
    return {"name": servable.name, "versions": available_versions(state, servable.name), "platform": PLATFORM,
            "inputs": tensors_metadata(sig.inputs), "outputs": tensors_metadata(sig.outputs)}


def _type_name(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def model_config(servable: Servable, sig: Signature) -> dict[str, Any]:
    """Triton's model configuration (its JSON form): inputs and outputs of the signature with their
    full shapes (max_batch_size 0: a leading -1 is the batch dimension, as the model declares)."""
    def tensors(specs: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": k, "data_type": _type_name(datatype_of(s.dtype)), "dims": signature_shape(s.shape)}
                for k, s in specs.items()]

    return {"name": servable.name, "platform": PLATFORM, "backend": "tensorflow", "max_batch_size": 0,
            "input": tensors(sig.inputs), "output": tensors(sig.outputs)}


# ---- statistics (Triton's extension: perf_analyzer reads it before and after its runs) ----------


@dataclass(slots=True)
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, int(seconds * 1e9))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class _VersionStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    durations: dict[str, _Duration] = field(default_factory=lambda: {
        k: _Duration() for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")})


class ModelStats:
    """Every inference request's outcome and times per model version, whatever its protocol (a
    request hook of ServerState): Triton's statistics extension answered from them."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, int], _VersionStats] = {}

    def finish(self, ctx: RequestContext) -> None:
        if ctx.api not in INFERENCE_APIS or not ctx.model or ctx.version is None or ctx.protocol == "warmup":
            return
        key = (ctx.model, ctx.version)
        s = self._stats.get(key)
        if s is None:
            s = self._stats[key] = _VersionStats()
        end = ctx.t_send if ctx.t_send is not None else time.perf_counter()
        d = s.durations
        if ctx.status != "OK":
            d["fail"].add(end - ctx.t_receive)
            return
        d["success"].add(end - ctx.t_receive)
        s.last_inference_ms = int(time.time() * 1000)
        s.inference_count += max(1, ctx.batch_size)
        s.execution_count += 1
        c0, c1 = ctx.t_compute_start, ctx.t_compute_end
        if ctx.t_queue_start is not None and c0 is not None:
            d["queue"].add(c0 - ctx.t_queue_start)
        if c0 is not None and c1 is not None:
            d["compute_input"].add(0.0)
            d["compute_infer"].add(c1 - c0)
            d["compute_output"].add(0.0)

    def report(self, state: ServerState, name: str, version: int | None) -> list[dict[str, Any]]:
        """Statistics of a model's versions (every served model's, with no name), in Triton's JSON
        form; a model without requests yet has zero counts."""
        names = [name] if name else sorted(state.manager.models)
        out = []
        for n in names:
            rec = state.manager.models.get(n)
            versions = sorted(rec.versions) if rec is not None else []
            for v in versions:
                if version is not None and v != version:
                    continue
                s = self._stats.get((n, v)) or _VersionStats()
                out.append({"name": n, "version": str(v), "last_inference": s.last_inference_ms,
                            "inference_count": s.inference_count, "execution_count": s.execution_count,
                            "inference_stats": {k: d.as_dict() for k, d in s.durations.items()},
                            "batch_stats": []})
        return out
