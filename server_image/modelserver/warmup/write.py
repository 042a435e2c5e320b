"""`model-server-warmup`: write a TF Serving warmup file for a SavedModel version.

    model-server-warmup /models/my_model/3 --sample request.json
    model-server-warmup /models/my_model/3 --batch_sizes 1,8,32

writes `<version_dir>/assets.extra/tf_serving_warmup_requests` (or `--out`): Predict requests
from REST API bodies (`--sample`), or the same requests the server generates for
`--warmup_config_file` (sources.py) from the version's signatures. Every request is replayed once
against the loaded version before the file is written, since the server would fail the load on
any that fails. It loads the model, so it needs TensorFlow (the `server` extra); it is also
`python -m modelserver.warmup.write`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from modelserver.config.files import ConfigError
from modelserver.core.errors import ServingError
from modelserver.core.servable import load_servable
from modelserver.warmup.records import MAX_RECORDS, predict_log, warmup_file, write_records
from modelserver.warmup.replay import replay
from modelserver.warmup.sources import Generated, WarmupPlan, from_rest_bodies, generate, load_rest_bodies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments."""
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
        prog="model-server-warmup",
        description="Write a TF Serving warmup file (PredictionLog TFRecord) for a SavedModel version.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def requests_for(args: argparse.Namespace, signatures: dict[str, Any]) -> Generated:
    """The samples given (typed by their signature), or requests generated from the signatures."""
    names = tuple(sorted(signatures)) if args.all_signatures else tuple(args.signature_name) or ("serving_default",)
    if args.sample:
        bodies = []
        for f in args.sample:
            for body in load_rest_bodies(f):
                bodies.append({"signature_name": names[0], **body} if isinstance(body, dict) else body)
        return from_rest_bodies(bodies, signatures, ", ".join(args.sample))
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    return generate(WarmupPlan("generated", names, sizes, args.count, args.data, args.seed), signatures)


def run(args: argparse.Namespace) -> int:
    """The requests, each replayed once (the server would fail the load on any that fails), then
    written as PredictionLogs."""
    vdir = Path(args.version_dir)
    try:
        servable = load_servable("warmup", 0, vdir)
        gen = requests_for(args, servable.signatures)
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


if __name__ == "__main__":
    sys.exit(main())
