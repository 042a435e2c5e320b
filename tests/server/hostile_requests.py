"""Hostile requests against a running model-server, over each of its ports: the reusable harness
behind tests/server/test_hostile_input.py (a quick subset in `make test`) and bench/hostile.py
(10,000 per port, with the figures recorded in bench/RESULTS.md).

- `rest_cases`, `grpc_cases`, `admin_cases`: endless, seeded streams of malformed requests: random
  bytes, mutated valid requests, valid messages with hostile shapes, sizes, nesting, names and
  headers, and every request of issue 23's hostile-input findings.
- `run_cases`: sends them from a few threads and tallies the answers; a *failure* is an HTTP
  status of 500 or more, a gRPC INTERNAL, UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED, or no answer
  within the client's timeout. `RssSampler` follows the server's memory meanwhile.
- `check_serving`: a normal request on every port answers correctly; `tracebacks`: how many the
  server logged (each one an error it did not handle).
- `Holder`: holds idle and byte-by-byte connections open on a port (reopening those the server
  closes, and counting them), for the connection-exhaustion check.

The server is expected to run as the operator renders it: the demo models (`python -m demomodels`),
`--enable_reload_config_rpc=false` and `--enable_profiler=false` (a valid reload request would
otherwise unload the models it does not list), the admin port with a token.
"""

from __future__ import annotations

import collections
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

MODELS = ("half_plus_two", "half_plus_two_tf1", "two_versions", "bytes_model")
VERBS = ("predict", "classify", "regress")
GRPC_METHODS = (
    "/tensorflow.serving.PredictionService/Predict", "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress", "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.PredictionService/GetModelMetadata", "/tensorflow.serving.ModelService/GetModelStatus",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
)
FAILED_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
CLIENT_TIMEOUT_S = 60.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A request head that never ends (a header growing a byte at a time): what a slow-headers client sends.
SLOW_HTTP_HEAD = b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 8000


@dataclass(frozen=True)
class Target:
    """A running model-server: REST and admin (host, port), gRPC "host:port", the admin token, its PID."""

    host: str
    rest_port: int
    grpc_port: int
    admin_port: int
    token: str
    pid: int

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class Case:
    """One request: raw HTTP bytes (REST, admin) or (method, payload, metadata) for gRPC."""

    kind: str
    data: bytes = b""
    method: str = ""
    metadata: tuple[tuple[str, Any], ...] = ()
    half_close: bool = False  # HTTP: the client stops sending after `data` (a body that never comes)


@dataclass
class Tally:
    """What one port answered."""

    port: str
    sent: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    by_kind: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    slowest: str = ""

    def add(self, case: Case, outcome: str, failed: bool, seconds: float) -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        self.by_kind[(case.kind, outcome)] += 1
        if seconds > self.slowest_s:
            self.slowest_s, self.slowest = seconds, case.kind
        if failed:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(f"{case.kind}: {outcome} {case.method} {case.data[:160]!r}")

    def as_json(self) -> dict[str, Any]:
        return {"port": self.port, "sent": self.sent, "failed": self.failed, "seconds": round(self.seconds, 1),
                "outcomes": dict(self.outcomes.most_common()), "failures": self.failures,
                "by_kind": {f"{k} -> {o}": n for (k, o), n in sorted(self.by_kind.items())},
                "slowest_s": round(self.slowest_s, 2), "slowest": self.slowest}


# ---- HTTP, byte for byte ---------------------------------------------------------------------------


def http_request(method: bytes, path: bytes, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                 length: bool = True) -> bytes:
    head = [method + b" " + path + b" HTTP/1.1", b"Host: model-server"]
    for k, v in headers or []:
        head.append(k + b": " + v)
    if length and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers or []):
        head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class RawHttp:
    """Sends bytes as given, on a connection of their own (so that a request the server reads
    only in part cannot shift the answers of the next ones), and reads back one answer's status."""

    def __init__(self, host: str, port: int, timeout: float = CLIENT_TIMEOUT_S) -> None:
        self.addr, self.timeout = (host, port), timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def send(self, data: bytes, half_close: bool = False) -> str:
        """The answer's status ("400"), "closed" (the server closed without an answer) or "timeout"."""
        self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        self.buf = b""
        try:
            try:
                self.sock.sendall(data)
                if half_close:
                    self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server stopped reading (e.g. a body over the limit): its answer may be there
            status, _ = self._read(head_only=data.startswith(b"HEAD "))
        except TimeoutError:
            return "timeout"
        except OSError:
            status = None
        finally:
            self.close()
        return status if status is not None else "closed"

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)  # type: ignore[union-attr]
        if not chunk:
            raise ConnectionResetError("closed")
        return chunk

    def _read(self, head_only: bool = False) -> tuple[str | None, bool]:
        try:
            while b"\r\n\r\n" not in self.buf:
                self.buf += self._recv()
        except ConnectionResetError:
            return None, False
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ")[1].decode()
        if status == "100":  # an interim answer (Expect: 100-continue): the final one follows
            return self._read(head_only)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
        keep = headers.get(b"connection", b"").lower() != b"close"
        if head_only:
            pass  # an answer to HEAD has no body, whatever its headers say
        elif b"content-length" in headers:
            n = int(headers[b"content-length"])
            while len(self.buf) < n:
                self.buf += self._recv()
            self.buf = self.buf[n:]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while not self.buf.endswith(b"0\r\n\r\n"):
                self.buf += self._recv()
            self.buf = b""
        else:
            keep = False
        return status, keep


# ---- the cases -------------------------------------------------------------------------------------


def _junk(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(4)
    if op == 0 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 1:
        b = b[:rng.randrange(len(b) + 1)]
    elif op == 2 and b:
        i = rng.randrange(len(b))
        b[i:i] = _junk(rng, rng.randint(1, 16))
    else:
        b = b + b
    return bytes(b)


def _nest(depth: int, leaf: str = "1.0", open_: str = "[", close: str = "]") -> str:
    return open_ * depth + leaf + close * depth


def _hostile_values(rng: random.Random) -> Any:
    """JSON text of a hostile value (as text: some are not what json.dumps can write)."""
    return rng.choice([
        lambda: _nest(rng.choice([70, 1000, 100_000])),
        lambda: _nest(rng.choice([70, 5000]), "1", '{"a":', "}"),
        lambda: "[" + ",".join(["1.5"] * rng.choice([1000, 100_000])) + "]",
        lambda: "[" + ",".join(["[1.0]"] * rng.choice([1000, 50_000])) + "]",
        lambda: "[" + ",".join(["[" + ",".join(["2.5"] * 3000) + "]"] * rng.choice([1, 50])) + "]",
        lambda: "1" + "0" * rng.choice([400, 5000]),
        lambda: rng.choice(["1e309", "-1e309", "NaN", "Infinity", "-Infinity", "1e-400", "-0"]),
        lambda: '["\\ud800"]', lambda: '["\\udfff\\ud800", "ok"]', lambda: '"\\u0000"',
        lambda: '[{"b64": "!!!"}]', lambda: '[{"b64": 1}]', lambda: '[{"b64": "' + "QUJD" * 50_000 + '"}]',
        lambda: "[" + ",".join(['"x"'] * 100_000) + "]",
        lambda: json.dumps({f"k{i}": 1.0 for i in range(rng.choice([10, 100_000]))}),
        lambda: "[[1.0], [2.0, 3.0]]", lambda: "[]", lambda: "[[]]", lambda: "{}", lambda: "null", lambda: "true",
        lambda: json.dumps([rng.random() for _ in range(20)]), lambda: '"' + "a" * 1_000_000 + '"',
        lambda: "[" + ",".join(["true", "1", "1.5", '"s"', "null"] * 20) + "]",
    ])()


def _keyed(key: str, value_text: str) -> bytes:
    return ('{"' + key + '": ' + value_text + "}").encode("utf-8", "surrogatepass")


def _model_path(rng: random.Random) -> bytes:
    model = rng.choice(MODELS + ("nope", "", "m" * 300, "caf\u00e9"))
    middle = rng.choice(["", "", "/versions/1", "/versions/2", "/labels/stable", "/labels/canary",
                         "/versions/" + "9" * rng.choice([19, 20, 5000]), "/versions/\u0661", "/versions/-1",
                         "/labels/caf\u00e9", "/labels/%FF%FE", "/versions/١٢", "/labels/" + "l" * 500])
    verb = rng.choice(VERBS + ("explain", "PREDICT", ""))
    return f"/v1/models/{model}{middle}{':' + verb if verb else ''}".encode()


def rest_cases(seed: int = 0) -> Iterator[Case]:
    """Malformed REST requests for the model port (endless)."""
    rng = random.Random(seed)
    valid = [b'{"instances": [1.0, 2.0]}', b'{"inputs": {"x": [[1.0]]}}', b'{"signature_name": "serving_default", '
             b'"instances": [{"x": 1.0}]}', b'{"examples": [{"x": 1.0}], "context": {"y": [1, 2]}}',
             b'{"instances": [{"b64": "AAEC"}]}']

    def post(body: bytes, kind: str, path: bytes | None = None, headers: list[tuple[bytes, bytes]] | None = None,
             **kw: Any) -> Case:
        return Case(kind, http_request(b"POST", path or _model_path(rng), body, headers), **kw)

    gens: list[tuple[float, Callable[[], Case]]] = [
        (10, lambda: post(_junk(rng, rng.randrange(0, 3000)), "rest: random body")),
        (15, lambda: post(_mutate(rng, rng.choice(valid)), "rest: mutated body")),
        (25, lambda: post(_keyed(rng.choice(["instances", "inputs", "examples", "context", "signature_name"]),
                                 _hostile_values(rng)), "rest: hostile value")),
        (8, lambda: post(json.dumps({"instances": [{"x": 1.0}], "signature_name": rng.choice(
            ["read_file_no", "", "\u0000", "s" * 10_000, "classify", "regress", "__saved_model_init_op"])}).encode(),
            "rest: signature")),
        (8, lambda: post(json.dumps({"examples": [{f"f{i}": [rng.random()] * rng.randrange(50) for i in range(
            rng.randrange(1, 200))} for _ in range(rng.randrange(1, 300))]}).encode(), "rest: examples",
            path=f"/v1/models/{rng.choice(MODELS)}:{rng.choice(['classify', 'regress'])}".encode())),
        (8, lambda: post(rng.choice(valid), "rest: path")),
        (6, lambda: Case("rest: method", http_request(rng.choice([b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS",
                                                                  b"HEAD", b"TRACE", b"FOO", b"G\xffT"]),
                                                      _model_path(rng), rng.choice([b"", b"{}"])))),
        (8, lambda: post(rng.choice(valid), "rest: headers", path=b"/v1/models/two_versions:predict", headers=rng.choice([
            [(b"X-Model-Route-Key", b"\xff\xfe")], [(b"X-Model-Route-Key", _junk(rng, 40).replace(b"\r", b"")
                                                     .replace(b"\n", b""))],
            [(b"X-Model-Route-Key", b"k" * 20_000)], [(b"X-H%d" % i, b"v") for i in range(300)],
            [(b"Content-Type", b"\xff/\xfe")], [(b"Content-Encoding", b"gzip")], [(b"Content-Encoding", b"deflate")],
            [(b"Transfer-Encoding", b"chunked")], [(b"Content-Length", b"-1")], [(b"Content-Length", b"abc")],
            [(b"Content-Length", b"1"), (b"Content-Length", b"2")], [(b"Expect", b"100-continue")]]))),
        (2, lambda: post(b'{"instances": [1.0', "rest: body never completes", headers=[(b"Content-Length", b"100000")],
                         half_close=True)),
        (4, lambda: Case("rest: raw http", rng.choice([
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + _junk(rng, 200), H2_PREFACE, _junk(rng, 500),
            b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n", b"GET " + b"/" * 20_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /v1/health/ready HTTP/9.9\r\n\r\n", b"\r\n\r\n"]), half_close=True)),
        (4, lambda: Case("rest: other paths", http_request(b"GET", rng.choice([
            b"/monitoring/prometheus/metrics?x=" + b"1" * 5000, b"/v1/health/live", b"/v1/health/ready", b"/",
            b"/v1/models", b"/v1/models/", b"/../../etc/passwd", b"/v1/models/half_plus_two/metadata",
            b"/v1/models/%00", b"/v1/models/two_versions/labels/stable/metadata"])))),
        (0.3, lambda: post(b'{"instances": [' + b"1," * rng.choice([2_000_000, 5_000_000]) + b"1]}",
                           "rest: large body", path=b"/v1/models/half_plus_two:predict")),
        (0.2, lambda: post(b'{"instances": [' + b"1," * 34_000_000 + b"1]}", "rest: body over the limit",
                           path=b"/v1/models/half_plus_two:predict")),
    ]
    weights = [w for w, _ in gens]
    while True:
        yield rng.choices(gens, weights)[0][1]()


def _tensor(rng: random.Random) -> Any:
    from tensorflow.core.framework import tensor_pb2, types_pb2

    t = tensor_pb2.TensorProto()
    choice = rng.randrange(9)
    if choice == 0:  # broadcast bombs: one value, a huge declared shape
        t.dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT64, types_pb2.DT_STRING])
        for d in rng.choice([[100_000_000], [250_000_000], [1, 250_000_000], [2**62], [2**31, 2**31], [3, 2**61]]):
            t.tensor_shape.dim.add().size = d
        if t.dtype == types_pb2.DT_STRING:
            t.string_val.append(b"x")
        elif t.dtype == types_pb2.DT_INT64:
            t.int64_val.append(1)
        else:
            t.float_val.append(1.0)
    elif choice == 1:  # shapes: negative, rank 100,000, unknown rank
        t.dtype = types_pb2.DT_FLOAT
        t.float_val.append(1.0)
        if rng.random() < 0.3:
            t.tensor_shape.unknown_rank = True
        for d in rng.choice([[-1], [1, -5], [1] * 100_000, [0], [0, 2**62]]):
            t.tensor_shape.dim.add().size = d
    elif choice == 2:  # tensor_content that does not match
        t.dtype = rng.choice([types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16, types_pb2.DT_COMPLEX64])
        t.tensor_shape.dim.add().size = rng.choice([1, 3, 1000])
        t.tensor_content = _junk(rng, rng.choice([0, 1, 7, 12, 4000]))
    elif choice == 3:  # every dtype, valid enum or not
        t.dtype = rng.randrange(0, 130)
        t.tensor_shape.dim.add().size = 1
        t.float_val.append(1.0)
    elif choice == 4:  # strings: many, long, not UTF-8
        t.dtype = types_pb2.DT_STRING
        n = rng.choice([1, 1000, 200_000])
        t.tensor_shape.dim.add().size = n
        t.string_val.extend([b"\xff\xfe" * rng.randrange(3)] * n)
    elif choice == 5:  # real data, a few MB
        import numpy as np

        t.dtype = types_pb2.DT_FLOAT
        n = rng.choice([1, 1000, 1_000_000])
        t.tensor_shape.dim.add().size = n
        t.tensor_content = np.ones(n, np.float32).tobytes()
    elif choice == 6:  # typed values fewer or more than the shape
        t.dtype = types_pb2.DT_INT32
        t.tensor_shape.dim.add().size = rng.choice([0, 2, 10])
        t.int_val.extend([2**31 - 1, -(2**31)] * rng.randrange(1, 8))
    elif choice == 7:
        t.dtype = types_pb2.DT_FLOAT
        t.tensor_shape.dim.add().size = 1
        t.float_val.append(rng.choice([float("nan"), float("inf"), 1e38, -0.0]))
    else:
        t.dtype = types_pb2.DT_VARIANT if rng.random() < 0.5 else types_pb2.DT_RESOURCE
        t.tensor_shape.dim.add().size = 1
    return t


def _spec(rng: random.Random, spec: Any) -> None:
    spec.name = rng.choice(MODELS * 3 + ("nope", "", "m" * 100_000, "caf\u00e9", "\u0000"))
    r = rng.random()
    if r < 0.2:
        spec.version.value = rng.choice([1, 2, 0, -1, 2**63 - 1, -(2**63)])
    elif r < 0.35:
        spec.version_label = rng.choice(["stable", "canary", "caf\u00e9", "", "l" * 10_000, "\u0000"])
    spec.signature_name = rng.choice(["", "", "serving_default", "classify", "regress", "nope", "s" * 10_000,
                                      "__saved_model_init_op", "classify_x_to_y", "regress_x_to_y"])


def _examples(rng: random.Random, inp: Any) -> None:
    target = inp.example_list_with_context if rng.random() < 0.3 else inp.example_list
    if target is inp.example_list_with_context:
        target.context.features.feature["c"].bytes_list.value.append(_junk(rng, 10))
    for _ in range(rng.choice([0, 1, 100, 5000])):
        ex = target.examples.add()
        for j in range(rng.choice([1, 1, 50])):
            f = ex.features.feature[rng.choice(["x", "inputs", f"f{j}"])]
            kind = rng.randrange(3)
            if kind == 0:
                f.float_list.value.extend([rng.random()] * rng.randrange(3))
            elif kind == 1:
                f.int64_list.value.extend([2**63 - 1] * rng.randrange(3))
            else:
                f.bytes_list.value.append(_junk(rng, rng.randrange(20)))


def _grpc_message(rng: random.Random) -> tuple[str, bytes, str]:
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_management_pb2,
        predict_pb2,
        regression_pb2,
    )

    m = rng.randrange(7)
    if m == 0:
        req = predict_pb2.PredictRequest()
        _spec(rng, req.model_spec)
        n = rng.choice([1, 1, 1, 2, 100_000])
        if n < 3:
            for _ in range(n):
                req.inputs[rng.choice(["x", "inputs", "data", "path"])].CopyFrom(_tensor(rng))
        else:  # 100,000 unknown inputs (one small tensor each): the error message must stay bounded
            small = predict_pb2.PredictRequest().inputs["x"]
            small.dtype = 1
            small.float_val.append(1.0)
            for i in range(n):
                req.inputs[f"in{i}"].CopyFrom(small)
        if rng.random() < 0.2:
            req.output_filter.extend(rng.choice([["y"], ["y", "y"], ["nope"], [f"o{i}" for i in range(50_000)]]))
        return GRPC_METHODS[0], req.SerializeToString(), "grpc: hostile Predict"
    if m in (1, 2):
        req = (classification_pb2.ClassificationRequest() if m == 1 else regression_pb2.RegressionRequest())
        _spec(rng, req.model_spec)
        _examples(rng, req.input)
        return GRPC_METHODS[m], req.SerializeToString(), "grpc: hostile Classify/Regress"
    if m == 3:
        req = inference_pb2.MultiInferenceRequest()
        for _ in range(rng.choice([0, 1, 2, 1000])):
            t = req.tasks.add()
            _spec(rng, t.model_spec)
            t.method_name = rng.choice(["tensorflow/serving/classify", "tensorflow/serving/regress",
                                        "tensorflow/serving/predict", "", "x" * 1000])
        _examples(rng, req.input)
        return GRPC_METHODS[3], req.SerializeToString(), "grpc: hostile MultiInference"
    if m == 4:
        req = get_model_metadata_pb2.GetModelMetadataRequest()
        _spec(rng, req.model_spec)
        req.metadata_field.extend(rng.choice([[], ["signature_def"], ["signature_def"] * 10_000, ["x" * 100_000]]))
        return GRPC_METHODS[4], req.SerializeToString(), "grpc: hostile GetModelMetadata"
    if m == 5:
        req = get_model_status_pb2.GetModelStatusRequest()
        _spec(rng, req.model_spec)
        return GRPC_METHODS[5], req.SerializeToString(), "grpc: hostile GetModelStatus"
    req = model_management_pb2.ReloadConfigRequest()
    lst = req.config.model_config_list
    for i in range(rng.choice([0, 1, 80])):
        c = lst.config.add()
        c.name, c.base_path, c.model_platform = f"m{i}", rng.choice(["/etc", "/", "/models/x"]), "tensorflow"
    return GRPC_METHODS[6], req.SerializeToString(), "grpc: HandleReloadConfigRequest"


def grpc_cases(seed: int = 0) -> Iterator[Case]:
    """Malformed gRPC requests for the model port (endless)."""
    from tensorflow_serving.apis import predict_pb2

    rng = random.Random(seed)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    x = req.inputs["x"]
    x.dtype, x.float_val[:] = 1, [1.0, 2.0]
    x.tensor_shape.dim.add().size = 2
    valid_predict = req.SerializeToString()
    metadata_choices: list[tuple[tuple[str, Any], ...]] = [
        (), (), (), (("x-model-route-key", "k"),), (("x-model-route-key-bin", b"\xff\xfe\x00"),),
        (("x-model-route-key", "k" * 7000),), (("x-other", "v"),)]
    while True:
        md = rng.choice(metadata_choices)
        r = rng.random()
        if r < 0.25:
            yield Case("grpc: random bytes", _junk(rng, rng.randrange(0, 2000)), rng.choice(GRPC_METHODS), md)
        elif r < 0.4:
            yield Case("grpc: mutated Predict", _mutate(rng, valid_predict), GRPC_METHODS[0], md)
        elif r < 0.42:
            yield Case("grpc: unknown method", _junk(rng, 10), rng.choice([
                "/tensorflow.serving.PredictionService/Nope", "/x/y", "/tensorflow.ProfilerService/Profile"]), md)
        else:
            method, payload, kind = _grpc_message(rng)
            yield Case(kind, payload, method, md)


def admin_cases(token: str, seed: int = 0) -> Iterator[Case]:
    """Malformed requests for the admin port (endless): without the token, and with it."""
    rng = random.Random(seed)
    good = [(b"Authorization", b"Bearer " + token.encode())]

    def doc() -> bytes:
        label = rng.choice(["stable", "canary", "caf\u00e9", "\ud800", "", "a b", "l" * 100, "\u0661"])
        model = rng.choice(["two_versions", "half_plus_two", "nope", "caf\u00e9", ""])
        entry: dict[str, Any] = {"labels": {label: rng.choice([1, 2, 3, 0, -1, 2**63, 1.5, "1", None])}}
        if rng.random() < 0.5:
            entry["weights"] = {label: rng.choice([0, 10, -1, 10**7, 1.5, True])}
        if rng.random() < 0.2:
            entry["shadow"] = rng.choice([{"label": label, "percent": 200}, {"label": "x"}, [], None, "s"])
        body: dict[str, Any] = {"generation": rng.choice([1, 2**62, 2**63, 10**4000, -1, "1", None, 1.5]),
                                "models": {model: entry}}
        if rng.random() < 0.05:
            body["models"] = {f"m{i}": {"labels": {}} for i in range(10_000)}
        return json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")

    gens: list[tuple[int, Callable[[], Case]]] = [
        (15, lambda: Case("admin: no or bad token", http_request(rng.choice([b"GET", b"PUT"]), rng.choice(
            [b"/v1/admin/routing", b"/v1/admin/models"]), b"{}", rng.choice([
                [], [(b"Authorization", b"Bearer \xff\xfe")], [(b"Authorization", b"Bearer " + _junk(rng, 30)
                                                               .replace(b"\r", b"").replace(b"\n", b""))],
                [(b"Authorization", b"Basic dXNlcjpwYXNz")], [(b"Authorization", b"Bearer " + b"t" * 20_000)],
                [(b"Authorization", b"Bearer")], [(b"Authorization", b"bearer " + token.encode())]])))),
        (30, lambda: Case("admin: hostile routing document", http_request(b"PUT", b"/v1/admin/routing", doc(), good))),
        (15, lambda: Case("admin: random body", http_request(b"PUT", b"/v1/admin/routing", _junk(
            rng, rng.randrange(3000)), good))),
        (10, lambda: Case("admin: nesting", http_request(b"PUT", b"/v1/admin/routing", rng.choice([
            _nest(rng.choice([100, 100_000])), _nest(rng.choice([100, 100_000]), "1", '{"a":', "}"),
            '{"models": ' + _nest(100_000) + "}"]).encode(), good))),
        (5, lambda: Case("admin: body over 1 MiB", http_request(b"PUT", b"/v1/admin/routing", b"[" + b"1," * 600_000
                                                                + b"1]", good))),
        (10, lambda: Case("admin: reads", http_request(b"GET", rng.choice(
            [b"/v1/admin/routing", b"/v1/admin/models", b"/v1/admin/nope", b"/", b"/v1/admin/routing?x=\xff"]), b"",
            good))),
        (5, lambda: Case("admin: methods", http_request(rng.choice([b"DELETE", b"POST", b"PATCH", b"OPTIONS"]),
                                                       b"/v1/admin/routing", b"{}", good))),
        (5, lambda: Case("admin: mutated", _mutate(rng, http_request(b"PUT", b"/v1/admin/routing", json.dumps(
            {"generation": 1, "models": {"two_versions": {"labels": {"stable": 1}}}}).encode(), good)),
            half_close=True)),
    ]
    weights = [w for w, _ in gens]
    while True:
        yield rng.choices(gens, weights)[0][1]()


# ---- sending -----------------------------------------------------------------------------------------


def _http_outcome(status: str) -> bool:
    """Whether an HTTP outcome is a failure (5xx, or no answer in time)."""
    return status == "timeout" or (status.isdigit() and int(status) >= 500)


def run_cases(target: Target, port: str, cases: Iterator[Case], n: int, concurrency: int = 8) -> Tally:
    """Sends `n` cases to `port` ("rest", "grpc" or "admin") from `concurrency` threads."""
    tally = Tally(port)
    lock = threading.Lock()
    local = threading.local()
    channel = grpc.insecure_channel(target.grpc, options=[("grpc.max_send_message_length", -1),
                                                          ("grpc.max_receive_message_length", -1)])
    http_port = target.rest_port if port == "rest" else target.admin_port

    def one(case: Case) -> None:
        t0 = time.perf_counter()
        if port == "grpc":
            call = channel.unary_unary(case.method)
            try:
                call(case.data, timeout=CLIENT_TIMEOUT_S, metadata=case.metadata or None)
                outcome = "OK"
            except grpc.RpcError as err:
                outcome = err.code().name  # type: ignore[attr-defined]
            failed = outcome in FAILED_CODES
        else:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = RawHttp(target.host, http_port)
            outcome = conn.send(case.data, case.half_close)
            failed = _http_outcome(outcome)
        with lock:
            tally.add(case, outcome, failed, time.perf_counter() - t0)

    left = [n]

    def worker() -> None:
        while True:
            with lock:  # cases are made one at a time, as they are sent (some are large)
                if not left[0]:
                    return
                left[0] -= 1
                case = next(cases)
            one(case)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    tally.seconds = time.perf_counter() - t0
    channel.close()
    return tally


def check_serving(target: Target) -> dict[str, Any]:
    """A normal request on each port answers as it should (AssertionError otherwise)."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    out: dict[str, Any] = {}
    conn = RawHttp(target.host, target.rest_port, timeout=30)
    body = b'{"instances": [1.0, 2.0, 5.0]}'
    assert conn.send(http_request(b"GET", b"/v1/health/ready")) == "200", "readiness"
    assert conn.send(http_request(b"POST", b"/v1/models/half_plus_two:predict", body)) == "200"
    conn.close()
    import urllib.request

    with urllib.request.urlopen(urllib.request.Request(
            f"http://{target.host}:{target.rest_port}/v1/models/half_plus_two:predict", data=body), timeout=30) as r:
        out["rest"] = json.loads(r.read())
    assert out["rest"] == {"predictions": [2.5, 3.0, 4.5]}, out["rest"]
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "half_plus_two"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([0.0], np.float32)))
    with grpc.insecure_channel(target.grpc) as ch:
        resp = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(req, timeout=30)
    out["grpc"] = list(resp.outputs["y"].float_val)
    assert out["grpc"] == [2.0], out["grpc"]
    admin = RawHttp(target.host, target.admin_port, timeout=30)
    assert admin.send(http_request(b"GET", b"/v1/admin/routing", b"",
                                   [(b"Authorization", b"Bearer " + target.token.encode())])) == "200"
    admin.close()
    return out


def tracebacks(log_text: str) -> int:
    """Tracebacks in a server's log: each is an exception nobody handled (a client's error is
    answered, not logged with a traceback)."""
    return log_text.count("Traceback (most recent call last)")


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM: the peak) of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread (`peak`, `samples`)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, _ = rss_bytes(self.pid)
            except (OSError, KeyError):
                return
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# ---- connection exhaustion ---------------------------------------------------------------------------


class Holder:
    """Holds `idle` connections that send nothing and `dribble` connections that send `payload`
    one byte per `interval` seconds, open on (host, port); a connection the server closes is
    counted (`closed`) and replaced, so the count stays up for as long as the holder runs."""

    def __init__(self, host: str, port: int, idle: int, dribble: int, payload: bytes, interval: float = 1.0) -> None:
        self.addr, self.payload, self.interval = (host, port), payload, interval
        self.idle: list[socket.socket] = []
        self.dribbling: list[tuple[socket.socket, int]] = []
        self.want = (idle, dribble)
        self.closed = collections.Counter[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=5)
        s.setblocking(False)
        return s

    def _alive(self, s: socket.socket) -> bool:
        try:
            data = s.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if data:
            return True  # an answer (e.g. 408/400): read and keep going until it closes
        s.close()
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            kept = [s for s in self.idle if self._alive(s)]
            self.closed["idle"] += len(self.idle) - len(kept)
            self.idle = kept + [self._open() for _ in range(self.want[0] - len(kept))]
            dribbling = []
            for s, i in self.dribbling:
                if not self._alive(s):
                    self.closed["dribble"] += 1
                    continue
                try:
                    s.send(self.payload[i % len(self.payload):i % len(self.payload) + 1])
                except OSError:
                    self.closed["dribble"] += 1
                    s.close()
                    continue
                dribbling.append((s, i + 1))
            self.dribbling = dribbling + [(self._open(), 0) for _ in range(self.want[1] - len(dribbling))]
            self._stop.wait(self.interval)

    def __enter__(self) -> Holder:
        self.idle = [self._open() for _ in range(self.want[0])]
        self.dribbling = [(self._open(), 0) for _ in range(self.want[1])]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in self.idle + [s for s, _ in self.dribbling]:
            s.close()

    @property
    def open(self) -> int:
        return len(self.idle) + len(self.dribbling)
