"""TensorProto <-> numpy conversion: fast paths for the common cases, tf.make_ndarray otherwise."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from modelserver.core.errors import invalid_argument

_VAL_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
}


# The common dtypes, looked up without a call (the lru_cache functions below cover the rest).
_NUMPY_DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32), types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32), types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8), types_pb2.DT_BOOL: np.dtype(np.bool_),
}


@lru_cache(maxsize=64)
def numpy_dtype(dtype_enum: int) -> np.dtype:
    """numpy dtype of a TF DataType enum (object for strings); INVALID_ARGUMENT if unsupported."""
    import tensorflow as tf

    if dtype_enum == types_pb2.DT_STRING:
        return np.dtype(object)
    try:
        return np.dtype(tf.dtypes.as_dtype(dtype_enum).as_numpy_dtype)
    except (TypeError, ValueError, KeyError):  # KeyError: DT_RESOURCE, DT_VARIANT
        raise invalid_argument(f"Unsupported tensor dtype: {dtype_enum}") from None


@lru_cache(maxsize=64)
def dtype_enum(dt: np.dtype) -> int:
    import tensorflow as tf

    if dt.kind in "OSU":
        return types_pb2.DT_STRING
    return int(tf.dtypes.as_dtype(dt).as_datatype_enum)


def to_ndarray(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Converts a request TensorProto; a malformed one is INVALID_ARGUMENT naming the input.
    Callers check its size first (`declared_bytes`): nothing here bounds what it allocates.

    On the request path for every input: the common cases (tensor_content, a typed value field
    of the full size, strings) take a few microseconds (no numpy reductions, dtype looked up in a
    dict)."""
    dtype = proto.dtype
    if dtype == types_pb2.DT_INVALID:
        raise invalid_argument(f"Input \"{name}\" has no dtype (DT_INVALID)")
    shape, size = _shape_of(name, proto.tensor_shape)
    dt = _NUMPY_DTYPES.get(dtype) or numpy_dtype(dtype)
    try:
        if dtype == types_pb2.DT_STRING:
            vals = proto.string_val
            if len(vals) == size:
                return np.array(list(vals), dtype=object).reshape(shape)
        else:
            content = proto.tensor_content
            if content:
                if len(content) == size * dt.itemsize:
                    return np.frombuffer(content, dtype=dt).reshape(shape)
                raise invalid_argument(
                    f"Input \"{name}\": tensor_content holds {len(content)} bytes but shape "
                    f"{list(shape)} of {dt.name} needs {size * dt.itemsize}"
                )
            fld = _VAL_FIELDS.get(dtype)
            if fld is not None:
                vals = getattr(proto, fld)
                if len(vals) == size:
                    if size <= _FROMITER_MAX:
                        return np.fromiter(vals, dtype=dt, count=size).reshape(shape)
                    return np.array(vals, dtype=dt).reshape(shape)
        return _slow_to_ndarray(name, proto, size)
    except ValueError as exc:
        raise invalid_argument(f"Input \"{name}\" could not be converted: {exc}") from None


# What a string element costs beyond its bytes: a pointer in the object array and a bytes object.
STRING_ELEMENT_BYTES = 8 + 33


def declared_bytes(name: str, proto: tensor_pb2.TensorProto) -> int:
    """The bytes `to_ndarray` will allocate for a TensorProto, from its declared shape alone (a
    proto with fewer values than its shape is broadcast: counted at its full size). Numbers:
    elements x item size; strings: elements x STRING_ELEMENT_BYTES plus the bytes they carry.
    INVALID_ARGUMENT for a shape that is not a full, non-negative one, or an unknown dtype."""
    _shape, size = _shape_of(name, proto.tensor_shape)
    dtype = proto.dtype
    if dtype == types_pb2.DT_STRING:
        return size * STRING_ELEMENT_BYTES + proto.ByteSize()  # (the values' bytes, and a little more)
    if dtype == types_pb2.DT_INVALID:
        return 0  # to_ndarray names the problem
    dt = _NUMPY_DTYPES.get(dtype) or numpy_dtype(dtype)
    return size * (dt.itemsize or 8)


def check_request_bytes(total: int, limit: int | None) -> None:
    """INVALID_ARGUMENT when a request's input tensors need more than `limit` bytes (the
    server's --max_request_tensor_bytes; None: no limit)."""
    if limit is not None and total > limit:
        raise invalid_argument(
            f"The request's input tensors need {total} bytes, more than this server accepts "
            f"(--max_request_tensor_bytes={limit}); send fewer rows per request"
        )


_FROMITER_MAX = 16  # np.fromiter beats np.array on a short repeated field (≈1 µs against ≈4)
_SHAPES: dict[bytes, tuple[tuple[int, ...], int]] = {}  # serialized TensorShapeProto -> (shape, size)
_SHAPES_MAX = 1024


def _shape_of(name: str, tshape: tensor_shape_pb2.TensorShapeProto) -> tuple[tuple[int, ...], int]:
    """(shape, number of elements) of a request tensor's shape, memoized by its serialized bytes
    (reading `dim` field by field costs ≈3 µs; the requests a server gets share few shapes)."""
    key = tshape.SerializeToString()
    hit = _SHAPES.get(key)
    if hit is not None:
        return hit
    if tshape.unknown_rank:
        raise invalid_argument(f"Input \"{name}\" has an unknown rank; a full shape is required")
    shape = tuple([d.size for d in tshape.dim])
    if any(d < 0 for d in shape):
        raise invalid_argument(f"Input \"{name}\" has a negative dimension in its shape {list(shape)}")
    if len(_SHAPES) >= _SHAPES_MAX:
        _SHAPES.clear()
    hit = _SHAPES[key] = (shape, math.prod(shape))
    return hit


def _slow_to_ndarray(name: str, proto: tensor_pb2.TensorProto, size: int) -> np.ndarray:
    import tensorflow as tf

    try:
        arr = tf.make_ndarray(proto)
    except Exception as exc:  # any malformed proto is the client's error
        raise invalid_argument(f"Input \"{name}\" is not a valid tensor: {exc}") from None
    if arr.size != size:
        raise invalid_argument(f"Input \"{name}\" holds {arr.size} values but its shape needs {size}")
    return arr


# Typed value fields as TensorFlow's Tensor::AsProtoField fills them (half types as raw bits).
_FIELD_OF_KIND = {
    "float32": "float_val", "float64": "double_val", "int32": "int_val", "int16": "int_val",
    "int8": "int_val", "uint8": "int_val", "uint16": "int_val", "int64": "int64_val",
    "uint32": "uint32_val", "uint64": "uint64_val", "bool": "bool_val",
}


# dtype -> (TF enum, typed value field) for the common numeric dtypes (no `dtype.name`, which
# numpy computes in Python, on the response path).
_RESPONSE_DTYPES: dict[np.dtype, tuple[int, str]] = {
    dt: (enum, _FIELD_OF_KIND[dt.name]) for enum, dt in _NUMPY_DTYPES.items()
}


# Typed fields whose packed wire form is the array's own little-endian bytes (float_val 5,
# double_val 6, bool_val 11): a large output is written as one packed field, parsed by protobuf's
# C code, instead of a Python list of its values (about 30 bytes and 30 ns per element).
_PACKED_FIXED: dict[np.dtype, tuple[int, str]] = {
    np.dtype(np.float32): (5, "<f4"), np.dtype(np.float64): (6, "<f8"), np.dtype(np.bool_): (11, "|u1"),
}
_PACKED_MIN = 256  # below it, .extend(tolist()) is as fast


def packed_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: tag, varint length, payload."""
    head = bytearray([(number << 3) | 2] if number < 16 else [((number << 3) | 2) & 0x7F | 0x80, number >> 4])
    n = len(payload)
    while n >= 0x80:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + payload


def to_tensor_proto(arr: np.ndarray, *, as_content: bool = False) -> tensor_pb2.TensorProto:
    """Converts a response array the way TF Serving answers Predict: typed value fields
    (`float_val`, `int_val`, ... as `Tensor::AsProtoField`, TF Serving's default), so clients in
    any language that read those fields work unchanged. `as_content=True` packs numbers into
    `tensor_content` instead (what `tf.make_tensor_proto` writes; used for warmup records).
    Strings always go to `string_val`."""
    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, arr, as_content=as_content)
    return proto


def fill_tensor_proto(proto: tensor_pb2.TensorProto, arr: np.ndarray, *, as_content: bool = False) -> None:
    """`to_tensor_proto` written into an empty TensorProto in place (e.g. a response's
    `outputs[name]`: no intermediate message, no copy)."""
    dims = proto.tensor_shape.dim
    for d in arr.shape:
        dims.add().size = d
    dt = arr.dtype
    known = _RESPONSE_DTYPES.get(dt)  # (enum, value field) of a common numeric dtype
    if known is not None:
        proto.dtype = known[0]
        if as_content:
            proto.tensor_content = np.ascontiguousarray(arr).tobytes()
        elif arr.size > _PACKED_MIN and dt in _PACKED_FIXED:
            number, wire_dtype = _PACKED_FIXED[dt]
            proto.MergeFromString(packed_field(number, np.ascontiguousarray(arr, wire_dtype).tobytes()))
        else:
            getattr(proto, known[1]).extend(arr.reshape(-1).tolist())
        return
    if dt.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend([_as_bytes(v) for v in arr.reshape(-1)])
        return
    proto.dtype = dtype_enum(dt)
    field = None if as_content else _FIELD_OF_KIND.get(dt.name)
    if field is not None:
        getattr(proto, field).extend(arr.reshape(-1).tolist())
    elif not as_content and dt.name in ("float16", "bfloat16"):
        proto.half_val.extend(np.ascontiguousarray(arr).reshape(-1).view(np.uint16).tolist())
    else:  # complex and other rare types, or when asked: raw bytes
        proto.tensor_content = np.ascontiguousarray(arr).tobytes()


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode()
