"""A loaded model version: its signatures, their metadata and input checks, and the calls.

Signature metadata comes from the SavedModel's own MetaGraphDef (`saved_model.pb`), so
GetModelMetadata returns the real `signature_def` map for TF1 and TF2 models alike.

A version is loaded as TF Serving loads it (SavedModelBundle): its MetaGraph is imported into a
graph and `tf.compat.v1.Session` of its own, variables restored and the init/main op run, and each
signature gets one prepared callable (`CallableOptions`: feeds and fetches fixed once, so a call is
one C++ `RunCallable`, 3-4x less overhead than a TF2 function's eager call for small models).
This loads every TF1 graph model TF Serving loads, including those `tf.saved_model.load` cannot
(TF Serving's half_plus_three: a ParseExample rank error), and TF2 models the same way. A TF2
model that the session loader rejects falls back to `tf.saved_model.load` (logged).
Inputs are fed as sent: only TensorFlow decides whether a shape can run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelserver.core.errors import ServingError, invalid_argument

log = logging.getLogger("modelserver.core.servable")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF2's initializer, listed among the signatures
SERVE_TAG = "serve"

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a signature: alias, numpy dtype, TF dtype enum, shape (None = any)."""

    name: str
    dtype: np.dtype
    dtype_enum: int
    dtype_name: str
    shape: tuple[int | None, ...] | None  # None = unknown rank


@dataclass(slots=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    fn: Callable[..., Any] = field(repr=False)
    input_names_text: str = ""  # precomputed for error messages

    def run(self, inputs: Tensors) -> Tensors:
        """Calls the signature (synchronously; runs on a worker thread) and returns numpy outputs."""
        import tensorflow as tf

        try:
            result = self.fn(inputs)
        except tf.errors.InvalidArgumentError as exc:
            raise invalid_argument(_tf_message(exc)) from None
        except (TypeError, ValueError) as exc:  # TF's Python-side argument checks (keyword call)
            raise invalid_argument(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                   type(exc).__name__) from None
        except tf.errors.OpError as exc:
            code = _OP_ERROR_CODES.get(type(exc).__name__)
            if code is None:
                raise
            raise ServingError(code, _tf_message(exc)) from None
        return {k: _numpy(v) for k, v in result.items()}


def _numpy(t: Any) -> np.ndarray:
    """An output as an ndarray: eager tensors (TF2) and session results (TF1, already numpy)."""
    out = t if isinstance(t, np.ndarray) else t.numpy() if hasattr(t, "numpy") else t
    if isinstance(out, np.ndarray):
        return out
    if isinstance(out, bytes | str):
        return np.array(out, dtype=object)  # a scalar string comes back as bytes
    return np.asarray(out)


def _tf_message(exc: Exception) -> str:
    """The informative line of a TF op error (not "Graph execution error:" or its stack trace)."""
    msg = str(getattr(exc, "message", exc))
    lines = [ln.strip() for ln in msg.splitlines()
             if ln.strip() and not ln.startswith((" ", "\t"))
             and not ln.startswith(("Graph execution error", "Detected at node", "File ", "[["))]
    text = lines[-1] if lines else (msg.strip().splitlines() or [type(exc).__name__])[0]
    return text.split(" [Op:")[0].split("\t [[")[0].strip()


def _op_error_codes() -> dict[str, Any]:
    import grpc

    return {
        "OutOfRangeError": grpc.StatusCode.OUT_OF_RANGE,
        "FailedPreconditionError": grpc.StatusCode.FAILED_PRECONDITION,
        "NotFoundError": grpc.StatusCode.INVALID_ARGUMENT,  # e.g. a file named by an input
        "ResourceExhaustedError": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "DeadlineExceededError": grpc.StatusCode.DEADLINE_EXCEEDED,
        "UnimplementedError": grpc.StatusCode.UNIMPLEMENTED,
    }


_OP_ERROR_CODES = _op_error_codes()


@dataclass(slots=True)
class Servable:
    name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_defs: Any  # the MetaGraphDef's signature_def map (protobuf map of SignatureDef)
    loaded: Any = field(repr=False, default=None)  # keeps the TF object alive

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise invalid_argument(
                f"Serving signature name: \"{name or DEFAULT_SIGNATURE}\" not found in signature def"
                f" (available: {', '.join(sorted(self.signatures))})"
            )
        return sig


def _spec_from_tensor_info(name: str, info: Any) -> TensorSpec:
    import tensorflow as tf

    dt = tf.dtypes.as_dtype(info.dtype)
    shape: tuple[int | None, ...] | None
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    np_dtype = np.dtype(object) if dt == tf.string else np.dtype(dt.as_numpy_dtype)
    return TensorSpec(name, np_dtype, int(info.dtype), dt.name, shape)


def read_meta_graph(version_dir: Path, tags: tuple[str, ...] = (SERVE_TAG,)) -> Any:
    """The MetaGraphDef with exactly `tags` of a SavedModel directory (saved_model.pb or .pbtxt)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb = version_dir / "saved_model.pb"
    if pb.exists():
        sm.ParseFromString(pb.read_bytes())
    else:
        text_format.Parse((version_dir / "saved_model.pbtxt").read_text(), sm)
    for mg in sm.meta_graphs:
        if set(mg.meta_info_def.tags) == set(tags):
            return mg
    raise ServingError(
        _grpc().StatusCode.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }} in {version_dir}",
    )


def _grpc() -> Any:
    import grpc

    return grpc


def is_tf2(meta: Any) -> bool:
    """Whether a MetaGraphDef was saved by TF2 (`tf.saved_model.save`: it has an object graph)."""
    return len(meta.object_graph_def.nodes) > 0


def load_servable(name: str, version: int, version_dir: Path, tags: tuple[str, ...] = (SERVE_TAG,),
                  session_options: SessionOptions | None = None) -> Servable:
    """Loads a SavedModel version (blocking; call off the event loop)."""
    meta = read_meta_graph(version_dir, tags)
    try:
        loaded, fns = _load_session(version_dir, tags, meta, session_options)
    except Exception as exc:
        if not is_tf2(meta):
            raise
        log.warning("%s: session loading failed (%s: %s); loading with tf.saved_model.load",
                    version_dir, type(exc).__name__, _tf_message(exc))
        loaded, fns = _load_tf2(version_dir, tags, meta)
    sigs: dict[str, Signature] = {}
    for sig_name, sdef in meta.signature_def.items():
        fn = fns.get(sig_name)
        if sig_name == INIT_OP_SIGNATURE or fn is None:
            continue
        inputs = {k: _spec_from_tensor_info(k, v) for k, v in sdef.inputs.items()}
        outputs = {k: _spec_from_tensor_info(k, v) for k, v in sdef.outputs.items()}
        sigs[sig_name] = Signature(
            sig_name, sdef.method_name, inputs, outputs, fn, ", ".join(sorted(inputs))
        )
    return Servable(name, version, version_dir, sigs, meta.signature_def, loaded)


def _load_tf2(version_dir: Path, tags: tuple[str, ...], meta: Any) -> tuple[Any, dict[str, Callable[..., Any]]]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir), tags=list(tags))
    return loaded, {k: make_caller(f) for k, f in loaded.signatures.items()}


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How a version's session runs (the parts of TF Serving's SessionBundleConfig we use).

    - `thread_spinning`: TensorFlow's pool threads spin for a while after each op before they
      sleep (its default). False sets `ConfigProto.experimental.disable_thread_spinning`: on a
      host with few cores the spinning threads take CPU from the front end between calls.
    - `caller_thread`: run a signature's ops on the calling thread instead of handing them to the
      inter-op pool (`RunOptions.inter_op_thread_pool = -1`, for "simple graphs, where the
      overhead of an additional context switch is comparable with the overhead of Session::Run"):
      "auto" measures both ways on a signature's first calls and keeps the faster; "always";
      "never" (TF Serving's behaviour).
    """

    thread_spinning: bool = True
    caller_thread: str = "auto"


def session_config(options: SessionOptions) -> Any:
    """The process's TF config (thread counts and GPU settings, as configure_tensorflow set them
    on the eager context) with the session options applied."""
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    config = config_pb2.ConfigProto()
    config.CopyFrom(context.context().config)
    if not options.thread_spinning:
        config.experimental.disable_thread_spinning = True
    return config


class SessionBundle:
    """A TF1 SavedModel loaded into its own graph and session (TF Serving's SavedModelBundle);
    `close()` releases the session."""

    def __init__(self, version_dir: Path, tags: tuple[str, ...], options: SessionOptions | None = None) -> None:
        import tensorflow as tf

        self.options = options or SessionOptions()
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(self.options))
        from tensorflow.python.util import deprecation

        try:
            with self.graph.as_default(), deprecation.silence():  # "use tf.saved_model.load": not for TF1 graphs
                tf.compat.v1.saved_model.loader.load(self.session, list(tags), str(version_dir))
        except BaseException:
            self.session.close()
            raise

    def callable_for(self, sdef: Any) -> Callable[[Tensors], Any] | None:
        """One prepared callable for a SignatureDef, or None when it uses sparse or composite
        tensors (which TF Serving's Predict does not take either)."""
        from tensorflow.core.protobuf import config_pb2

        infos = [*sdef.inputs.values(), *sdef.outputs.values()]
        if any(i.WhichOneof("encoding") != "name" for i in infos):
            return None
        in_names = sorted(sdef.inputs)
        out_names = list(sdef.outputs)

        def make(caller_thread: bool) -> Callable[..., Any]:
            options = config_pb2.CallableOptions()
            options.feed.extend(sdef.inputs[n].name for n in in_names)
            options.fetch.extend(sdef.outputs[n].name for n in out_names)
            if caller_thread:
                options.run_options.inter_op_thread_pool = -1
            return self.session._make_callable_from_options(options)  # type: ignore[no-any-return]

        mode = self.options.caller_thread
        run = make(mode == "always") if mode in ("always", "never") else FasterOf(make(False), make(True))

        def call(inputs: Tensors) -> Tensors:
            values = run(*[inputs[n] for n in in_names])
            return dict(zip(out_names, values, strict=True))

        return call

    def close(self) -> None:
        self.session.close()


class FasterOf:
    """Calls one of two equivalent callables: the first `2 * probes` calls alternate between them
    (the first call of each, which builds TF's executor, not counted), then the one with the lower
    median time per row stays. Rows: dimension 0 of the first argument."""

    __slots__ = ("fns", "times", "chosen", "probes")

    def __init__(self, a: Callable[..., Any], b: Callable[..., Any], probes: int = 8) -> None:
        self.fns = (a, b)
        self.times: tuple[list[float], list[float]] = ([], [])
        self.chosen: Callable[..., Any] | None = None
        self.probes = probes

    def __call__(self, *args: Any) -> Any:
        chosen = self.chosen
        if chosen is not None:
            return chosen(*args)
        a, b = self.times
        i = 0 if len(a) <= len(b) else 1
        t0 = time.perf_counter()
        out = self.fns[i](*args)
        first: Any = args[0] if args else None
        rows = len(first) if getattr(first, "ndim", 0) else 1
        self.times[i].append((time.perf_counter() - t0) / max(1, rows))
        if min(len(a), len(b)) > self.probes:
            self.chosen = self.fns[0 if _median(a[1:]) <= _median(b[1:]) else 1]
        return out

    @property
    def chose_second(self) -> bool | None:
        return None if self.chosen is None else self.chosen is self.fns[1]


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    return ys[len(ys) // 2]


def _load_session(version_dir: Path, tags: tuple[str, ...], meta: Any,
                  options: SessionOptions | None = None) -> tuple[Any, dict[str, Callable[..., Any]]]:
    bundle = SessionBundle(version_dir, tags, options)
    fns = {}
    for k, sdef in meta.signature_def.items():
        if k == INIT_OP_SIGNATURE:
            continue
        fn = bundle.callable_for(sdef)
        if fn is not None:
            fns[k] = fn
    return bundle, fns


def make_caller(concrete: Any) -> Callable[[Tensors], Any]:
    """A fast call of a loaded TF2 signature: its flat call with the inputs in the signature's
    (sorted keyword) order, skipping TF's per-call argument canonicalization (about 3x less
    overhead for small models) and its shape check, so inputs are fed as sent, as TF Serving's
    session does. Falls back to the keyword call where the function does not have that shape."""
    import tensorflow as tf

    kwargs_spec = concrete.structured_input_signature[1] if concrete.structured_input_signature else {}
    names = sorted(kwargs_spec)
    captured = list(getattr(concrete, "captured_inputs", []))
    call_flat = getattr(concrete, "_call_flat", None)
    if call_flat is None or not names or len(concrete.inputs) - len(captured) != len(names):
        return lambda inputs: concrete(**inputs)
    dtypes = [kwargs_spec[n].dtype for n in names]
    convert = tf.constant

    def call(inputs: Tensors) -> Any:
        return call_flat([convert(inputs[n], dt) for n, dt in zip(names, dtypes, strict=True)], captured)

    return call


def validate_inputs(sig: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    """TF Serving's checks before a call: input names (unknown and missing) and dtypes, each an
    INVALID_ARGUMENT naming the problem. Shapes are not checked: a request's tensors are fed as
    sent, and TensorFlow alone decides whether they run (TF Serving answers `[3.0, 3.5, 4.0]`
    for a `[3]` input to half_plus_two's `[-1,1]` signature)."""
    if len(inputs) != len(sig.inputs) or any(k not in sig.inputs for k in inputs):
        unknown = sorted(k for k in inputs if k not in sig.inputs)
        if unknown:
            raise invalid_argument(
                f"input tensor alias not found in signature: {', '.join(unknown)}. "
                f"Inputs expected to be in the set {{{sig.input_names_text}}}."
            )
        missing = sorted(k for k in sig.inputs if k not in inputs)
        raise invalid_argument(
            f"Missing input tensor(s): {', '.join(missing)}. Signature \"{sig.name}\" expects inputs "
            f"{{{sig.input_names_text}}}."
        )
    for k, arr in inputs.items():
        spec = sig.inputs[k]
        if arr.dtype != spec.dtype and not (spec.dtype.kind == "O" and arr.dtype.kind in "OSU"):
            raise invalid_argument(
                f"Expects arg[{k}] to be {spec.dtype_name} but {_dtype_text(arr.dtype)} is provided"
            )


def _dtype_text(dt: np.dtype) -> str:
    if dt.kind in "OSU":
        return "string"
    if dt == np.float32:
        return "float"
    if dt == np.float64:
        return "double"
    return dt.name
