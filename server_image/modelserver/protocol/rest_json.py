"""TF Serving's REST JSON formats, as pure functions: request JSON → tensors / tf.Examples, and
outputs / results → response JSON. Every client mistake raises INVALID_ARGUMENT naming it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from modelserver.core.errors import invalid_argument
from modelserver.core.servable import Signature, TensorSpec

Tensors = dict[str, np.ndarray]


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "b64" in v


def _decode_b64(v: dict[str, Any]) -> bytes:
    s = v["b64"]
    if not isinstance(s, str):
        raise invalid_argument("'b64' value must be a base64 string")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"Unable to base64 decode: {s[:40]!r}") from None


def _string_leaves(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_string_leaves(v, name) for v in value]
    if isinstance(value, str):
        return value.encode()
    if _is_b64(value):
        return _decode_b64(value)
    raise invalid_argument(f"Input \"{name}\" expects strings (or {{\"b64\": ...}}), got {type(value).__name__}: "
                           f"{str(value)[:40]}")


def _shape_of(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """JSON value → ndarray of the signature's dtype (no silent string→number conversion)."""
    name = spec.name
    if spec.dtype.kind == "O":
        leaves = _string_leaves(value, name)
        shape = _shape_of(leaves)
        arr = np.empty(shape, dtype=object)
        try:
            arr[...] = leaves if shape else leaves
        except ValueError:
            raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes") from None
        if shape and any(not isinstance(x, bytes) for x in arr.flat):
            raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes")
        return arr
    try:
        raw = np.asarray(value)
    except ValueError:
        raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes") from None
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise invalid_argument(
            f"Input \"{name}\" expects {spec.dtype_name} values, got {_describe(value)}")
    target = spec.dtype.kind
    if target in "iu" and kind == "f":
        raise invalid_argument(f"Input \"{name}\" expects {spec.dtype_name} (integer) values, got floats")
    if target == "b" and kind != "b":
        raise invalid_argument(f"Input \"{name}\" expects bool values (true/false)")
    if target in "iuf" and kind == "b":
        raise invalid_argument(f"Input \"{name}\" expects {spec.dtype_name} values, got booleans")
    return raw.astype(spec.dtype, copy=False)


def _describe(value: Any) -> str:
    leaf = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    return f"{type(leaf).__name__} {str(leaf)[:40]}" if not isinstance(leaf, list) else "mixed values"


def predict_inputs(body: dict[str, Any], sig: Signature) -> tuple[Tensors, bool]:
    """The tensors of a :predict body and whether it used the row (`instances`) format."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise invalid_argument("JSON object must have exactly one of 'instances' (row format) or 'inputs' "
                               "(columnar format)")
    if has_instances:
        return row_inputs(body["instances"], sig), True
    return columnar_inputs(body["inputs"], sig), False


def row_inputs(instances: Any, sig: Signature) -> Tensors:
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty JSON list")
    names = list(sig.inputs)
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(names) != 1:
            raise invalid_argument(f"Signature \"{sig.name}\" has {len(names)} inputs ({', '.join(names)}): "
                                   "each instance must be a JSON object naming them")
        if any(isinstance(i, dict) and not _is_b64(i) for i in instances):
            raise invalid_argument("instances must all be objects or all be values, not a mix")
        return {names[0]: to_array(instances, sig.inputs[names[0]])}
    columns: dict[str, list[Any]] = {}
    for n, inst in enumerate(instances):
        if not isinstance(inst, dict) or _is_b64(inst):
            raise invalid_argument("instances must all be objects or all be values, not a mix")
        for key in inst:
            if key not in sig.inputs:
                raise invalid_argument(f"instance {n}: input tensor alias not found in signature: {key}. "
                                       f"Inputs expected to be in the set {{{sig.input_names_text}}}.")
        for key in names:
            if key not in inst:
                raise invalid_argument(f"instance {n} is missing input \"{key}\"")
            columns.setdefault(key, []).append(inst[key])
    return {k: to_array(v, sig.inputs[k]) for k, v in columns.items()}


def columnar_inputs(inputs: Any, sig: Signature) -> Tensors:
    names = list(sig.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        for key in inputs:
            if key not in sig.inputs:
                raise invalid_argument(f"input tensor alias not found in signature: {key}. "
                                       f"Inputs expected to be in the set {{{sig.input_names_text}}}.")
        return {k: to_array(v, sig.inputs[k]) for k, v in inputs.items()}
    if len(names) != 1:
        raise invalid_argument(f"Signature \"{sig.name}\" has {len(names)} inputs: 'inputs' must be an object")
    return {names[0]: to_array(inputs, sig.inputs[names[0]])}


# ---- responses ---------------------------------------------------------------------------------


def to_json_value(name: str, arr: np.ndarray) -> Any:
    """An output as JSON: `*_bytes` outputs base64, other strings UTF-8, float32 printed shortest."""
    if arr.dtype.kind in "OSU":
        if name.endswith("_bytes"):
            return _map_nested(arr, lambda b: {"b64": base64.b64encode(_bytes(b)).decode()})
        return _map_nested(arr, lambda b: _bytes(b).decode("utf-8", errors="replace"))
    if arr.dtype in (np.float32, np.float16):
        # shortest float32 text, so 0.1f prints as 0.1 (as TF Serving does), not 0.10000000149011612
        return arr.astype(str).astype(np.float64).tolist() if arr.size else arr.tolist()
    return arr.tolist()


def _bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _map_nested(arr: np.ndarray, fn: Any) -> Any:
    if arr.ndim == 0:
        return fn(arr.item())
    return [_map_nested(a, fn) if a.ndim else fn(a.item()) for a in arr] if arr.ndim > 1 else [fn(x) for x in arr]


def predict_response(outputs: Tensors, row: bool) -> dict[str, Any]:
    if not row:
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
            return {"outputs": to_json_value(name, arr)}
        return {"outputs": {k: to_json_value(k, v) for k, v in outputs.items()}}
    for k, v in outputs.items():
        if v.ndim == 0:
            raise invalid_argument(f"Output \"{k}\" is a scalar; use the columnar 'inputs' format")
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        return {"predictions": to_json_value(name, arr)}
    sizes = {v.shape[0] for v in outputs.values()}
    if len(sizes) != 1:
        raise invalid_argument("Output tensors have different batch sizes; use the columnar 'inputs' format")
    cols = {k: to_json_value(k, v) for k, v in outputs.items()}
    return {"predictions": [{k: cols[k][i] for k in cols} for i in range(sizes.pop())]}


# ---- classify / regress ------------------------------------------------------------------------


def feature_from_json(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feat = feature_pb2.Feature()
    if not values:
        feat.float_list.SetInParent()
        return feat
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        feat.bytes_list.value.extend(_decode_b64(v) if _is_b64(v) else v.encode() for v in values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        try:
            feat.int64_list.value.extend(values)
        except ValueError:
            raise invalid_argument(f"Feature \"{name}\": integer out of int64 range") from None
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        feat.float_list.value.extend(float(v) for v in values)
    else:
        raise invalid_argument(f"Feature \"{name}\" must be a number, string, {{\"b64\": ...}} or a flat list of "
                               "one of those")
    return feat


def example_from_json(obj: Any, where: str) -> example_pb2.Example:
    if not isinstance(obj, dict):
        raise invalid_argument(f"{where} must be a JSON object of features")
    ex = example_pb2.Example()
    for k, v in obj.items():
        ex.features.feature[k].CopyFrom(feature_from_json(k, v))
    return ex


def fill_example_input(body: dict[str, Any], inp: Any) -> None:
    """Fills a tensorflow_serving Input proto from a :classify / :regress body."""
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise invalid_argument("'examples' must be a non-empty JSON list of objects")
    if "context" in body:
        target = inp.example_list_with_context
        target.context.CopyFrom(example_from_json(body["context"], "'context'"))
    else:
        target = inp.example_list
    for i, e in enumerate(examples):
        target.examples.add().CopyFrom(example_from_json(e, f"examples[{i}]"))


def classify_json(result: Any) -> dict[str, Any]:
    return {"results": [[[c.label, _f32(c.score)] for c in cl.classes] for cl in result.classifications]}


def regress_json(result: Any) -> dict[str, Any]:
    return {"results": [_f32(r.value) for r in result.regressions]}


def _f32(x: float) -> float:
    return float(str(np.float32(x)))
