"""Model warmup: replay `<version>/assets.extra/tf_serving_warmup_requests` before AVAILABLE.

The file is a TFRecord of `tensorflow.serving.PredictionLog` (TF Serving's format): predict,
classify, regress and multi_inference logs are replayed `--num_request_iterations_for_warmup`
times each through the transport-free inference functions, on the loading thread, so the first
real request finds every tf.function traced and every lazy initialisation done. A missing file
is fine; more than 1000 records is INVALID_ARGUMENT; any failing record fails the load with a
status that names the record.

`python -m modelserver.warmup.replay` writes such a file from sample inputs (see `main`).
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from modelserver.core.errors import ServingError

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's kMaxNumRecords


def warmup_file(version_dir: str | Path) -> Path:
    return Path(version_dir) / ASSETS_EXTRA / WARMUP_FILE


@dataclass(frozen=True, slots=True)
class WarmupResult:
    records: int  # records in the file, or requests generated (0: no warmup)
    requests: int  # requests replayed (records x iterations)
    seconds: float
    source: str = "model"  # model | generated | requests (warmup_sources.py)
    skipped: tuple[tuple[str, str], ...] = ()  # (signature, why): generated requests it refused

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "records": self.records, "requests": self.requests,
                "seconds": round(self.seconds, 6), "skipped": dict(self.skipped)}


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
    from modelserver.protocol import proto_api

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

    from modelserver.core.tensors import to_tensor_proto

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The writer's arguments (also usable as a `modeldeploy` subcommand: add_arguments / run)."""
    parser.add_argument("version_dir", help="the SavedModel version directory (e.g. /models/m/1)")
    parser.add_argument("--signature_name", action="append", default=[],
                        help="signature to warm (repeatable; default serving_default)")
    parser.add_argument("--all_signatures", action="store_true", help="warm every signature of the model")
    parser.add_argument("--sample", action="append", default=[],
                        help="JSON file of REST API bodies ({\"instances\": ...} or {\"inputs\": ...}, optionally "
                             "with \"signature_name\"; one object or a list); repeatable; without it, requests are "
                             "generated from the signature")
    parser.add_argument("--batch_sizes", default="1", help="comma-separated batch sizes of generated requests")
    parser.add_argument("--count", type=int, default=1, help="generated requests per batch size and signature")
    parser.add_argument("--data", choices=["zero", "random"], default="random",
                        help="generated values: zeros, or random values of each input's dtype (strings: b'')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write here instead of the version's assets.extra/")


def main(argv: list[str] | None = None) -> int:
    """Writes `<version_dir>/assets.extra/tf_serving_warmup_requests` for a SavedModel version."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.warmup.replay",
        description="Write a TF Serving warmup file (PredictionLog TFRecord) for a SavedModel version.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """The same requests the server generates for `--warmup_config_file` (warmup_sources.py),
    or the samples given, each replayed once (the server would fail the load on any that fails)."""
    from modelserver.config.model_config import ConfigError
    from modelserver.core.servable import load_servable
    from modelserver.warmup.sources import WarmupPlan, from_rest_bodies, generate, load_rest_bodies

    vdir = Path(args.version_dir)
    try:
        servable = load_servable("warmup", 0, vdir)
        names = tuple(sorted(servable.signatures)) if args.all_signatures else tuple(args.signature_name) or (
            "serving_default",)
        if args.sample:
            bodies = []
            for f in args.sample:
                for body in load_rest_bodies(f):
                    bodies.append({"signature_name": names[0], **body} if isinstance(body, dict) else body)
            gen = from_rest_bodies(bodies, servable.signatures, ", ".join(args.sample))
        else:
            sizes = tuple(int(b) for b in args.batch_sizes.split(","))
            gen = generate(WarmupPlan("generated", names, sizes, args.count, args.data, args.seed), servable.signatures)
        logs = [predict_log(inputs, signature_name=sig) for sig, inputs in gen.requests]
        if len(logs) > MAX_RECORDS:
            raise ValueError(f"at most {MAX_RECORDS} records (TF Serving's limit), not {len(logs)}")
        replay(servable, logs, 1, vdir)
    except ServingError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = write_records(args.out or warmup_file(vdir), logs)
    print(f"wrote {len(logs)} warmup record(s) to {out}")
    return 0


LoadHook = Callable[[Any, Path], Any]


def load_hook(enabled: bool, iterations: int, metrics: Any = None, plan: Any = None) -> LoadHook | None:
    """The manager's `on_version_loaded` hook (`--enable_model_warmup`,
    `--num_request_iterations_for_warmup`, `--warmup_config_file`'s plan): returns the
    WarmupResult the manager keeps per version; records warmup latency when metrics are on."""
    if not enabled:
        return None
    import logging

    log = logging.getLogger("modelserver")

    def hook(servable: Any, version_dir: Path) -> WarmupResult:
        if plan is None or plan.source == "model":
            result = run_warmup(servable, version_dir, iterations)
        else:
            result = run_planned_warmup(servable, plan, iterations)
        if result.records:
            log.info("model %s version %d warmed up (%s): %d record(s), %d request(s) in %.3f s%s",
                     servable.name, servable.version, result.source, result.records, result.requests,
                     result.seconds, "".join(f"; skipped {s}: {why}" for s, why in result.skipped))
            if metrics is not None:
                metrics.record_warmup(servable.name, servable.version, str(version_dir), result.seconds)
        return result

    return hook


def run_planned_warmup(servable: Any, plan: Any, iterations: int) -> WarmupResult:
    """Generated or user-given requests (warmup_sources.py) replayed like a warmup file's
    records, through the same Predict path as real requests. A failure fails the load (naming
    the request), except that generated requests for signatures nobody named skip a signature
    that refuses them."""
    from modelserver.config.model_config import ConfigError
    from modelserver.protocol import proto_api
    from modelserver.warmup.sources import from_rest_bodies, generate, load_rest_bodies

    t0 = time.perf_counter()
    try:
        if plan.source == "generated":
            gen = generate(plan, servable.signatures)
        else:
            gen = from_rest_bodies(load_rest_bodies(plan.requests_file), servable.signatures, plan.requests_file)
    except ConfigError as exc:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"Warmup ({plan.source}): {exc}") from None
    if len(gen.requests) > MAX_RECORDS:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Number of warmup records exceeds the maximum ({MAX_RECORDS}): {len(gen.requests)}")
    skipped: dict[str, str] = {}
    done = 0
    for i, (sig_name, inputs) in enumerate(gen.requests):
        if sig_name in skipped:
            continue
        request = predict_log(inputs, model_name=servable.name, signature_name=sig_name).predict_log.request
        shape = ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())
        for _ in range(max(iterations, 1)):
            try:
                proto_api.predict_sync(servable, request)
            except Exception as e:  # noqa: BLE001 - the model's refusal, reported with the request
                why = e.message if isinstance(e, ServingError) else f"{type(e).__name__}: {e}"
                if gen.strict:
                    code = e.code if isinstance(e, ServingError) else grpc.StatusCode.INTERNAL
                    raise ServingError(code, f"Warmup request {i} ({plan.source}, signature {sig_name}, "
                                       f"inputs {shape}) failed: {why}") from None
                skipped[sig_name] = why
                break
            done += 1
    records = sum(1 for s, _ in gen.requests if s not in skipped)
    return WarmupResult(records, done, time.perf_counter() - t0, plan.source, tuple(sorted(skipped.items())))


if __name__ == "__main__":
    sys.exit(main())
