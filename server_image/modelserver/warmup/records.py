"""Warmup files on disk: TF Serving's `<version>/assets.extra/tf_serving_warmup_requests`.

The file is a TFRecord of `tensorflow.serving.PredictionLog`. `read_records` and `parse_logs` read
it as TF Serving does (CRCs checked; more than 1000 records is INVALID_ARGUMENT, a damaged file
DATA_LOSS, a record that is not a PredictionLog INVALID_ARGUMENT); `write_records` and
`predict_log` make one (the `model-server-warmup` command, tests, the demo models).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from modelserver.core.errors import ServingError
from modelserver.core.tensors import to_tensor_proto

ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving's kMaxNumRecords


def warmup_file(version_dir: str | Path) -> Path:
    return Path(version_dir) / ASSETS_EXTRA / WARMUP_FILE


def read_records(path: Path) -> list[bytes]:
    """The raw records of a TFRecord file (TensorFlow's reader, CRCs checked)."""
    records: list[bytes] = []
    try:
        for rec in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append(bytes(rec))
            if len(records) > MAX_RECORDS:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}",
                )
    except tf.errors.OpError as e:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Error reading warmup data {path}: {e.message}") from None
    return records


def parse_logs(records: Sequence[bytes], path: Path) -> list[Any]:
    logs = []
    for i, rec in enumerate(records):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(rec)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError (varies by backend)
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Warmup record {i} in {path} is not a PredictionLog") from None
        logs.append(log)
    return logs


def write_records(path: str | Path, logs: Iterable[Any]) -> Path:
    """Writes PredictionLogs as a TFRecord file (creating assets.extra/ as needed)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(out)) as w:
        for log in logs:
            w.write(log.SerializeToString())
    return out


def predict_log(inputs: dict[str, np.ndarray], model_name: str = "", signature_name: str = "") -> Any:
    """A PredictionLog holding a PredictRequest for these inputs."""
    log = prediction_log_pb2.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = model_name
    if signature_name:
        req.model_spec.signature_name = signature_name
    for name, arr in inputs.items():
        req.inputs[name].CopyFrom(to_tensor_proto(arr, as_content=True))
    return log
