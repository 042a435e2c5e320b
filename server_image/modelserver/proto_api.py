"""Transport-free inference at the protobuf level: Predict, Classify, Regress, MultiInference and
GetModelMetadata on a resolved Servable.

The gRPC service calls these directly, REST after converting JSON, warmup replay through the
`*_sync` variants (which run the signature inline, for code already off the event loop). Every
model computation goes through `runner.submit`, the single execution call site.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    regression_pb2,
)

from .context import RequestContext
from .errors import invalid_argument
from .runner import InlineRunner, Runner, Tensors
from .servable import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    Servable,
    Signature,
    validate_inputs,
)
from .tensors import to_ndarray, to_tensor_proto

T = TypeVar("T")


async def run_signature(
    servable: Servable, sig: Signature, inputs: Tensors, runner: Runner, ctx: RequestContext
) -> Tensors:
    """Validates `inputs` and runs the signature through the runner (the one execution call site)."""
    validate_inputs(sig, inputs)
    ctx.signature = sig.name
    ctx.version = servable.version
    if not ctx.model:
        ctx.model = servable.name
    if ctx.batch_size == 0 and inputs:
        first = next(iter(inputs.values()))
        ctx.batch_size = int(first.shape[0]) if first.ndim else 1
    return await runner.submit((servable.name, servable.version, sig.name), sig.run, inputs, ctx)


# ---- Predict -----------------------------------------------------------------------------------


def predict_inputs(sig: Signature, request: predict_pb2.PredictRequest) -> Tensors:
    return {name: to_ndarray(name, proto) for name, proto in request.inputs.items()}


def check_output_filter(sig: Signature, output_filter: Any) -> list[str]:
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


async def predict(
    servable: Servable, request: predict_pb2.PredictRequest, runner: Runner, ctx: RequestContext
) -> predict_pb2.PredictResponse:
    sig = servable.signature(request.model_spec.signature_name)
    wanted = check_output_filter(sig, request.output_filter)
    outputs = await run_signature(servable, sig, predict_inputs(sig, request), runner, ctx)
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    for name in wanted or outputs:
        response.outputs[name].CopyFrom(to_tensor_proto(outputs[name]))
    return response


def fill_model_spec(spec: Any, servable: Servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


# ---- Classify / Regress ------------------------------------------------------------------------


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


def _example_signature(servable: Servable, signature_name: str, method: str) -> Signature:
    sig = servable.signature(signature_name)
    string_inputs = [s for s in sig.inputs.values() if s.dtype.kind == "O"]
    compatible = sig.method_name == method or (
        sig.method_name == PREDICT_METHOD and len(sig.inputs) == 1 and len(string_inputs) == 1
    )
    if not compatible or len(sig.inputs) != 1:
        raise invalid_argument(
            f"Expected {'classification' if method == CLASSIFY_METHOD else 'regression'} signature "
            f"method_name to be {method}. Was: {sig.method_name}"
        )
    return sig


async def _run_examples(
    servable: Servable, sig: Signature, inp: input_pb2.Input, runner: Runner, ctx: RequestContext
) -> tuple[int, Tensors]:
    examples = serialized_examples(inp)
    input_name = next(iter(sig.inputs))
    outputs = await run_signature(servable, sig, {input_name: examples}, runner, ctx)
    return len(examples), outputs


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


async def classify(
    servable: Servable, request: classification_pb2.ClassificationRequest, runner: Runner, ctx: RequestContext
) -> classification_pb2.ClassificationResponse:
    sig = _example_signature(servable, request.model_spec.signature_name, CLASSIFY_METHOD)
    n, outputs = await _run_examples(servable, sig, request.input, runner, ctx)
    response = classification_pb2.ClassificationResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    response.result.CopyFrom(classification_result(outputs, n))
    return response


async def regress(
    servable: Servable, request: regression_pb2.RegressionRequest, runner: Runner, ctx: RequestContext
) -> regression_pb2.RegressionResponse:
    sig = _example_signature(servable, request.model_spec.signature_name, REGRESS_METHOD)
    n, outputs = await _run_examples(servable, sig, request.input, runner, ctx)
    response = regression_pb2.RegressionResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    response.result.CopyFrom(regression_result(outputs, n))
    return response


async def multi_inference(
    servable: Servable, request: inference_pb2.MultiInferenceRequest, runner: Runner, ctx: RequestContext
) -> inference_pb2.MultiInferenceResponse:
    if not request.tasks:
        raise invalid_argument("MultiInferenceRequest must contain at least one task")
    names = {t.model_spec.name for t in request.tasks}
    if len(names) != 1:
        raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    sig_names = [t.model_spec.signature_name or DEFAULT_SIGNATURE for t in request.tasks]
    if len(set(sig_names)) != len(sig_names):
        raise invalid_argument("Duplicate evaluation of signature: " + ", ".join(sig_names))
    response = inference_pb2.MultiInferenceResponse()
    for task, sig_name in zip(request.tasks, sig_names, strict=True):
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise invalid_argument(f"Unsupported signature method_name: {task.method_name}")
        sig = _example_signature(servable, sig_name, task.method_name)
        n, outputs = await _run_examples(servable, sig, request.input, runner, ctx)
        result = response.results.add()
        fill_model_spec(result.model_spec, servable, sig.name)
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(classification_result(outputs, n))
        else:
            result.regression_result.CopyFrom(regression_result(outputs, n))
    return response


# ---- GetModelMetadata --------------------------------------------------------------------------

SIGNATURE_DEF_FIELD = "signature_def"


def get_model_metadata(
    servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {f} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(servable))
    return response


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    sdm = get_model_metadata_pb2.SignatureDefMap()
    for k, v in servable.signature_defs.items():
        if k != "__saved_model_init_op":
            sdm.signature_def[k].CopyFrom(v)
    return sdm


# ---- synchronous variants (warmup replay: already on a worker thread) --------------------------


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Drives a coroutine that never suspends (InlineRunner) to completion on this thread."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("coroutine suspended; use InlineRunner")


_INLINE = InlineRunner()


def predict_sync(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    return run_inline(predict(servable, request, _INLINE, RequestContext("warmup", "predict")))


def classify_sync(
    servable: Servable, request: classification_pb2.ClassificationRequest
) -> classification_pb2.ClassificationResponse:
    return run_inline(classify(servable, request, _INLINE, RequestContext("warmup", "classify")))


def regress_sync(
    servable: Servable, request: regression_pb2.RegressionRequest
) -> regression_pb2.RegressionResponse:
    return run_inline(regress(servable, request, _INLINE, RequestContext("warmup", "regress")))


def multi_inference_sync(
    servable: Servable, request: inference_pb2.MultiInferenceRequest
) -> inference_pb2.MultiInferenceResponse:
    return run_inline(multi_inference(servable, request, _INLINE, RequestContext("warmup", "multi_inference")))
