"""Malformed Open Inference Protocol (KServe v2) requests, for hostile_requests.run_cases: seeded,
endless streams of v2 REST bodies and ModelInfer messages that are each wrong for certain (so every
answer must be a 4xx, or gRPC INVALID_ARGUMENT; NOT_FOUND where the kind names an unknown model or
the bytes are random): shape and data that disagree, unknown datatypes, binary data sizes that
overrun the body or leave bytes over, BYTES lengths past their buffer, values that do not fit their
datatype, shapes that are not shapes, and structures that are not the protocol's. They target the
demo models (half_plus_two: x FP32 [-1]; bytes_model: data BYTES [-1])."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

from hostile_requests import Case, _junk, http_request

INFER = b"/v2/models/half_plus_two/infer"
BYTES_INFER = b"/v2/models/bytes_model/infer"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
BAD_DATATYPES: list[Any] = ["FP8", "fp32", "", "STRING", "TYPE_FP32", "INT128", 5, None, ["FP32"], "FP32\u0000"]
BAD_SHAPES: list[Any] = [[-1], [1.5], ["2"], [[2]], "2", 2, None, {"0": 2}, [True], [2**40, 2**40], [2**70]]


def _input(name: str = "x", shape: Any = None, datatype: Any = "FP32", data: Any = None, **extra: Any
           ) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "shape": [2] if shape is None else shape, "datatype": datatype}
    if data is not None:
        out["data"] = data
    out.update(extra)
    return out


def _nested(rng: random.Random, values: list[Any]) -> Any:
    """`values` as a flat or randomly nested list."""
    if len(values) > 1 and rng.random() < 0.5:
        cut = rng.randrange(1, len(values))
        return [_nested(rng, values[:cut]), _nested(rng, values[cut:])]
    return values


def _lengths(rng: random.Random, strings: list[bytes], overrun: int) -> bytes:
    """BYTES elements in raw form, the last one declaring `overrun` more bytes than it has."""
    parts = [struct.pack("<I", len(s)) + s for s in strings[:-1]]
    return b"".join(parts) + struct.pack("<I", min(len(strings[-1]) + overrun, 2**32 - 1)) + strings[-1]


def rest_cases(seed: int = 0) -> Iterator[Case]:
    """Malformed v2 REST requests (endless), each a Case whose kind names what is wrong."""
    rng = random.Random(seed)

    def post(kind: str, body: Any, path: bytes = INFER, headers: list[tuple[bytes, bytes]] | None = None) -> Case:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return Case(kind, http_request(b"POST", path, data, headers))

    def mismatch() -> Case:
        n = rng.randrange(0, 6)
        m = rng.choice([k for k in range(0, 8) if k != n])
        return post("v2 rest: shape/data mismatch", {"inputs": [_input(shape=[n], data=_nested(
            rng, [rng.random() for _ in range(m)]))]})

    def binary(kind: str, sizes: list[Any], payload: int, header: bytes | None = None, path: bytes = INFER,
               datatype: str = "FP32") -> Case:
        head = json.dumps({"inputs": [_input(name=f"x{i}" if i else ("x" if path == INFER else "data"), shape=[2],
                                             datatype=datatype, parameters={"binary_data_size": s})
                                      for i, s in enumerate(sizes)]}).encode()
        return post(kind, head + _junk(rng, payload), path,
                    [(b"Inference-Header-Content-Length", header if header is not None else str(len(head)).encode())])

    def bytes_overrun() -> Case:
        strings = [_junk(rng, rng.randrange(0, 20)) for _ in range(2)]
        raw = _lengths(rng, strings, rng.choice([1, 7, 2**31, 2**32 - 1]))
        head = json.dumps({"inputs": [_input("data", [2], "BYTES", parameters={"binary_data_size": len(raw)})]}
                          ).encode()
        return post("v2 rest: BYTES length overrun", head + raw, BYTES_INFER,
                    [(b"Inference-Header-Content-Length", str(len(head)).encode())])

    def structure() -> Case:
        good = _input(data=[1.0, 2.0])
        return post("v2 rest: not the protocol's structure", rng.choice([
            {}, {"inputs": []}, {"inputs": {}}, {"inputs": [1]}, {"inputs": [None]}, {"inputs": "x"}, [good],
            {"inputs": [{**good, "name": 7}]}, {"inputs": [good, good]}, {"inputs": [_input(shape=[2])]},
            {"inputs": [good], "outputs": {}}, {"inputs": [good], "outputs": [{"name": "nope"}]},
            {"inputs": [good], "outputs": [{"name": 1}]}, {"inputs": [good], "outputs": ["y"]},
            {"inputs": [good], "id": 42}, {"inputs": [good], "parameters": []},
            {"inputs": [good], "parameters": {"binary_data_output": "yes"}},
            {"inputs": [good], "parameters": {"signature_name": 1}},
            {"inputs": [good], "parameters": {"signature_name": "nope"}},
            {"inputs": [{**good, "parameters": "x"}]}, {"inputs": [{**good, "name": "z"}]},
            {"inputs": [good], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}]))

    gens: list[tuple[float, Callable[[], Case]]] = [
        (12, mismatch),
        (8, lambda: post("v2 rest: unknown datatype", {"inputs": [_input(datatype=rng.choice(BAD_DATATYPES),
                                                                           data=[1.0, 2.0])]})),
        (8, lambda: post("v2 rest: bad shape", {"inputs": [_input(shape=rng.choice(BAD_SHAPES), data=[1.0])]})),
        (8, lambda: binary("v2 rest: binary data overrun", [rng.choice([9, 16, 1000, 2**40])], 8)),
        (4, lambda: binary("v2 rest: binary data overrun", [4, 8], 8)),
        (4, lambda: binary("v2 rest: binary data overrun", [rng.choice([-1, 1.5, "8", None, [8]])], 8)),
        (4, lambda: binary("v2 rest: binary data left over", [8], rng.randrange(9, 64))),
        (4, lambda: binary("v2 rest: binary size and shape disagree", [4], 4)),
        (4, lambda: binary("v2 rest: bad header length", [8], 8, rng.choice(
            [b"100000", b"-1", b"abc", b"1e3", b"\xd9\xa1", b" 12"]))),
        (6, bytes_overrun),
        (6, lambda: post("v2 rest: values that do not fit", {"inputs": [_input(datatype="FP32", data=rng.choice(
            [["a", "b"], [None, 1], [{}, 1], [True, 1.0], [[1, 2], [3]], [[], [1]], ["1", 2]]))]})),
        (4, lambda: post("v2 rest: values that do not fit", {"inputs": [_input(
            datatype=rng.choice(["INT32", "UINT8", "INT64", "UINT64", "BOOL", "BYTES", "FP16", "BF16"]),
            data=rng.choice([[2**70, 1], [-1, 300], [1.5, 2.5], [1e400, 1], [True, 0], ["a", 1]]))]})),
        (6, lambda: post("v2 rest: datatype the model does not take", {"inputs": [_input(
            datatype=rng.choice(["INT32", "FP64", "BOOL", "UINT8"]),
            data=[True, False] if rng.random() < 0.2 else [1, 2])]})),
        (10, structure),
        (6, lambda: post("v2 rest: random body", _junk(rng, rng.randrange(0, 2000)))),
        (4, lambda: post("v2 rest: deep nesting", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", '
                                                 b'"data": ' + b"[" * 100_000 + b"1" + b"]" * 100_000 + b"}]}")),
        (4, lambda: post("v2 rest: unknown model", {"inputs": [_input(data=[1.0, 2.0])]}, rng.choice([
            b"/v2/models/nope/infer", b"/v2/models/half_plus_two/versions/99/infer",
            b"/v2/models/half_plus_two/versions/nolabel/infer", b"/v2/models/half_plus_two/versions/" + b"9" * 30
            + b"/infer", b"/v2/models/half_plus_two/infer/more", b"/v2/models//infer"]))),
        (2, lambda: Case("v2 rest: method", http_request(rng.choice([b"GET", b"PUT", b"DELETE"]), INFER))),
    ]
    weights = [w for w, _ in gens]
    while True:
        yield rng.choices(gens, weights)[0][1]()


def grpc_cases(seed: int = 0) -> Iterator[Case]:
    """Malformed ModelInfer messages (endless)."""
    from modelserver.protocol.v2_api import inference_pb2 as pb

    rng = random.Random(seed)

    def request(model: str = "half_plus_two") -> Any:
        return pb.ModelInferRequest(model_name=model)

    def tensor(req: Any, name: str = "x", datatype: str = "FP32", shape: list[int] | None = None) -> Any:
        return req.inputs.add(name=name, datatype=datatype, shape=[2] if shape is None else shape)

    def case(kind: str, req: Any) -> Case:
        return Case(kind, req.SerializeToString(), MODEL_INFER)

    def mismatch() -> Case:
        req = request()
        n = rng.randrange(0, 6)
        tensor(req, shape=[n]).contents.fp32_contents.extend([1.0] * rng.choice([k for k in range(8) if k != n]))
        return case("v2 grpc: shape/contents mismatch", req)

    def raw(kind: str, lengths: list[int], inputs: int = 1, model: str = "half_plus_two", datatype: str = "FP32",
            shape: list[int] | None = None) -> Case:
        req = request(model)
        for i in range(inputs):
            tensor(req, "x" if i == 0 else f"x{i}", datatype, shape)
        req.raw_input_contents.extend(_junk(rng, n) for n in lengths)
        return case(kind, req)

    def bytes_overrun() -> Case:
        req = request("bytes_model")
        tensor(req, "data", "BYTES")
        req.raw_input_contents.append(_lengths(rng, [b"ab", b"c"], rng.choice([1, 100, 2**32 - 4])))
        return case("v2 grpc: BYTES length overrun", req)

    def typed(kind: str, datatype: str, field: str, values: list[Any]) -> Case:
        req = request()
        getattr(tensor(req, datatype=datatype).contents, field).extend(values)
        return case(kind, req)

    def params() -> Case:
        req = request()
        tensor(req).contents.fp32_contents.extend([1.0, 2.0])
        p = req.parameters["signature_name"]
        choice = rng.randrange(3)
        if choice == 0:
            p.int64_param = 7
        elif choice == 1:
            p.string_param = "nope"
        else:
            p.bool_param = True
        return case("v2 grpc: bad signature parameter", req)

    def structure() -> Case:
        req = request(rng.choice(["half_plus_two", ""]))
        if req.model_name and rng.random() < 0.5:
            for _ in range(2):
                tensor(req).contents.fp32_contents.extend([1.0, 2.0])
        elif req.model_name:
            req.model_version = rng.choice(["nolabel", "9" * 25, "-1"])
            tensor(req).contents.fp32_contents.extend([1.0, 2.0])
        return case("v2 grpc: no inputs, two of one name, an unknown version or no model", req)

    gens: list[tuple[float, Callable[[], Case]]] = [
        (12, mismatch),
        (8, lambda: raw("v2 grpc: unknown datatype", [8], datatype=rng.choice(["FP8", "fp32", "", "STRING", "X" * 300]))),
        (8, lambda: raw("v2 grpc: raw contents for another number of inputs", [8, 8])),
        (4, lambda: raw("v2 grpc: raw contents for another number of inputs", [8], inputs=2)),
        (8, lambda: raw("v2 grpc: raw length and shape disagree", [rng.choice([0, 4, 7, 9, 16, 1000])])),
        (6, lambda: raw("v2 grpc: bad shape", [8], shape=rng.choice([[-1], [-2, -4], [2**40, 2**40], [2**62]]))),
        (6, bytes_overrun),
        (4, lambda: typed("v2 grpc: FP16 in typed contents", "FP16", "fp32_contents", [1.0, 2.0])),
        (4, lambda: typed("v2 grpc: datatype the model does not take", rng.choice(["INT32", "INT64", "BOOL"]),
                          rng.choice(["int_contents", "int64_contents"]), [1, 2])),
        (4, lambda: typed("v2 grpc: contents of another datatype", "FP32", "int64_contents", [1, 2])),
        (4, params),
        (6, structure),
        (4, lambda: raw("v2 grpc: unknown model", [8], model=rng.choice(["nope", "x" * 1000, "\u00e9"]))),
        (10, lambda: Case("v2 grpc: random bytes", _junk(rng, rng.randrange(0, 2000)), MODEL_INFER)),
    ]
    weights = [w for w, _ in gens]
    while True:
        yield rng.choices(gens, weights)[0][1]()


# What each kind may answer over gRPC (every other kind: INVALID_ARGUMENT only).
GRPC_ALSO_ALLOWED = {"v2 grpc: unknown model": {"NOT_FOUND"}, "v2 grpc: random bytes": {"NOT_FOUND"}}
