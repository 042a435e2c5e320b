"""The SavedModels the end-to-end scenarios serve: `python e2e/models.py OUT` writes what
`make demo-models` writes for them (the demo builders of modelserver.demo), much faster:

- `OUT/half_plus_two/1` and `OUT/half_plus_two/123`: y = 0.5x + 2, no warmup file (123 as in TF
  Serving's own test data, which some scenarios pin with `versions: [123]`);
- `OUT/two_versions/{1,2}`: y = 0.5x + 2 and y = x + 3, each with a warmup file of 8 predict records
  (batch sizes 1 to 128, as `make demo-models` writes with `modeldeploy warmup`); `OUT/two_versions/3`
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
    import numpy as np
    from modelserver import demo, warmup

    demo.build_half_plus_two(out / "half_plus_two" / "1")
    demo.build_half_plus_two(out / "half_plus_two" / "123")
    for version, (a, b) in {1: (0.5, 2.0), 2: (1.0, 3.0)}.items():
        vdir = demo.build_half_plus_two(out / "two_versions" / str(version), a=a, b=b)
        rng = np.random.default_rng(version)
        logs = [warmup.predict_log({"x": rng.standard_normal(n).astype(np.float32)}, signature_name="serving_default")
                for n in BATCH_SIZES]
        warmup.write_records(warmup.warmup_file(vdir), logs)
    broken = out / "two_versions" / "3"  # a version that fails to load (the canary scenarios)
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (out / ".complete").write_text("")
    return out


if __name__ == "__main__":
    build(Path(sys.argv[1]).resolve())
