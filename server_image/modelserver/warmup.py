"""Model warmup: replay `<version>/assets.extra/tf_serving_warmup_requests` before AVAILABLE.

The file is a TFRecord of `tensorflow.serving.PredictionLog` (TF Serving's format): predict,
classify, regress and multi_inference logs are replayed `--num_request_iterations_for_warmup`
times each through the transport-free inference functions, on the loading thread, so the first
real request finds every tf.function traced and every lazy initialisation done. A missing file
is fine; more than 1000 records is INVALID_ARGUMENT; any failing record fails the load with a
status that names the record.

`python -m modelserver.warmup` writes such a file from sample inputs (see `main`).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .errors import ServingError

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's kMaxNumRecords


def warmup_file(version_dir: str | Path) -> Path:
    return Path(version_dir) / ASSETS_EXTRA / WARMUP_FILE


@dataclass(frozen=True, slots=True)
class WarmupResult:
    records: int  # records in the file (0: no file)
    requests: int  # requests replayed (records x iterations)
    seconds: float


def read_records(path: Path) -> list[bytes]:
    """The raw records of a TFRecord file (TensorFlow's reader, CRCs checked)."""
    import tensorflow as tf

    records: list[bytes] = []
    try:
        for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append(bytes(rec))
            if len(records) > MAX_RECORDS:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
    except tf.errors.OpError as e:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Error reading warmup data {path}: {e.message}") from None
    return records


def parse_logs(records: Sequence[bytes], path: Path) -> list[Any]:
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for i, rec in enumerate(records):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(rec)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError (varies by backend)
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Warmup record {i} in {path} is not a PredictionLog") from None
        logs.append(log)
    return logs


Replayer = Callable[[Any, Any], Any]  # (servable, request) -> response


def default_replayers() -> dict[str, Replayer]:
    """log_type -> (request field, transport-free call) for the logs TF Serving replays."""
    from . import proto_api

    return {
        "predict_log": proto_api.predict_sync,
        "classify_log": proto_api.classify_sync,
        "regress_log": proto_api.regress_sync,
        "multi_inference_log": proto_api.multi_inference_sync,
    }


def replay(servable: Any, logs: Iterable[Any], iterations: int, path: Path,
           replayers: dict[str, Replayer] | None = None) -> int:
    """Runs every log's request `iterations` times; the first failure fails the whole warmup."""
    replayers = replayers if replayers is not None else default_replayers()
    done = 0
    for i, log in enumerate(logs):
        kind = log.WhichOneof("log_type")
        call = replayers.get(kind or "")
        if call is None:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported log_type for warmup: {kind or 'none'} (record {i} in {path})")
        request = getattr(log, kind).request  # type: ignore[arg-type]
        for _ in range(max(iterations, 1)):
            try:
                call(servable, request)
            except ServingError as e:
                raise ServingError(e.code, f"Warmup request {i} ({kind}) in {path} failed: {e.message}") from None
            except Exception as e:  # noqa: BLE001 - any model failure fails the load, with its text
                raise ServingError(grpc.StatusCode.INTERNAL,
                                   f"Warmup request {i} ({kind}) in {path} failed: {e}") from None
            done += 1
    return done


def run_warmup(servable: Any, version_dir: str | Path, iterations: int = 1,
               replayers: dict[str, Replayer] | None = None) -> WarmupResult:
    """The load hook's body: blocking, call it on the loading thread before AVAILABLE."""
    path = warmup_file(version_dir)
    t0 = time.perf_counter()
    if not path.is_file():
        return WarmupResult(0, 0, 0.0)
    logs = parse_logs(read_records(path), path)
    n = replay(servable, logs, iterations, path, replayers)
    return WarmupResult(len(logs), n, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Writing warmup files (for users and tests).


def write_records(path: str | Path, logs: Iterable[Any]) -> Path:
    """Writes PredictionLogs as a TFRecord file (creating assets.extra/ as needed)."""
    import tensorflow as tf

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out)) as w:
        for log in logs:
            w.write(log.SerializeToString())
    return out


def predict_log(inputs: dict[str, np.ndarray], model_name: str = "", signature_name: str = "") -> Any:
    """A PredictionLog holding a PredictRequest for these inputs."""
    from tensorflow_serving.apis import prediction_log_pb2

    from .tensors import to_tensor_proto

    log = prediction_log_pb2.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = model_name
    if signature_name:
        req.model_spec.signature_name = signature_name
    for name, arr in inputs.items():
        req.inputs[name].CopyFrom(to_tensor_proto(arr, as_content=True))
    return log


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


def random_inputs(signature: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random inputs shaped from the signature (unknown dimensions: `batch` for the first, 1
    for others); strings are random bytes."""
    out = {}
    for name, spec in signature.inputs.items():
        shape = spec.shape if spec.shape is not None else (None,)
        dims = tuple((batch if i == 0 else 1) if d is None else d for i, d in enumerate(shape))
        if spec.dtype == np.dtype(object):
            out[name] = np.array([rng.bytes(8) for _ in range(int(np.prod(dims)))], dtype=object).reshape(dims)
        elif np.issubdtype(spec.dtype, np.bool_):
            out[name] = rng.integers(0, 2, dims).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            out[name] = rng.integers(0, 10, dims).astype(spec.dtype)
        else:
            out[name] = rng.standard_normal(dims).astype(spec.dtype)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The writer's arguments (also usable as a `modeldeploy` subcommand: add_arguments / run)."""
    parser.add_argument("version_dir", help="the SavedModel version directory (e.g. /models/m/1)")
    parser.add_argument("--signature_name", default="serving_default")
    parser.add_argument("--sample", action="append", default=[],
                        help="JSON file with a REST-style body ({\"instances\": ...} or {\"inputs\": ...}); "
                             "repeatable; without it, random inputs shaped from the signature")
    parser.add_argument("--batch_sizes", default="1",
                        help="comma-separated batch sizes for random inputs (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write here instead of the version's assets.extra/")


def main(argv: list[str] | None = None) -> int:
    """Writes `<version_dir>/assets.extra/tf_serving_warmup_requests` for a SavedModel version."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.warmup",
        description="Write a TF Serving warmup file (PredictionLog TFRecord) for a SavedModel version.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from .servable import load_servable

    vdir = Path(args.version_dir)
    try:
        servable = load_servable("warmup", 0, vdir)
        sig = servable.signature(args.signature_name)
        samples: list[dict[str, np.ndarray]] = []
        for f in args.sample:
            samples += inputs_from_json(json.loads(Path(f).read_text()), sig)
        if not args.sample:
            rng = np.random.default_rng(args.seed)
            samples = [random_inputs(sig, int(b), rng) for b in args.batch_sizes.split(",")]
        logs = [predict_log(s, signature_name=args.signature_name) for s in samples]
        replay(servable, logs, 1, vdir)  # each record must run, or the server would fail the load
        if len(logs) > MAX_RECORDS:
            raise ValueError(f"at most {MAX_RECORDS} records")
    except ServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = write_records(args.out or warmup_file(vdir), logs)
    print(f"wrote {len(logs)} warmup record(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


LoadHook = Callable[[Any, Path], None]


def load_hook(enabled: bool, iterations: int, metrics: Any = None) -> LoadHook | None:
    """The manager's `on_version_loaded` hook (`--enable_model_warmup`,
    `--num_request_iterations_for_warmup`); records warmup latency when metrics are on."""
    if not enabled:
        return None
    import logging

    log = logging.getLogger("modelserver")

    def hook(servable: Any, version_dir: Path) -> None:
        result = run_warmup(servable, version_dir, iterations)
        if result.records:
            log.info("model %s version %d warmed up: %d record(s), %d request(s) in %.3f s",
                     servable.name, servable.version, result.records, result.requests, result.seconds)
            if metrics is not None:
                metrics.record_warmup(servable.name, servable.version, str(version_dir), result.seconds)

    return hook
