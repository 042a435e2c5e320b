"""Where a version's warmup requests come from (`--warmup_config_file`), as TF Serving's
PredictionLogs that replay.py replays before the version becomes AVAILABLE.

The file is JSON; `source` says which requests a version replays:

- `{"source": "model"}` (also what no file means): the SavedModel's own
  `assets.extra/tf_serving_warmup_requests`, as in TF Serving (none: no warmup).
- `{"source": "generated", "signatures": [...], "batchSizes": [1, 8, 32], "count": 1,
  "data": "zero" | "random", "seed": 0}`: Predict requests made from the loaded version's own
  signatures, `count` per batch size per signature. Every dimension the signature leaves unknown
  becomes the batch size (the first) or 1 (the others); an input of unknown rank is a vector of
  batch size; a scalar input stays a scalar. Numbers are zeros, or random values of the input's
  dtype (normal floats, integers 0-9, booleans); strings are empty (`b""`, which is also an empty
  serialized tf.Example), whatever `data` says. With `signatures` left empty, every signature is
  warmed whose generated requests TensorFlow accepts: one that refuses them (for example a
  signature parsing tf.Examples with required features) is skipped and listed in the warmup
  report; signatures named explicitly must all succeed, or the version fails to load.
- `{"source": "requests", "requestsFile": "/warmup/requests.json"}`: the requests in a file of
  REST API bodies (a JSON list, or one object), each `{"signature_name"?: ..., "instances": ...}`
  or `{"signature_name"?: ..., "inputs": ...}`, typed by the signature; any failure fails the load.

Generation happens in the server, at each version's load, so versions loaded later (by a canary
or a rollout) are warmed as well as those present at start, and nothing is written to the
model's storage. TF Serving's limit holds: at most 1000 requests per version.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelserver.config.files import ConfigError, read_json

SOURCES = ("model", "generated", "requests")
DATA = ("zero", "random")


@dataclass(frozen=True, slots=True)
class WarmupPlan:
    source: str = "model"
    signatures: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = (1,)
    count: int = 1
    data: str = "zero"
    seed: int = 0
    requests_file: str = ""


@dataclass(slots=True)
class Generated:
    """Requests for one version: (signature name, inputs) pairs, and signatures left out."""

    requests: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    strict: bool = False  # every request must succeed (named signatures, or user requests)


def parse_plan(doc: Any, source: str = "warmup config") -> WarmupPlan:
    """A `--warmup_config_file` document as a WarmupPlan; ConfigError naming the problem."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    known = {"source", "signatures", "batchSizes", "count", "data", "seed", "requestsFile"}
    extra = sorted(set(doc) - known)
    if extra:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(extra)}")
    kind = doc.get("source", "model")
    if kind not in SOURCES:
        raise ConfigError(f"{source}: source must be one of {', '.join(SOURCES)}, not {kind!r}")
    sigs = doc.get("signatures", [])
    sizes = doc.get("batchSizes", [1])
    count = doc.get("count", 1)
    data = doc.get("data", "zero")
    seed = doc.get("seed", 0)
    if not isinstance(sigs, list) or not all(isinstance(s, str) and s for s in sigs):
        raise ConfigError(f"{source}: signatures must be a list of signature names")
    if not isinstance(sizes, list) or not sizes or not all(_int(b) and 1 <= b <= 1_000_000 for b in sizes):
        raise ConfigError(f"{source}: batchSizes must be a non-empty list of positive integers")
    if not _int(count) or not 1 <= count <= 1000:
        raise ConfigError(f"{source}: count must be an integer from 1 to 1000")
    if data not in DATA:
        raise ConfigError(f"{source}: data must be one of {', '.join(DATA)}, not {data!r}")
    if not _int(seed):
        raise ConfigError(f"{source}: seed must be an integer")
    requests_file = doc.get("requestsFile", "")
    if kind == "requests" and not (isinstance(requests_file, str) and requests_file):
        raise ConfigError(f"{source}: source 'requests' needs requestsFile")
    return WarmupPlan(kind, tuple(sigs), tuple(sizes), count, data, seed, requests_file or "")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_plan(path: str | Path) -> WarmupPlan:
    return parse_plan(read_json(path, "warmup config file"), f"warmup config file {path}")


# ---- generated requests ---------------------------------------------------------------------------


def input_shape(shape: tuple[int | None, ...] | None, batch: int) -> tuple[int, ...]:
    """A concrete shape for a declared one: unknown rank -> [batch]; unknown dimensions -> batch
    (the first) or 1 (the others); a scalar stays a scalar."""
    if shape is None:
        return (batch,)
    return tuple((batch if i == 0 else 1) if d is None else d for i, d in enumerate(shape))


def generated_inputs(signature: Any, batch: int, data: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the right dtype and shape for `signature` (its TensorSpecs)."""
    out = {}
    for name, spec in signature.inputs.items():
        dims = input_shape(spec.shape, batch)
        if spec.dtype == np.dtype(object):
            out[name] = np.full(dims, b"", dtype=object)
        elif data == "zero":
            out[name] = np.zeros(dims, dtype=spec.dtype)
        elif np.issubdtype(spec.dtype, np.bool_):
            out[name] = rng.integers(0, 2, dims).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            out[name] = rng.integers(0, 10, dims).astype(spec.dtype)
        else:
            out[name] = rng.standard_normal(dims).astype(spec.dtype)
    return out


def generate(plan: WarmupPlan, signatures: dict[str, Any]) -> Generated:
    """The plan's requests for one version's signatures (named ones must exist)."""
    missing = [s for s in plan.signatures if s not in signatures]
    if missing:
        raise ConfigError(f"warmup signatures not in the model: {', '.join(missing)} "
                          f"(it has {', '.join(sorted(signatures))})")
    names = list(plan.signatures) or sorted(signatures)
    rng = np.random.default_rng(plan.seed)
    out = Generated(strict=bool(plan.signatures))
    for sig_name in names:
        for batch in plan.batch_sizes:
            for _ in range(plan.count):
                out.requests.append((sig_name, generated_inputs(signatures[sig_name], batch, plan.data, rng)))
    return out


def from_rest_bodies(bodies: Sequence[Any], signatures: dict[str, Any], source: str) -> Generated:
    """User requests in the REST API's JSON, typed by each request's signature."""
    out = Generated(strict=True)
    for i, body in enumerate(bodies):
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: request {i} is not a JSON object")
        sig_name = body.get("signature_name") or "serving_default"
        if sig_name not in signatures:
            raise ConfigError(f"{source}: request {i} names signature {sig_name!r}, which the model does not have")
        try:
            (inputs,) = inputs_from_json({k: v for k, v in body.items() if k != "signature_name"}, signatures[sig_name])
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{source}: request {i}: {exc}") from None
        out.requests.append((sig_name, inputs))
    return out


def load_rest_bodies(path: str | Path) -> list[Any]:
    doc = read_json(path, "warmup requests file")
    return doc if isinstance(doc, list) else [doc]


def _decode_json_value(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"b64"}:
        return base64.b64decode(v["b64"])
    if isinstance(v, list):
        return [_decode_json_value(x) for x in v]
    return v


def inputs_from_json(body: dict[str, Any], signature: Any) -> list[dict[str, np.ndarray]]:
    """Request bodies like the REST API's (`{"instances": [...]}` or `{"inputs": {...}}`) to
    named arrays typed by the signature."""
    specs = signature.inputs
    if "inputs" in body:
        cols = body["inputs"]
        if not isinstance(cols, dict):
            if len(specs) != 1:
                raise ValueError("\"inputs\" must name every input of a multi-input signature")
            cols = {next(iter(specs)): cols}
    elif "instances" in body:
        rows = body["instances"]
        if rows and isinstance(rows[0], dict):
            cols = {k: [r[k] for r in rows] for k in rows[0]}
        else:
            if len(specs) != 1:
                raise ValueError("row instances must be objects for a multi-input signature")
            cols = {next(iter(specs)): rows}
    else:
        raise ValueError("a sample must hold \"instances\" or \"inputs\"")
    out = {}
    for name, value in cols.items():
        if name not in specs:
            raise ValueError(f"unknown input {name!r} (signature inputs: {', '.join(sorted(specs))})")
        out[name] = np.asarray(_decode_json_value(value), dtype=specs[name].dtype)
    return [out]
