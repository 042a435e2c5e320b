"""The SavedModels the end-to-end scenarios serve: `python e2e/models.py OUT` writes what
`make demo-models` writes for them (the demo builders of demomodels), much faster:

- `OUT/half_plus_two/1` and `OUT/half_plus_two/123`: y = 0.5x + 2, no warmup file (123 as in TF
  Serving's own test data, which some scenarios pin with `versions: [123]`);
- `OUT/two_versions/{1,2}`: y = 0.5x + 2 and y = x + 3, each with a warmup file of 8 predict records
  (batch sizes 1 to 128, as `make demo-models` writes with `model-server-warmup`); `OUT/two_versions/3`
  is not a SavedModel (a canary version that fails to load).

The kind cluster of e2e/README.md mounts `demo_models/` at /models; the local cluster mounts OUT there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def build(out: Path) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import demomodels as demo
    import numpy as np
    from modelserver.warmup import records

    demo.build_half_plus_two(out / "half_plus_two" / "1")
    demo.build_half_plus_two(out / "half_plus_two" / "123")
    for version, (a, b) in {1: (0.5, 2.0), 2: (1.0, 3.0)}.items():
        vdir = demo.build_half_plus_two(out / "two_versions" / str(version), a=a, b=b)
        rng = np.random.default_rng(version)
        logs = [records.predict_log({"x": rng.standard_normal(n).astype(np.float32)}, signature_name="serving_default")
                for n in BATCH_SIZES]
        records.write_records(records.warmup_file(vdir), logs)
    build_rollout_versions(out / "rollout")
    broken = out / "two_versions" / "3"  # a version that fails to load (the canary scenarios)
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (out / ".complete").write_text("")
    return out


def build_rollout_versions(base: Path) -> None:
    """`rollout/1` (0.5x + 2) and `/2` (x + 3) are healthy; `/3` answers x + 3 but refuses inputs
    of 100 or more (INVALID_ARGUMENT), a share of real traffic; `/4` answers x + 3 slowly (a
    loop of matrix products per call, tens of milliseconds)."""
    import demomodels as demo
    import tensorflow as tf

    demo.build_half_plus_two(base / "1", a=0.5, b=2.0)
    demo.build_half_plus_two(base / "2", a=1.0, b=3.0)

    class Picky(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):  # type: ignore[no-untyped-def]
            with tf.control_dependencies([tf.debugging.assert_less(x, 100.0, message="x too large for version 3")]):
                return {"y": x + 3.0}

    class Slow(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = tf.Variable(tf.random.stateless_normal([256, 256], seed=[3, 4]) / 16.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):  # type: ignore[no-untyped-def]
            _, m = tf.while_loop(lambda i, m: i < 60, lambda i, m: (i + 1, tf.tanh(tf.matmul(m, self.m))),
                                 (tf.constant(0), self.m))
            return {"y": x + 3.0 + 0.0 * tf.reduce_sum(m)}

    for version, module in ((3, Picky()), (4, Slow())):
        tf.saved_model.save(module, str(base / str(version)), signatures={"serving_default": module.predict})


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
