"""Batching's pure decisions: which requests may share a batch, how large the batch the model
runs is, and how requests are merged into it and its outputs split back.

Requests share a batch when their inputs agree on names, dtypes and non-batch dimensions
(`shape_key`; with `pad_variable_length_inputs`, only on the number of dimensions). A batch is
padded up to the next allowed size (`padded_size`) by repeating its first row (and never grows
past a byte cap by taking in another request: `row_layout`, `batch_bytes`), and each request
gets back its own rows of every output (`split_outputs`); outputs that are not batched along
dimension 0 cannot be split (`SplitError`). No I/O, no scheduling: plain numpy in, numpy out.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]


def batch_rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The batch size (dimension 0) shared by every input, or None when they cannot be batched
    (a scalar input, inputs disagreeing on dimension 0, or no inputs)."""
    rows = None
    for arr in inputs.values():
        if arr.ndim == 0:
            return None
        n = arr.shape[0]
        if rows is None:
            rows = n
        elif n != rows:
            return None
    return rows


def shape_key(inputs: Mapping[str, np.ndarray], pad_variable_length: bool) -> tuple[Any, ...]:
    """What two requests must share to be merged: per input its name, dtype and non-batch
    dimensions (with padding, only the number of dimensions)."""
    if len(inputs) == 1:
        ((name, arr),) = inputs.items()
        return ((name, arr.dtype.str, arr.ndim if pad_variable_length else arr.shape[1:]),)
    return tuple((name, arr.dtype.str, arr.ndim if pad_variable_length else arr.shape[1:])
                 for name, arr in sorted(inputs.items()))


Layout = tuple[tuple[tuple[int, ...], int], ...]  # per input (by name): non-batch dims, item size


def row_layout(inputs: Mapping[str, np.ndarray]) -> Layout:
    """What one row of a request occupies: per input (sorted by name), its non-batch dimensions
    and item size (strings count as their 8-byte references)."""
    return tuple((arr.shape[1:], arr.dtype.itemsize or 8) for _, arr in sorted(inputs.items()))


def merged_layout(a: Layout, b: Layout) -> Layout:
    """The layout of a batch holding rows of both (padding takes each dimension's maximum)."""
    if a == b:
        return a
    return tuple((tuple(max(x, y) for x, y in zip(da, db, strict=True)), max(ia, ib))
                 for (da, ia), (db, ib) in zip(a, b, strict=True))


def batch_bytes(layout: Layout, size: int) -> int:
    """The bytes of a merged batch of `size` rows of `layout`."""
    return size * sum(math.prod(dims) * itemsize for dims, itemsize in layout)


def padded_size(rows: int, allowed: Sequence[int]) -> int:
    """The batch size the model runs for `rows` rows: the next allowed size, or `rows` itself."""
    if not allowed:
        return rows
    i = bisect.bisect_left(allowed, rows)
    return allowed[i] if i < len(allowed) else rows


def _anchor(arr: np.ndarray) -> Any:
    return arr.flat[0] if arr.size else np.zeros((), arr.dtype)[()]


def _pad_to(arr: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    """Pads the non-batch dimensions of `arr` up to `dims` with the tensor's first element (TF
    Serving's "anchor" padding for pad_variable_length_inputs)."""
    if arr.shape[1:] == dims:
        return arr
    pad = [(0, 0)] + [(0, want - have) for have, want in zip(arr.shape[1:], dims, strict=True)]
    return np.pad(arr, pad, mode="constant", constant_values=_anchor(arr))


@dataclass(slots=True)
class Piece:
    """Rows [start, stop) of one request's inputs, as placed in a batch."""

    inputs: Tensors
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def merge_inputs(pieces: Sequence[Piece], size: int, pad_variable_length: bool) -> Tensors:
    """Concatenates the pieces along dimension 0 and pads the batch up to `size` rows by
    repeating its first row (the model's answers for padding rows are dropped by `split`)."""
    merged: Tensors = {}
    for name in pieces[0].inputs:
        parts = [p.inputs[name] if p.start == 0 and p.stop == len(p.inputs[name])
                 else p.inputs[name][p.start:p.stop] for p in pieces]
        if pad_variable_length:
            dims = tuple(max(d) for d in zip(*(a.shape[1:] for a in parts), strict=True))
            parts = [_pad_to(a, dims) for a in parts]
        rows = sum(len(a) for a in parts)
        if rows < size:
            parts.append(np.repeat(parts[0][:1], size - rows, axis=0))
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return merged


class SplitError(Exception):
    """The model's outputs are not batched along dimension 0, so a merged run cannot be split."""


def split_outputs(outputs: Mapping[str, np.ndarray], pieces: Sequence[Piece], size: int) -> list[Tensors]:
    """Slices each output back into the pieces' rows (outputs must have `size` rows)."""
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != size:
            raise SplitError(f"output {name!r} has shape {list(arr.shape)}, not batched along dimension "
                             f"0 with {size} rows")
    result: list[Tensors] = []
    offset = 0
    for p in pieces:
        n = p.rows
        result.append({name: arr[offset:offset + n] for name, arr in outputs.items()})
        offset += n
    return result
