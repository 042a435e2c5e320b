"""TF Serving's protobuf API on the data plane: a PredictRequest, ClassificationRequest,
RegressionRequest, MultiInferenceRequest, GetModelMetadataRequest or GetModelStatusRequest
decoded into DataPlane calls, and the answer encoded as its response message.

The gRPC front end calls these for each RPC; warmup replays PredictionLogs through the `*_sync`
variants with an inline data plane (the loading thread runs the model itself).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from modelserver.core.dataplane import DataPlane, ExampleResult, ModelRef
from modelserver.core.errors import invalid_argument
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import InlineRunner, Tensors
from modelserver.core.servable import CLASSIFY_METHOD, Servable, Signature
from modelserver.core.tensors import check_request_bytes, declared_bytes, fill_tensor_proto, to_ndarray

T = TypeVar("T")


def model_ref(spec: Any) -> ModelRef:
    """A ModelSpec as a ModelRef (a version, a label, or neither)."""
    choice = spec.WhichOneof("version_choice")
    return ModelRef(spec.name, version=spec.version.value if choice == "version" else None,
                    label=spec.version_label if choice == "version_label" else None)


def fill_model_spec(spec: Any, servable: Servable, signature_name: str) -> None:
    spec.name = servable.name
    spec.version.value = servable.version
    spec.signature_name = signature_name


# ---- Predict -----------------------------------------------------------------------------------


def predict_inputs(sig: Signature, request: predict_pb2.PredictRequest, max_bytes: int | None = None) -> Tensors:
    """The request's tensors as arrays, once their declared sizes (shapes, broadcast included)
    are known to fit in `max_bytes` together (the server's --max_request_tensor_bytes)."""
    items = request.inputs.items()
    if max_bytes is not None:
        check_request_bytes(sum(declared_bytes(name, proto) for name, proto in items), max_bytes)
    return {name: to_ndarray(name, proto) for name, proto in items}


async def predict(plane: DataPlane, request: predict_pb2.PredictRequest, ctx: RequestContext,
                  servable: Servable | None = None) -> predict_pb2.PredictResponse:
    servable = servable or plane.resolve(model_ref(request.model_spec), ctx)
    sig = servable.signature(request.model_spec.signature_name)
    pred = await plane.predict(servable, sig, predict_inputs(sig, request, plane.max_tensor_bytes), ctx,
                               request.output_filter)
    response = predict_pb2.PredictResponse()
    fill_model_spec(response.model_spec, servable, sig.name)
    outputs = response.outputs
    for name, arr in pred.outputs.items():
        fill_tensor_proto(outputs[name], arr)  # in place: no intermediate message to copy
    return response


# ---- Classify / Regress / MultiInference -------------------------------------------------------


def _fill_result(target: Any, res: ExampleResult) -> None:
    fill_model_spec(target.model_spec, res.servable, res.signature.name)
    target.result.CopyFrom(res.result)


async def classify(plane: DataPlane, request: classification_pb2.ClassificationRequest, ctx: RequestContext,
                   servable: Servable | None = None) -> classification_pb2.ClassificationResponse:
    servable = servable or plane.resolve(model_ref(request.model_spec), ctx)
    res = await plane.classify(servable, request.model_spec.signature_name, request.input, ctx)
    response = classification_pb2.ClassificationResponse()
    _fill_result(response, res)
    return response


async def regress(plane: DataPlane, request: regression_pb2.RegressionRequest, ctx: RequestContext,
                  servable: Servable | None = None) -> regression_pb2.RegressionResponse:
    servable = servable or plane.resolve(model_ref(request.model_spec), ctx)
    res = await plane.regress(servable, request.model_spec.signature_name, request.input, ctx)
    response = regression_pb2.RegressionResponse()
    _fill_result(response, res)
    return response


async def multi_inference(plane: DataPlane, request: inference_pb2.MultiInferenceRequest, ctx: RequestContext,
                          servable: Servable | None = None) -> inference_pb2.MultiInferenceResponse:
    if not request.tasks:
        raise invalid_argument("MultiInferenceRequest must contain at least one task")
    if len({t.model_spec.name for t in request.tasks}) != 1:
        raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    servable = servable or plane.resolve(model_ref(request.tasks[0].model_spec), ctx)
    tasks = [(t.method_name, t.model_spec.signature_name) for t in request.tasks]
    response = inference_pb2.MultiInferenceResponse()
    for res in await plane.multi_inference(servable, tasks, request.input, ctx):
        out = response.results.add()
        fill_model_spec(out.model_spec, res.servable, res.signature.name)
        if res.method == CLASSIFY_METHOD:
            out.classification_result.CopyFrom(res.result)
        else:
            out.regression_result.CopyFrom(res.result)
    return response


# ---- GetModelMetadata / GetModelStatus ----------------------------------------------------------

SIGNATURE_DEF_FIELD = "signature_def"


def get_model_metadata(plane: DataPlane, request: get_model_metadata_pb2.GetModelMetadataRequest,
                       ctx: RequestContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {f} is not supported")
    servable, sdm = plane.metadata(model_ref(request.model_spec), ctx)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(sdm)
    return response


def get_model_status(plane: DataPlane, request: get_model_status_pb2.GetModelStatusRequest,
                     ctx: RequestContext) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for r in plane.status(model_ref(request.model_spec), ctx):
        mvs = response.model_version_status.add()
        mvs.version = r.version
        mvs.state = r.state
        mvs.status.SetInParent()
        if r.error is not None:
            mvs.status.error_code = r.error.code.value[0]
            mvs.status.error_message = r.error.message
    return response


# ---- synchronous variants (warmup replay: already on the loading thread) -----------------------


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Drives a coroutine that never suspends (InlineRunner) to completion on this thread."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("coroutine suspended; use InlineRunner")


_INLINE = DataPlane(None, lambda _model: InlineRunner())


def predict_sync(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    return run_inline(predict(_INLINE, request, RequestContext("warmup", "predict"), servable))


def classify_sync(servable: Servable, request: classification_pb2.ClassificationRequest
                  ) -> classification_pb2.ClassificationResponse:
    return run_inline(classify(_INLINE, request, RequestContext("warmup", "classify"), servable))


def regress_sync(servable: Servable, request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    return run_inline(regress(_INLINE, request, RequestContext("warmup", "regress"), servable))


def multi_inference_sync(servable: Servable, request: inference_pb2.MultiInferenceRequest
                         ) -> inference_pb2.MultiInferenceResponse:
    return run_inline(multi_inference(_INLINE, request, RequestContext("warmup", "multi_inference"), servable))
