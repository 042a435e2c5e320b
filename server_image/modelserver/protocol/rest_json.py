"""TF Serving's REST JSON formats, as pure functions: request JSON → tensors / tf.Examples, and
outputs / results → response JSON. Every client mistake raises INVALID_ARGUMENT naming it.

Large values are converted in bounded steps (numbers CHUNK_ELEMENTS at a time, into numpy and
back into JSON text), so the REST front end can run a large body on a worker thread without
holding the GIL, and so the event loop, for long; `predict_inputs` counts a request's tensor
bytes from its shape before converting anything."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from modelserver.core.errors import invalid_argument
from modelserver.core.servable import Signature, TensorSpec
from modelserver.core.tensors import check_request_bytes

Tensors = dict[str, np.ndarray]
CHUNK_ELEMENTS = 1 << 13  # numbers converted per step (well under a millisecond)


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


def _utf8(value: str, name: str) -> bytes:
    try:
        return value.encode()
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800"): JSON allows it, UTF-8 does not
        raise invalid_argument(f"Input \"{name}\" holds a string that is not valid Unicode; send bytes as "
                               "{\"b64\": ...}") from None


def _string_leaves(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_string_leaves(v, name) for v in value]
    if isinstance(value, str):
        return _utf8(value, name)
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
    parts = [_numbers(part, value, spec) for part in _chunks(value)]
    if len(parts) == 1:
        return parts[0]
    try:
        return np.concatenate(parts)
    except ValueError:
        raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes") from None


def _chunks(value: Any) -> Iterator[Any]:
    """`value` in pieces along its first dimension of about CHUNK_ELEMENTS numbers (or rows) each;
    a piece taken from a single row larger than that is that row's own pieces, marked `_Row`."""
    if not isinstance(value, list) or not value:
        yield value
        return
    shape = _shape_of(value)
    per_row = math.prod(shape[1:])
    if len(value) * max(1, per_row) <= CHUNK_ELEMENTS:
        yield value
        return
    rows = max(1, CHUNK_ELEMENTS // max(1, per_row))
    if rows > 1 or len(shape) < 2:
        for i in range(0, len(value), rows):
            yield value[i:i + rows]
        return
    for row in value:  # rows larger than a chunk: each row's own pieces
        yield _Row(_chunks(row))


class _Row:
    """A row converted from pieces (`_numbers` concatenates them and adds the row's axis)."""

    __slots__ = ("parts",)

    def __init__(self, parts: Iterator[Any]) -> None:
        self.parts = parts


def _numbers(part: Any, whole: Any, spec: TensorSpec) -> np.ndarray:
    """One piece of a numeric input as an array of the signature's dtype."""
    name = spec.name
    if isinstance(part, _Row):
        pieces = [_numbers(p, whole, spec) for p in part.parts]
        try:
            row = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        except ValueError:
            raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes") from None
        return row[np.newaxis]
    try:
        raw = np.asarray(part)
    except ValueError:
        raise invalid_argument(f"Input \"{name}\" has inconsistent (ragged) shapes") from None
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise invalid_argument(
            f"Input \"{name}\" expects {spec.dtype_name} values, got {_describe(whole)}")
    target = spec.dtype.kind
    if target in "iu" and kind == "f":
        raise invalid_argument(f"Input \"{name}\" expects {spec.dtype_name} (integer) values, got floats")
    if target == "b" and kind != "b":
        raise invalid_argument(f"Input \"{name}\" expects bool values (true/false)")
    if target in "iuf" and kind == "b":
        raise invalid_argument(f"Input \"{name}\" expects {spec.dtype_name} values, got booleans")
    return raw.astype(spec.dtype, copy=False)


def declared_bytes(value: Any, spec: TensorSpec) -> int:
    """What converting `value` for `spec` allocates, from its shape (its first elements) alone."""
    return math.prod(_shape_of(value)) * (spec.dtype.itemsize or 8)


def _describe(value: Any) -> str:
    leaf = value
    while isinstance(leaf, list) and leaf:
        leaf = leaf[0]
    return f"{type(leaf).__name__} {str(leaf)[:40]}" if not isinstance(leaf, list) else "mixed values"


def predict_inputs(body: dict[str, Any], sig: Signature, max_bytes: int | None = None) -> tuple[Tensors, bool]:
    """The tensors of a :predict body and whether it used the row (`instances`) format; their
    sizes are checked against `max_bytes` (--max_request_tensor_bytes) before any is built."""
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise invalid_argument("JSON object must have exactly one of 'instances' (row format) or 'inputs' "
                               "(columnar format)")
    if has_instances:
        return row_inputs(body["instances"], sig, max_bytes), True
    return columnar_inputs(body["inputs"], sig, max_bytes), False


def _convert(values: dict[str, Any], sig: Signature, max_bytes: int | None) -> Tensors:
    if max_bytes is not None:
        check_request_bytes(sum(declared_bytes(v, sig.inputs[k]) for k, v in values.items()), max_bytes)
    return {k: to_array(v, sig.inputs[k]) for k, v in values.items()}


def row_inputs(instances: Any, sig: Signature, max_bytes: int | None = None) -> Tensors:
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
        return _convert({names[0]: instances}, sig, max_bytes)
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
    return _convert(columns, sig, max_bytes)


def columnar_inputs(inputs: Any, sig: Signature, max_bytes: int | None = None) -> Tensors:
    names = list(sig.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        for key in inputs:
            if key not in sig.inputs:
                raise invalid_argument(f"input tensor alias not found in signature: {key}. "
                                       f"Inputs expected to be in the set {{{sig.input_names_text}}}.")
        return _convert(inputs, sig, max_bytes)
    if len(names) != 1:
        raise invalid_argument(f"Signature \"{sig.name}\" has {len(names)} inputs: 'inputs' must be an object")
    return _convert({names[0]: inputs}, sig, max_bytes)


# ---- responses ---------------------------------------------------------------------------------


def to_json_value(name: str, arr: np.ndarray) -> Any:
    """An output as JSON: `*_bytes` outputs base64, other strings UTF-8, float32 printed shortest."""
    if arr.dtype.kind in "OSU":
        if name.endswith("_bytes"):
            return _map_nested(arr, lambda b: {"b64": base64.b64encode(_bytes(b)).decode()})
        return _map_nested(arr, lambda b: _bytes(b).decode("utf-8", errors="replace"))
    if arr.dtype in (np.float32, np.float16):
        # shortest float32 text, so 0.1f prints as 0.1 (as TF Serving does), not 0.10000000149011612
        return shortest_float32(arr).tolist()
    return arr.tolist()


_POW10 = 10.0 ** np.arange(23)


def shortest_float32(arr: np.ndarray) -> np.ndarray:
    """float32 values as the float64 values whose shortest text is the float32's shortest text
    (`arr.astype(str).astype(np.float64)`, without its 128 bytes and 0.6 µs per element): each
    value rounded to 6, 7, 8, then 9 significant digits, the first that reads back as the same
    float32 kept; values beyond 1e±27 (where powers of ten are not exact) and any left over take
    numpy's own shortest text."""
    x = np.asarray(arr, np.float32)
    with np.errstate(all="ignore"):
        out = x.astype(np.float64)
        flat, xf = out.reshape(-1), x.reshape(-1)
        idx = np.flatnonzero(np.isfinite(flat) & (flat != 0))
        v = flat[idx]
        e = np.floor(np.log10(np.abs(v))).astype(np.int64)
        inside = (e >= -14) & (e <= 27)
        rest = [idx[~inside]]
        idx, v, e = idx[inside], v[inside], e[inside]
        for digits in (6, 7, 8, 9):
            if not idx.size:
                break
            k = digits - 1 - e
            up = k >= 0
            r = np.empty_like(v)
            r[up] = np.rint(v[up] * _POW10[k[up]]) / _POW10[k[up]]
            r[~up] = np.rint(v[~up] / _POW10[-k[~up]]) * _POW10[-k[~up]]
            good = r.astype(np.float32) == xf[idx]
            flat[idx[good]] = r[good]
            idx, v, e = idx[~good], v[~good], e[~good]
        rest.append(idx)
        left = np.concatenate(rest)
        if left.size:
            flat[left] = xf[left].astype(str).astype(np.float64)
    return out


def _bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _map_nested(arr: np.ndarray, fn: Any) -> Any:
    if arr.ndim == 0:
        return fn(arr.item())
    return [_map_nested(a, fn) if a.ndim else fn(a.item()) for a in arr] if arr.ndim > 1 else [fn(x) for x in arr]


def predict_response(outputs: Tensors, row: bool) -> bytes:
    """The :predict answer as JSON text (UTF-8), written CHUNK_ELEMENTS numbers at a time."""
    return "".join(_predict_response(outputs, row)).encode()


def _predict_response(outputs: Tensors, row: bool) -> Iterator[str]:
    if not row:
        if len(outputs) == 1:
            ((name, arr),) = outputs.items()
            yield '{"outputs": '
            yield from _json_value(name, arr)
        else:
            yield '{"outputs": {'
            for i, (k, v) in enumerate(outputs.items()):
                yield (", " if i else "") + json.dumps(k) + ": "
                yield from _json_value(k, v)
            yield "}"
        yield "}"
        return
    for k, v in outputs.items():
        if v.ndim == 0:
            raise invalid_argument(f"Output \"{k}\" is a scalar; use the columnar 'inputs' format")
    yield '{"predictions": '
    if len(outputs) == 1:
        ((name, arr),) = outputs.items()
        yield from _json_value(name, arr)
    else:
        sizes = {v.shape[0] for v in outputs.values()}
        if len(sizes) != 1:
            raise invalid_argument("Output tensors have different batch sizes; use the columnar 'inputs' format")
        n = sizes.pop()
        step = _rows_per_chunk(sum(v.size for v in outputs.values()) // max(n, 1))
        yield "["
        for i in range(0, n, step):
            cols = {k: to_json_value(k, v[i:i + step]) for k, v in outputs.items()}
            text = json.dumps([{k: cols[k][j] for k in cols} for j in range(min(step, n - i))])
            yield (", " if i else "") + text[1:-1]
        yield "]"
    yield "}"


def _rows_per_chunk(row_elements: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, row_elements))


def _json_value(name: str, arr: np.ndarray) -> Iterator[str]:
    """One output's JSON text, in pieces of about CHUNK_ELEMENTS numbers."""
    if arr.ndim == 0 or arr.size <= CHUNK_ELEMENTS or arr.shape[0] == 0:
        yield json.dumps(to_json_value(name, arr))
        return
    step = _rows_per_chunk(arr.size // arr.shape[0])
    yield "["
    for i in range(0, arr.shape[0], step):
        if i:
            yield ", "
        if step == 1 and arr.ndim > 1:
            yield from _json_value(name, arr[i])  # a row larger than a chunk: its own pieces
        else:
            yield json.dumps(to_json_value(name, arr[i:i + step]))[1:-1]
    yield "]"


# ---- classify / regress ------------------------------------------------------------------------


def feature_from_json(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feat = feature_pb2.Feature()
    if not values:
        feat.float_list.SetInParent()
        return feat
    if all(isinstance(v, str) or _is_b64(v) for v in values):
        feat.bytes_list.value.extend(_decode_b64(v) if _is_b64(v) else _utf8(v, name) for v in values)
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
