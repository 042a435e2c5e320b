"""The data plane: what the server does for a request, on transport-free types, and the one
request lifecycle that every front end uses.

REST (rest.py) and gRPC (grpc_service.py) only decode a request into these calls and encode
their answers; warmup replay calls the same operations through proto_api.py with an inline
runner. So version resolution, input checks, output filters, classification and regression
results, model status and metadata are written once, and every request is counted in flight,
timed, traced and mapped to an error the same way whatever its transport.

Errors (errors.py) form one tree: every client-visible failure is a `ServingError` carrying a
gRPC status code, raised here or below; anything else escaping an operation is a bug, which
`DataPlane.request` logs and turns into INTERNAL. The front ends map a ServingError to their
wire format once (gRPC status, or HTTP status with TF Serving's `{"error": ...}` body).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, input_pb2, regression_pb2

from modelserver.core.errors import ServingError, deadline_exceeded, invalid_argument
from modelserver.core.manager import STATE_NAMES, Manager
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import Runner, Tensors
from modelserver.core.servable import (
    CLASSIFY_METHOD,
    INIT_OP_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Servable,
    Signature,
    validate_inputs,
)
from modelserver.core.shadow import Shadower

log = logging.getLogger("modelserver.core.dataplane")

FinishHook = Callable[[RequestContext], None]


class RequestScope:
    """`DataPlane.request`'s async context manager: a plain class rather than
    `contextlib.asynccontextmanager` (no generator), and `asyncio.timeout` only when a timeout is
    set, because every request on every front end goes through it."""

    __slots__ = ("_plane", "_ctx", "_timeout", "_timer")

    def __init__(self, plane: DataPlane, ctx: RequestContext, deadline: float | None,
                 timeout: float | None) -> None:
        self._plane = plane
        self._ctx = ctx
        self._timeout = timeout
        self._timer: asyncio.Timeout | None = None
        if timeout is not None:
            ctx.deadline = ctx.t_receive + timeout
        elif deadline is not None:
            ctx.deadline = deadline

    async def __aenter__(self) -> RequestContext:
        if self._timeout is not None:
            self._timer = asyncio.timeout(self._timeout)
            await self._timer.__aenter__()
        self._plane.in_flight += 1
        return self._ctx

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        ctx = self._ctx
        try:
            if self._timer is not None:
                try:
                    await self._timer.__aexit__(exc_type, exc, tb)  # our expiry: TimeoutError
                    if isinstance(exc, TimeoutError):
                        raise exc
                except TimeoutError:
                    ctx.status = grpc.StatusCode.DEADLINE_EXCEEDED.name
                    raise deadline_exceeded(f"Request timed out after {round(self._timeout * 1000)} ms") from None  # type: ignore[operator]
            if exc is None:
                return False
            if isinstance(exc, ServingError):
                ctx.status = exc.code.name
            elif isinstance(exc, asyncio.CancelledError):  # the client went away or its deadline passed
                left = ctx.remaining()
                ctx.status = (grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0
                              else grpc.StatusCode.CANCELLED).name
            elif isinstance(exc, Exception):  # a bug, not a client error
                log.error("%s %s failed", ctx.protocol, ctx.api, exc_info=exc)
                ctx.status = grpc.StatusCode.INTERNAL.name
                raise ServingError(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}") from exc
            return False
        finally:
            self._plane.in_flight -= 1
            if self._plane.on_finish is not None:
                self._plane.on_finish(ctx)


class ModelRef(NamedTuple):
    """The model a request names, and a version or a label (neither: the latest AVAILABLE).
    (A NamedTuple: one is built per request, in half the time of a frozen dataclass.)"""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version's state as GetModelStatus and `GET /v1/models/{name}` report it."""

    version: int
    state: int
    error: ServingError | None = None

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, "UNKNOWN")


@dataclass(slots=True)
class Prediction:
    servable: Servable
    signature: Signature
    outputs: Tensors  # the requested outputs (all, or the output filter's, in its order)


@dataclass(slots=True)
class ExampleResult:
    """A classify or regress answer: the signature used and TF Serving's result message."""

    servable: Servable
    signature: Signature
    method: str  # CLASSIFY_METHOD or REGRESS_METHOD
    result: classification_pb2.ClassificationResult | regression_pb2.RegressionResult


class DataPlane:
    """Every model API on a manager (`resolve`, `status`, `metadata`, `predict`, `classify`,
    `regress`, `multi_inference`) and the request lifecycle (`request`). `runner_for(model)` picks
    the runner of a model's computations (plain or batching); `on_finish(ctx)` is called exactly
    once per request, when its answer or error is sent."""

    def __init__(self, manager: Manager | None, runner_for: Callable[[str], Runner],
                 on_finish: FinishHook | None = None) -> None:
        self.manager = manager
        self.runner_for = runner_for
        self.on_finish = on_finish
        self.in_flight = 0
        self.max_tensor_bytes: int | None = None  # a request's input tensors, at most (ServerState sets it)
        self.shadow = Shadower(self)  # mirrors what a route's shadow asks for (core/shadow.py)

    # ---- the lifecycle -------------------------------------------------------------------------

    def request(self, protocol: str, api: str, *, deadline: float | None = None,
                timeout: float | None = None, route_key: bytes | None = None) -> RequestScope:
        """One request from receipt to answer (`async with plane.request(...) as ctx`): counted in
        flight, bounded by `timeout` seconds (DEADLINE_EXCEEDED; gRPC passes its own `deadline`
        instead), its status recorded, and `on_finish` called once. Raises only ServingError (or
        CancelledError when the client went away); a bug becomes INTERNAL, logged, and the server
        goes on."""
        return RequestScope(self, RequestContext(protocol, api, route_key=route_key), deadline, timeout)

    # ---- models ------------------------------------------------------------------------------

    def _manager(self) -> Manager:
        if self.manager is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "no models are served here")
        return self.manager

    def resolve(self, ref: ModelRef, ctx: RequestContext) -> Servable:
        """The servable a request names (NOT_FOUND, or INVALID_ARGUMENT for an unknown label). A
        request naming neither version nor label is split across labels by the model's routing
        table (routing.py), by `ctx.route_key` when the client sent one; the chosen label goes
        into `ctx.label` (`ctx.routed`), so metrics, traces and the REST headers report it."""
        if not ref.name:
            raise invalid_argument("Missing ModelSpec name")
        ctx.model = ref.name
        if ref.label:
            ctx.label = ref.label
        if ref.version is None and not ref.label:
            servable, chosen = self._manager().resolve_unlabelled(ref.name, ctx.route_key)
            if chosen is not None:
                ctx.label, ctx.routed = chosen, True
        else:
            servable = self._manager().resolve(ref.name, version=ref.version, label=ref.label)
        ctx.version = servable.version  # known from here on, so errors count against their version
        return servable

    def resolve_version(self, name: str, version: int, ctx: RequestContext) -> Servable:
        """One version of a model, by number (a shadow run)."""
        ctx.model = name
        servable = self._manager().resolve(name, version=version)
        ctx.version = servable.version
        return servable

    def status(self, ref: ModelRef, ctx: RequestContext) -> list[VersionStatus]:
        if not ref.name:
            raise invalid_argument("Missing ModelSpec name")
        ctx.model = ref.name
        records = self._manager().status(ref.name, version=ref.version, label=ref.label)
        return [VersionStatus(r.version, r.state, r.error) for r in records]

    def metadata(self, ref: ModelRef, ctx: RequestContext) -> tuple[Servable, get_model_metadata_pb2.SignatureDefMap]:
        """The servable and its SavedModel's whole SignatureDef map (as TF Serving reports it,
        TF2's `__saved_model_init_op` included)."""
        servable = self.resolve(ref, ctx)
        sdm = get_model_metadata_pb2.SignatureDefMap()
        for k, v in servable.signature_defs.items():
            sdm.signature_def[k].CopyFrom(v)
        return servable, sdm

    # ---- inference ---------------------------------------------------------------------------

    async def run(self, servable: Servable, sig: Signature, inputs: Tensors, ctx: RequestContext) -> Tensors:
        """Checks `inputs` (names, dtypes) and runs the signature through the model's runner:
        the one place where a model computes."""
        validate_inputs(sig, inputs)
        ctx.signature = sig.name
        ctx.version = servable.version
        if not ctx.model:
            ctx.model = servable.name
        if ctx.batch_size == 0 and inputs:
            first = next(iter(inputs.values()))
            ctx.batch_size = int(first.shape[0]) if first.ndim else 1
        runner = self.runner_for(servable.name)
        return await runner.submit((servable.name, servable.version, sig.name), sig.run, inputs, ctx)

    async def predict(self, servable: Servable, sig: Signature, inputs: Tensors, ctx: RequestContext,
                      output_filter: Sequence[str] = ()) -> Prediction:
        wanted = check_output_filter(sig, output_filter)
        outputs = await self.run(servable, sig, inputs, ctx)
        self.shadow.maybe(servable, sig, inputs, outputs, ctx)
        if wanted:
            outputs = {n: outputs[n] for n in wanted}
        return Prediction(servable, sig, outputs)

    async def classify(self, servable: Servable, signature_name: str, examples: input_pb2.Input,
                       ctx: RequestContext) -> ExampleResult:
        return await self._examples(servable, signature_name, CLASSIFY_METHOD, examples, ctx)

    async def regress(self, servable: Servable, signature_name: str, examples: input_pb2.Input,
                      ctx: RequestContext) -> ExampleResult:
        return await self._examples(servable, signature_name, REGRESS_METHOD, examples, ctx)

    async def multi_inference(self, servable: Servable, tasks: Sequence[tuple[str, str]],
                              examples: input_pb2.Input, ctx: RequestContext) -> list[ExampleResult]:
        """Classify and regress tasks `(method_name, signature_name)` on one model's input."""
        if not tasks:
            raise invalid_argument("MultiInferenceRequest must contain at least one task")
        sig_names = [s or "serving_default" for _, s in tasks]
        if len(set(sig_names)) != len(sig_names):
            raise invalid_argument("Duplicate evaluation of signature: " + ", ".join(sig_names))
        for method, _ in tasks:
            if method not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise invalid_argument(f"Unsupported signature method_name: {method}")
        return [await self._examples(servable, s, m, examples, ctx) for (m, _), s in zip(tasks, sig_names, strict=True)]

    async def _examples(self, servable: Servable, signature_name: str, method: str, examples: input_pb2.Input,
                        ctx: RequestContext) -> ExampleResult:
        sig = example_signature(servable, signature_name, method)
        serialized = serialized_examples(examples)
        outputs = await self.run(servable, sig, {next(iter(sig.inputs)): serialized}, ctx)
        n = len(serialized)
        result = classification_result(outputs, n) if method == CLASSIFY_METHOD else regression_result(outputs, n)
        return ExampleResult(servable, sig, method, result)


# ---- pure helpers --------------------------------------------------------------------------------


def check_output_filter(sig: Signature, output_filter: Sequence[str]) -> list[str]:
    if not output_filter:
        return []
    names = list(output_filter)
    if len(set(names)) != len(names):
        raise invalid_argument(f"duplicate output tensor alias in output_filter: {names}")
    for n in names:
        if n not in sig.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {n} Outputs expected to be in the set "
                f"{{{', '.join(sorted(sig.outputs))}}}."
            )
    return names


def serialized_examples(inp: input_pb2.Input) -> np.ndarray:
    """The request's tf.Examples serialized (context features merged in), as a string tensor."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        examples = list(inp.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        examples = list(inp.example_list_with_context.examples)
        context = inp.example_list_with_context.context
    else:
        raise invalid_argument("Input is empty")
    if not examples:
        raise invalid_argument("Input is empty")
    out = np.empty(len(examples), dtype=object)
    for i, ex in enumerate(examples):
        if context is not None:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(ex)
            ex = merged
        out[i] = ex.SerializeToString()
    return out


def example_signature(servable: Servable, signature_name: str, method: str) -> Signature:
    """A signature that can classify or regress: of that method, or a predict signature with one
    string input (TF2 models export classify/regress that way)."""
    sig = servable.signature(signature_name)
    string_inputs = [s for s in sig.inputs.values() if s.dtype.kind == "O"]
    compatible = sig.method_name == method or (
        sig.method_name == PREDICT_METHOD and len(sig.inputs) == 1 and len(string_inputs) == 1
    )
    if not compatible or len(sig.inputs) != 1 or sig.name == INIT_OP_SIGNATURE:
        raise invalid_argument(
            f"Expected {'classification' if method == CLASSIFY_METHOD else 'regression'} signature "
            f"method_name to be {method}. Was: {sig.method_name}"
        )
    return sig


def _per_example(name: str, arr: np.ndarray, n: int) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr.reshape(n if arr.shape[0] == n else -1, 1)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise invalid_argument(f"Expected output tensor {name} of shape [{n}, k], got {list(arr.shape)}")
    return arr


def classification_result(outputs: Tensors, n: int) -> classification_pb2.ClassificationResult:
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    if classes is None and scores is None:
        raise invalid_argument("Expected classification signature outputs: classes and/or scores")
    classes = _per_example("classes", classes, n) if classes is not None else None
    scores = _per_example("scores", scores, n) if scores is not None else None
    k = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    for i in range(n):
        c = result.classifications.add()
        for j in range(k):
            cls = c.classes.add()
            if classes is not None:
                label = classes[i, j]
                cls.label = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cls.score = float(scores[i, j])
    return result


def regression_result(outputs: Tensors, n: int) -> regression_pb2.RegressionResult:
    values = outputs.get("outputs")
    if values is None:
        raise invalid_argument("Expected regression signature output: outputs")
    values = _per_example("outputs", values, n)
    if values.shape[1] != 1:
        raise invalid_argument(f"Expected output tensor outputs of shape [{n}] or [{n}, 1]")
    result = regression_pb2.RegressionResult()
    for v in values[:, 0]:
        result.regressions.add().value = float(v)
    return result
