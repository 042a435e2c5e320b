"""rest_json in bounded steps: inputs converted and answers written CHUNK_ELEMENTS numbers at a
time give what one step gives (values, dtypes, refusals), float32 answers print shortest without
astype(str), and a request's tensor bytes are counted from its shape before any is built."""

from __future__ import annotations

import json

import numpy as np
import pytest
from modelserver.core.errors import ServingError
from modelserver.core.servable import Signature, TensorSpec
from modelserver.protocol import rest_json


def _spec(name: str, dtype: type) -> TensorSpec:
    dt = np.dtype(dtype)
    return TensorSpec(name, dt, 1, {"float32": "DT_FLOAT", "int64": "DT_INT64", "bool": "DT_BOOL"}.get(dt.name, "x"),
                      None)


def _sig(**inputs: type) -> Signature:
    specs = {k: _spec(k, v) for k, v in inputs.items()}
    return Signature("serving_default", "tensorflow/serving/predict", specs, {}, lambda x: x, ", ".join(sorted(specs)))


VALUES = [
    [1.5] * 100, [[1.0, 2.0, 3.0]] * 50, [[[1, 2], [3, 4]]] * 20, [[0.5] * 40], [[[2.5] * 30] * 3],
    [[]] * 30, [[[1.0]] * 25] * 2, 3.0, [], [[1, 2]] * 17 + [[3, 4]],
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_converted_in_chunks_as_in_one_step(value, dtype, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    spec = _spec("x", dtype)

    def convert() -> np.ndarray | str:
        try:
            return rest_json.to_array(value, spec)
        except ServingError as exc:  # floats for an integer input, an empty list's float64
            return exc.message

    whole = convert()
    monkeypatch.setattr(rest_json, "CHUNK_ELEMENTS", 7)  # pieces smaller than a row, and rows per piece
    chunked = convert()
    if isinstance(whole, str):
        assert chunked == whole
        return
    assert isinstance(chunked, np.ndarray)
    assert chunked.dtype == whole.dtype == np.dtype(dtype) and chunked.shape == whole.shape
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(whole, np.asarray(value, dtype))


@pytest.mark.parametrize(("value", "words"), [
    ([[1.0, 2.0]] * 10 + [[1.0]], "ragged"), ([[1.0]] * 10 + [[[1.0]]], "ragged"), ([1.0] * 20 + ["x"], "float"),
    ([1.0] * 20 + [True], "boolean"), ([[True]] * 20, "boolean"),
])
def test_refusals_are_the_same_in_chunks(value, words: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rest_json, "CHUNK_ELEMENTS", 4)
    with pytest.raises(ServingError, match=words):
        rest_json.to_array(value, _spec("x", np.float32))


def test_tensor_bytes_are_counted_before_conversion() -> None:
    sig = _sig(a=np.float32, b=np.int64)
    body = {"inputs": {"a": [[1.0] * 100] * 10, "b": [1] * 10}}  # 4,000 + 80 bytes
    assert rest_json.predict_inputs(body, sig, 4080)[0]["a"].shape == (10, 100)
    with pytest.raises(ServingError, match="need 4080 bytes.*max_request_tensor_bytes=4079"):
        rest_json.predict_inputs(body, sig, 4079)
    with pytest.raises(ServingError, match="max_request_tensor_bytes"):
        rest_json.predict_inputs({"instances": [{"a": [1.0] * 100, "b": 1}] * 10}, sig, 4000)


OUTPUTS = [
    {"y": np.arange(300, dtype=np.float32).reshape(100, 3) / 7},
    {"y": np.arange(90, dtype=np.float32).reshape(1, 90) / 3},
    {"y": np.arange(60, dtype=np.float32).reshape(2, 3, 10)},
    {"y": np.arange(50, dtype=np.int64), "z": np.ones((50, 2), np.float32) / 3, "s_bytes": np.array([b"\x00\xff"] * 50,
                                                                                                   dtype=object)},
    {"y": np.zeros((0, 3), np.float32)}, {"y": np.float32(0.1)}, {"t": np.array([b"caf\xc3\xa9"] * 30, dtype=object)},
]


@pytest.mark.parametrize("outputs", OUTPUTS)
@pytest.mark.parametrize("row", [True, False])
def test_answers_written_in_chunks_as_in_one_step(outputs, row: bool, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def expected() -> object:  # the answer as TF Serving's JSON, built in one go
        values = {k: rest_json.to_json_value(k, v) for k, v in outputs.items()}
        if not row:
            return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
        if len(values) == 1:
            return {"predictions": next(iter(values.values()))}
        n = len(next(iter(outputs.values())))
        return {"predictions": [{k: values[k][i] for k in values} for i in range(n)]}

    if row and any(np.ndim(v) == 0 for v in outputs.values()):
        with pytest.raises(ServingError, match="scalar"):
            rest_json.predict_response(outputs, row)
        return
    whole = rest_json.predict_response(outputs, row)
    monkeypatch.setattr(rest_json, "CHUNK_ELEMENTS", 7)
    assert json.loads(rest_json.predict_response(outputs, row)) == json.loads(whole) == expected()


def test_float32_answers_print_shortest_as_numpy_does() -> None:
    """`shortest_float32` against numpy's own shortest float32 text on every kind of value: random
    bit patterns (NaN payloads, subnormals, infinities included), wide exponents, round numbers."""
    rng = np.random.default_rng(5)
    cases = [rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
             (rng.standard_normal(50_000) * 10.0 ** rng.integers(-40, 38, 50_000)).astype(np.float32),
             np.array([0.1, 2.5, 3.0, -0.0, 0.0, 1e-45, 3.4028235e38, 1e20, 123456789, 0.3, 1e27, 1e-14, 9.999999e27],
                      np.float32)]
    for arr in cases:
        with np.errstate(all="ignore"):
            want = arr.astype(str).astype(np.float64)
        got = rest_json.shortest_float32(arr)
        assert [repr(x) for x in got.tolist()] == [repr(x) for x in want.tolist()]
    assert json.dumps(rest_json.to_json_value("y", np.array([[0.1, 2.5]], np.float32))) == "[[0.1, 2.5]]"
