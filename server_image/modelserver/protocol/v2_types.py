"""The Open Inference Protocol's (KServe v2) tensors: its datatypes mapped to numpy's (and so to
TensorFlow's), and a v2 tensor decoded from, or encoded to, each of its wire forms: JSON `data`
(flat or nested), the binary data extension's bytes, gRPC's typed `contents` and its
`raw_input_contents` / `raw_output_contents`. Pure: no transport, no TensorFlow.

Every malformed tensor is INVALID_ARGUMENT naming the input: an unknown datatype, a shape that is
not a list of non-negative integers, data whose element count differs from the shape's, raw bytes
of the wrong length, a BYTES element whose 4-byte length runs past its buffer. The bytes a
request's tensors will take are counted from their declared shapes before any is allocated, and
checked against --max_request_tensor_bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from modelserver.core.errors import invalid_argument
from modelserver.core.tensors import STRING_ELEMENT_BYTES, check_request_bytes

# v2 datatype -> numpy dtype (BYTES: object arrays of bytes, TensorFlow's DT_STRING)
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16),
    "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES: dict[np.dtype, str] = {dt: name for name, dt in DATATYPES.items()}

# gRPC's typed contents: the InferTensorContents field of each datatype (FP16 and BF16 have none:
# raw contents only, as the protocol says)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
    "FP64": "fp64_contents", "BYTES": "bytes_contents",
}

_LEN = struct.Struct("<I")


def datatype_of(dt: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (strings of any kind: BYTES); INVALID_ARGUMENT for one
    the protocol cannot carry (complex numbers, say)."""
    if dt.kind in "OSU":
        return "BYTES"
    name = _NAMES.get(dt)
    if name is None:
        raise invalid_argument(f"The v2 protocol has no datatype for {dt.name}")
    return name


def numpy_of(name: str, datatype: Any) -> np.dtype:
    dt = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dt is None:
        raise invalid_argument(f"Input \"{name}\": unknown datatype {str(datatype)[:40]!r} (expected one of "
                               f"{', '.join(DATATYPES)})")
    return dt


def element_count(name: str, shape: Any) -> tuple[tuple[int, ...], int]:
    """A v2 shape (a list of non-negative integers) and its element count."""
    if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise invalid_argument(f"Input \"{name}\": shape must be a list of non-negative integers, "
                               f"got {str(shape)[:80]}")
    return tuple(shape), math.prod(shape)


def declared_bytes(dt: np.dtype, count: int, payload: int = 0) -> int:
    """What a tensor of `count` elements will take once decoded (BYTES: a pointer and a bytes
    object per element, plus `payload`, the bytes they carry)."""
    if dt.kind == "O":
        return count * STRING_ELEMENT_BYTES + payload
    return count * dt.itemsize


class TensorBudget:
    """The bytes a request's input tensors take together, checked as each is declared."""

    __slots__ = ("limit", "total")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0

    def take(self, n: int) -> None:
        self.total += n
        check_request_bytes(self.total, self.limit)


# ---- JSON data (REST) ---------------------------------------------------------------------------


def _flatten(name: str, data: Any, count: int) -> list[Any]:
    """`data`, flat or nested lists, as a flat list of exactly `count` scalars."""
    if not isinstance(data, list):
        data = [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
            if len(flat) > count:
                raise invalid_argument(f"Input \"{name}\": more data elements than its shape's {count}")
        else:
            stack.pop()
    if len(flat) != count:
        raise invalid_argument(f"Input \"{name}\": {len(flat)} data elements, but its shape has {count}")
    return flat


def from_json(name: str, dt: np.dtype, shape: tuple[int, ...], count: int, data: Any) -> np.ndarray:
    """A tensor from JSON `data`: numbers (BOOL: true/false), or UTF-8 strings for BYTES."""
    flat = _flatten(name, data, count)
    if dt.kind == "O":
        out = np.empty(count, dtype=object)
        for i, v in enumerate(flat):
            if not isinstance(v, str):
                raise invalid_argument(f"Input \"{name}\": BYTES data must be strings, got {type(v).__name__}")
            out[i] = v.encode("utf-8", "surrogatepass")
        return out.reshape(shape)
    if dt.kind == "b":
        if not all(type(v) is bool for v in flat):
            raise invalid_argument(f"Input \"{name}\": BOOL data must be true or false")
    elif not all(type(v) in (int, float) for v in flat):
        raise invalid_argument(f"Input \"{name}\": {datatype_of(dt)} data must be numbers")
    try:
        if dt.kind in "iu" and not all(type(v) is int for v in flat):
            raise invalid_argument(f"Input \"{name}\": {datatype_of(dt)} data must be integers")
        arr = np.array(flat, dtype=np.float32 if dt == DATATYPES["BF16"] else dt)
    except (OverflowError, ValueError, TypeError) as exc:
        raise invalid_argument(f"Input \"{name}\": data do not fit {datatype_of(dt)}: {exc}") from None
    return arr.astype(dt, copy=False).reshape(shape)


def to_json(arr: np.ndarray) -> list[Any]:
    """A tensor's JSON `data`, flat in row-major order (BYTES as UTF-8 text, an undecodable byte
    as U+FFFD: binary_data_output carries any bytes)."""
    flat = arr.reshape(-1)
    if flat.dtype.kind in "OSU":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    if flat.dtype == DATATYPES["BF16"] or flat.dtype == DATATYPES["FP16"]:
        flat = flat.astype(np.float32)
    return flat.tolist()  # type: ignore[no-any-return]


# ---- raw bytes (the binary data extension, gRPC's raw contents) -------------------------------


def split_bytes_elements(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES elements from their raw form: each a 4-byte little-endian length, then its bytes."""
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos, end = 0, len(view)
    for i in range(count):
        if pos + 4 > end:
            raise invalid_argument(f"Input \"{name}\": BYTES data end after {i} of {count} elements")
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise invalid_argument(f"Input \"{name}\": BYTES element {i} declares {n} bytes, past the end of "
                                   "its data")
        out[i] = bytes(view[pos:pos + n])
        pos += n
    if pos != end:
        raise invalid_argument(f"Input \"{name}\": {end - pos} bytes after its {count} BYTES elements")
    return out


def from_raw(name: str, dt: np.dtype, shape: tuple[int, ...], count: int, raw: bytes | memoryview) -> np.ndarray:
    if dt.kind == "O":
        return split_bytes_elements(name, raw, count).reshape(shape)
    if len(raw) != count * dt.itemsize:
        raise invalid_argument(f"Input \"{name}\": {len(raw)} bytes of data, but shape {list(shape)} of "
                               f"{datatype_of(dt)} needs {count * dt.itemsize}")
    return np.frombuffer(raw, dtype=dt).reshape(shape)


def to_raw(arr: np.ndarray) -> bytes:
    """A tensor's raw bytes (row-major, little-endian; BYTES length-prefixed)."""
    if arr.dtype.kind in "OSU":
        parts: list[bytes] = []
        for v in arr.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LEN.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr).tobytes()


# ---- gRPC typed contents ------------------------------------------------------------------------


def from_contents(name: str, datatype: str, dt: np.dtype, shape: tuple[int, ...], count: int,
                  contents: Any) -> np.ndarray:
    """A tensor from an InferTensorContents message (the field of its datatype)."""
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise invalid_argument(f"Input \"{name}\": {datatype} data go in raw_input_contents only")
    values: Sequence[Any] = getattr(contents, field)
    if len(values) != count:
        raise invalid_argument(f"Input \"{name}\": {len(values)} values in {field}, but its shape has {count}")
    if dt.kind == "O":
        out = np.empty(count, dtype=object)
        out[:] = list(values)
        return out.reshape(shape)
    try:
        return np.array(values, dtype=dt).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise invalid_argument(f"Input \"{name}\": values do not fit {datatype}: {exc}") from None


def shape_list(arr: np.ndarray) -> list[int]:
    return [int(d) for d in arr.shape]


def signature_shape(dims: Iterable[int | None] | None) -> list[int]:
    """A signature's declared shape as v2 metadata gives it: -1 for a dimension of any size
    (unknown rank: an empty list)."""
    return [-1 if d is None else int(d) for d in dims] if dims is not None else []
