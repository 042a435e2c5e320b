"""The peer: PyTriton (Triton Inference Server core + a Python model) serving the same two
SavedModels with Triton's dynamic batcher. Runs in its own venv (bench/work/.venv-pytriton:
nvidia-pytriton 0.7.0, numpy<2, tensorflow), made by bench/setup.sh.

    bench/work/.venv-pytriton/bin/python bench/pytriton_peer.py --models DIR --grpc-port P \
        --http-port P2 --metrics-port P3 --token TOKEN

The three fixes PyTriton 0.7.0 needs on these machines: LD_LIBRARY_PATH reaches this
Python's own libpython3.11.so (else Triton's Python backend picks Debian's); a token for the
guarded gRPC endpoints (perf_analyzer sends it with -H); SIGINT restored and SIGTERM mapped to
it, so a background process shuts Triton down cleanly.

Triton model inputs exclude the batch dimension: half_plus_two takes x [1] per request (the
SavedModel's x [None] is x[:, 0]), the MLP x [784].
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import sysconfig
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_libdir = sysconfig.get_config_var("LIBDIR") or ""
os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (_libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)


def _sigterm(signum, frame):  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="directory holding half_plus_two/1 and mlp/1")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--max-batch-size", type=int, default=128)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="TF intra-op and inter-op threads")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm)

    import numpy as np
    import tensorflow as tf
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    root = Path(args.models)
    hpt = tf.saved_model.load(str(root / "half_plus_two" / "1")).signatures["serving_default"]
    mlp = tf.saved_model.load(str(root / "mlp" / "1")).signatures["serving_default"]

    @batch
    def infer_hpt(x: np.ndarray) -> dict[str, np.ndarray]:
        y = hpt(x=tf.constant(x.reshape(-1)))["y"].numpy()
        return {"y": y.reshape(-1, 1)}

    @batch
    def infer_mlp(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": mlp(x=tf.constant(x))["probabilities"].numpy()}

    config = TritonConfig(
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        http_address="127.0.0.1", http_port=args.http_port,
        metrics_port=args.metrics_port, allow_metrics=False,
    )
    batcher = DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us)
    with Triton(config=config, security_config=TritonSecurityConfig(access_token=args.token)) as triton:
        triton.bind(
            model_name="half_plus_two", infer_func=infer_hpt,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(1,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher),
            strict=False,
        )
        triton.bind(
            model_name="mlp", infer_func=infer_mlp,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(784,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher),
            strict=False,
        )
        print(f"pytriton peer: grpc 127.0.0.1:{args.grpc_port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
