"""Builders for the SavedModels shared by the tests, the demo (`make run`) and the benchmarks.

`python -m demomodels --out DIR` writes every model under DIR/<name>/<version>/ and a
DIR/models.config (model_config_list text proto) that serves them all.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

HALF_PLUS_TWO = "half_plus_two"
HALF_PLUS_TWO_TF1 = "half_plus_two_tf1"
TWO_VERSIONS = "two_versions"
MLP = "mlp"
BYTES_MODEL = "bytes_model"


def _tf() -> Any:  # TensorFlow is imported lazily: the module's constants are usable without it
    import tensorflow as tf

    return tf


def build_half_plus_two(export_dir: str | Path, a: float = 0.5, b: float = 2.0) -> Path:
    """TF2 tf.Module: serving_default x->y = a*x + b (float32 [None] or [None, 1]...), plus
    `classify` and `regress` signatures taking serialized tf.Examples with float feature `x`."""
    tf = _tf()

    class HalfPlusTwo(tf.Module):  # type: ignore[name-defined]  # tf is a lazily imported module object, not a name mypy resolves
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(a, dtype=tf.float32, name="a")
            self.b = tf.Variable(b, dtype=tf.float32, name="b")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):
            return {"y": self.a * x + self.b}

        def _parse(self, inputs):
            feats = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return self.a * feats["x"] + self.b

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            return {"scores": self._parse(inputs)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": self._parse(inputs)}

    m = HalfPlusTwo()
    out = Path(export_dir)
    tf.saved_model.save(
        m,
        str(out),
        signatures={"serving_default": m.predict, "classify": m.classify, "regress": m.regress},
    )
    return out


def build_half_plus_two_tf1(export_dir: str | Path) -> Path:
    """TF1 graph SavedModel (tf.compat.v1.saved_model.Builder) with TF Serving's signature layout:
    serving_default (predict x->y), classify_x_to_y (classify), regress_x_to_y (regress)."""
    tf = _tf()
    v1 = tf.compat.v1
    out = Path(export_dir)
    if out.exists():
        shutil.rmtree(out)  # the Builder refuses a non-empty directory
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, shape=[None], name="tf_example")
        feats = v1.io.parse_example(serialized, {"x": v1.io.FixedLenFeature([1], tf.float32)})
        x_ex = tf.identity(feats["x"], name="x_ex")
        a = v1.Variable(0.5, name="a", use_resource=True)
        b = v1.Variable(2.0, name="b", use_resource=True)
        y_ex = tf.add(tf.multiply(a, x_ex), b, name="y_ex")
        x = v1.placeholder(tf.float32, shape=[None], name="x")
        y = tf.add(tf.multiply(a, x), b, name="y")
        u = v1.saved_model.utils.build_tensor_info
        sigs = {
            "serving_default": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"x": u(x)}, outputs={"y": u(y)}, method_name="tensorflow/serving/predict"
            ),
            "classify_x_to_y": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"inputs": u(serialized)},
                outputs={"scores": u(y_ex)},
                method_name="tensorflow/serving/classify",
            ),
            "regress_x_to_y": v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"inputs": u(serialized)},
                outputs={"outputs": u(y_ex)},
                method_name="tensorflow/serving/regress",
            ),
        }
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(out))
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map=sigs)
            builder.save()
    return out


def build_mlp(export_dir: str | Path, seed: int = 0, sizes: tuple[int, ...] = (784, 2048, 2048, 10)) -> Path:
    """MLP 784→2048→2048→10 (ReLU, softmax) with fixed-seed random weights: serving_default
    `x` float32 [None, 784] → `probabilities` float32 [None, 10]."""
    tf = _tf()
    rng = np.random.default_rng(seed)

    class Mlp(tf.Module):  # type: ignore[name-defined]  # tf is a lazily imported module object, not a name mypy resolves
        def __init__(self) -> None:
            super().__init__()
            self.ws = [
                tf.Variable((rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32), name=f"w{k}")
                for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
            ]
            self.bs = [tf.Variable(np.zeros(o, np.float32), name=f"b{k}") for k, o in enumerate(sizes[1:])]

        @tf.function(input_signature=[tf.TensorSpec([None, sizes[0]], tf.float32, name="x")])
        def predict(self, x):
            h = x
            for k, (w, b) in enumerate(zip(self.ws, self.bs, strict=True)):
                h = tf.matmul(h, w) + b
                if k < len(self.ws) - 1:
                    h = tf.nn.relu(h)
            return {"probabilities": tf.nn.softmax(h)}

    m = Mlp()
    out = Path(export_dir)
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.predict})
    return out


def build_bytes_model(export_dir: str | Path) -> Path:
    """String model: serving_default echoes `data` (string [None]) as `data_bytes` (base64 in
    REST) and its length as `length`. Signature `read_file` (input `path`, a string scalar) writes
    `<path>.started`, waits (sleeping 10 ms at a time, in TensorFlow) until `path` exists, then
    returns its contents as `content_bytes`: tests use it to hold a request in flight."""
    tf = _tf()
    from tensorflow.python.data.experimental.ops import testing as tf_data_testing

    class BytesModel(tf.Module):  # type: ignore[name-defined]  # tf is a lazily imported module object, not a name mypy resolves
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="data")])
        def echo(self, data):
            return {"data_bytes": tf.identity(data), "length": tf.strings.length(data)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
        def read_file(self, path):
            started = tf.io.write_file(path + ".started", "started")

            def missing(i):
                return tf.equal(tf.size(tf.io.matching_files(path)), 0)

            def sleep(i):
                nap = tf.data.Dataset.range(1).apply(tf_data_testing.sleep(10_000))
                return [i + 1 + nap.reduce(tf.constant(0, tf.int64), lambda a, b: a + b)]

            with tf.control_dependencies([started]):
                waited = tf.while_loop(missing, sleep, [tf.constant(0, tf.int64)])
            with tf.control_dependencies(waited):
                return {"content_bytes": tf.io.read_file(path)}

    m = BytesModel()
    out = Path(export_dir)
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.echo, "read_file": m.read_file})
    return out


def model_config_text(entries: list[tuple[str, str]], labels: dict[str, dict[str, int]] | None = None,
                      policies: dict[str, str] | None = None) -> str:
    """A model_config_list text proto for (name, base_path) pairs; `policies` maps a name to the
    text of its model_version_policy (e.g. "all {}"), `labels` to its version_labels."""
    labels = labels or {}
    policies = policies or {}
    parts = ["model_config_list {"]
    for name, base in entries:
        parts.append("  config {")
        parts.append(f'    name: "{name}"')
        parts.append(f'    base_path: "{base}"')
        parts.append('    model_platform: "tensorflow"')
        if name in policies:
            parts.append(f"    model_version_policy {{ {policies[name]} }}")
        for key, ver in labels.get(name, {}).items():
            parts.append(f'    version_labels {{ key: "{key}" value: {ver} }}')
        parts.append("  }")
    parts.append("}")
    return "\n".join(parts) + "\n"


def build_all(out: str | Path, mlp: bool = True) -> Path:
    """Writes every demo model and `models.config`; returns the config file's path."""
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    build_half_plus_two(root / HALF_PLUS_TWO / "1")
    build_half_plus_two_tf1(root / HALF_PLUS_TWO_TF1 / "1")
    build_half_plus_two(root / TWO_VERSIONS / "1", a=0.5, b=2.0)
    build_half_plus_two(root / TWO_VERSIONS / "2", a=1.0, b=3.0)
    build_bytes_model(root / BYTES_MODEL / "1")
    names = [HALF_PLUS_TWO, HALF_PLUS_TWO_TF1, TWO_VERSIONS, BYTES_MODEL]
    if mlp:
        build_mlp(root / MLP / "1")
        names.append(MLP)
    cfg = root / "models.config"
    cfg.write_text(
        model_config_text(
            [(n, str(root / n)) for n in names],
            labels={TWO_VERSIONS: {"stable": 1, "canary": 2}},
            policies={TWO_VERSIONS: "all {}"},
        )
    )
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demomodels", description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write the models and models.config into")
    parser.add_argument("--no-mlp", action="store_true", help="skip the (23 MB) MLP")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cfg = build_all(args.out, mlp=not args.no_mlp)
    print(f"wrote {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
