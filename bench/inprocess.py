"""The in-process limit: a SavedModel's serving_default signature called directly.

No server, no protocol: the signature called in a loop, TensorFlow limited to N intra-op and
inter-op threads, at several batch sizes. `--loader session` (the default: the fastest call TF
offers, and the server's own) loads the model into a tf.compat.v1 Session, as TF Serving does, and
calls a prepared callable; `--loader function` calls
`tf.saved_model.load(dir).signatures["serving_default"](x=batch)`. Prints one JSON object:
{"model", "threads", "loader", "results": [{"batch", "calls_per_s", "inferences_per_s",
"call_p50_us", "call_p99_us"}]}.

    python bench/inprocess.py --model-dir DIR/1 --name mlp --batches 1,32,128 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def input_for(name: str, batch: int):  # type: ignore[no-untyped-def]
    """The batch-N input each benchmark sends (batch-1 requests in the load tests)."""
    import numpy as np

    rng = np.random.default_rng(1)
    if name == "mlp":
        return {"x": rng.random((batch, 784), dtype=np.float32)}
    return {"x": rng.random((batch,), dtype=np.float32)}


def measure(fn, feed, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    for _ in range(20):  # warm up: tracing, allocator, oneDNN primitives
        fn(**feed)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn(**feed)
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= end:
            break
    total = time.perf_counter() - start
    lat.sort()
    return {
        "calls": len(lat),
        "calls_per_s": len(lat) / total,
        "call_p50_us": statistics.median(lat) * 1e6,
        "call_p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="a SavedModel version directory")
    parser.add_argument("--name", required=True, choices=["half_plus_two", "mlp"])
    parser.add_argument("--batches", default="1,32,128")
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per batch size")
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op and inter-op threads")
    parser.add_argument("--loader", choices=["session", "function"], default="session")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.loader == "session":
        from pathlib import Path

        from modelserver.core.servable import SessionBundle, read_meta_graph

        sdef = read_meta_graph(Path(args.model_dir)).signature_def["serving_default"]
        call = SessionBundle(Path(args.model_dir), ("serve",)).callable_for(sdef)

        def fn(**inputs):  # type: ignore[no-untyped-def]
            return call(inputs)  # type: ignore[misc]
    else:
        fn = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        inputs = input_for(args.name, batch)
        feed = inputs if args.loader == "session" else {k: tf.constant(v) for k, v in inputs.items()}
        r = measure(fn, feed, args.seconds)
        r.update(batch=batch, inferences_per_s=r["calls_per_s"] * batch)
        results.append(r)
        print(f"{args.name} batch {batch}: {r['calls_per_s']:.0f} calls/s, "
              f"{r['inferences_per_s']:.0f} inferences/s, p50 {r['call_p50_us']:.0f} us", file=sys.stderr)
    print(json.dumps({"model": args.name, "threads": args.threads, "loader": args.loader, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
