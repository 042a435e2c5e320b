"""Model warmup at load: replay a version's warmup requests before it turns AVAILABLE.

The requests come from the version's own warmup file (records.py: TF Serving's
`assets.extra/tf_serving_warmup_requests`, whose predict, classify, regress and multi_inference
logs are replayed) or from `--warmup_config_file`'s plan (sources.py: requests generated from the
signatures, or REST bodies from a file, replayed as Predict requests). Each is run
`--num_request_iterations_for_warmup` times through the transport-free inference functions, on
the loading thread, so the first real request finds every tf.function traced and every lazy
initialisation done. A missing file is fine; more than 1000 records is INVALID_ARGUMENT; any
failing request fails the load with a status that names it (except generated requests for
signatures nobody named, which skip a signature that refuses them).

`load_hook` is what the manager calls for each loaded version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from modelserver.config.files import ConfigError
from modelserver.core.errors import ServingError
from modelserver.protocol import proto_api
from modelserver.warmup.records import MAX_RECORDS, parse_logs, predict_log, read_records, warmup_file
from modelserver.warmup.sources import from_rest_bodies, generate, load_rest_bodies

log = logging.getLogger("modelserver")


@dataclass(frozen=True, slots=True)
class WarmupResult:
    records: int  # records in the file, or requests generated (0: no warmup)
    requests: int  # requests replayed (records x iterations)
    seconds: float
    source: str = "model"  # model | generated | requests (sources.py)
    skipped: tuple[tuple[str, str], ...] = ()  # (signature, why): generated requests it refused

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "records": self.records, "requests": self.requests,
                "seconds": round(self.seconds, 6), "skipped": dict(self.skipped)}


Replayer = Callable[[Any, Any], Any]  # (servable, request) -> response


def default_replayers() -> dict[str, Replayer]:
    """log_type -> (request field, transport-free call) for the logs TF Serving replays."""
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
    for i, entry in enumerate(logs):
        kind = entry.WhichOneof("log_type")
        call = replayers.get(kind or "")
        if call is None:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported log_type for warmup: {kind or 'none'} (record {i} in {path})")
        request = getattr(entry, kind).request  # type: ignore[arg-type]
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


LoadHook = Callable[[Any, Path], Any]


def load_hook(enabled: bool, iterations: int, metrics: Any = None, plan: Any = None) -> LoadHook | None:
    """The manager's `on_version_loaded` hook (`--enable_model_warmup`,
    `--num_request_iterations_for_warmup`, `--warmup_config_file`'s plan): returns the
    WarmupResult the manager keeps per version; records warmup latency when metrics are on."""
    if not enabled:
        return None

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
    """Generated or user-given requests (sources.py) replayed like a warmup file's
    records, through the same Predict path as real requests. A failure fails the load (naming
    the request), except that generated requests for signatures nobody named skip a signature
    that refuses them."""
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
