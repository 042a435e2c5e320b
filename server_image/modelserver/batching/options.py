"""The batching parameters file: TF Serving's `--batching_parameters_file` (a text-format
`BatchingParameters`), parsed and validated into `BatchingOptions` with TF Serving's defaults.

Everything here is pure: `parse_batching_parameters(text)` and `validate_options(options)` take
plain data and return it, or raise BatchingConfigError with a message that says what to fix;
`load_batching_parameters(path)` reads the file first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, text_format, wrappers_pb2
from google.protobuf import message_factory as _message_factory

from modelserver.config.files import ConfigError, read_text

# The BatchingParameters text proto. tensorflow-serving-api does not ship
# session_bundle_config_pb2, so the message is declared here with TF Serving's field names and
# numbers (tensorflow_serving/servables/tensorflow/session_bundle_config.proto).

_PROTO_PACKAGE = "modelserver.tfs"
_FIELDS: list[tuple[str, int, str, bool]] = [  # name, number, type ("." + wrapper | scalar), repeated
    ("max_batch_size", 1, ".google.protobuf.Int64Value", False),
    ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False),
    ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False),
    ("num_batch_threads", 4, ".google.protobuf.Int64Value", False),
    ("thread_pool_name", 5, ".google.protobuf.StringValue", False),
    ("allowed_batch_sizes", 6, "int64", True),
    ("pad_variable_length_inputs", 7, "bool", False),
    ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue", False),
    ("max_execution_batch_size", 9, ".google.protobuf.Int64Value", False),
]


def _build_message_class() -> Any:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(
        name="modelserver/batching_parameters.proto",
        package=_PROTO_PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = f.message_type.add(name="BatchingParameters")
    scalar = {"int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
              "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL}
    for name, number, typ, repeated in _FIELDS:
        fd = msg.field.add(name=name, number=number)
        fd.label = (descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if repeated
                    else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
        if typ.startswith("."):
            fd.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
            fd.type_name = typ
        else:
            fd.type = scalar[typ]
    pool.Add(f)
    return _message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PROTO_PACKAGE}.BatchingParameters"))


BatchingParametersProto = _build_message_class()


@dataclass(frozen=True, slots=True)
class BatchingOptions:
    """Validated batching parameters, with TF Serving's defaults (BasicBatchScheduler::Options)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: same as max_batch_size

    @property
    def execution_batch_size(self) -> int:
        """The largest batch the model runs."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


class BatchingConfigError(ConfigError):
    """A batching parameters file that cannot be used (the server refuses to start)."""


def parse_batching_parameters(text: str) -> BatchingOptions:
    """Parses and validates a `batching_parameters` text proto (TF Serving's format)."""
    msg = BatchingParametersProto()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise BatchingConfigError(f"Error parsing text-format {msg.DESCRIPTOR.full_name}: {e}\n"
                                  "invalid batching parameters") from None
    values: dict[str, Any] = {}
    for name, _num, typ, repeated in _FIELDS:
        if repeated:
            values[name] = tuple(getattr(msg, name))
        elif typ.startswith("."):
            if msg.HasField(name):
                values[name] = getattr(msg, name).value
        else:
            values[name] = getattr(msg, name)
    return validate_options(BatchingOptions(**values))


def load_batching_parameters(path: str | Path | None) -> BatchingOptions:
    """Reads `--batching_parameters_file` (None or "" gives the defaults)."""
    if not path:
        return validate_options(BatchingOptions())
    return parse_batching_parameters(read_text(path, "batching parameters file", BatchingConfigError))


def validate_options(o: BatchingOptions) -> BatchingOptions:
    """TF Serving's checks, with messages that say what to fix."""
    if o.max_batch_size < 1:
        raise BatchingConfigError(f"max_batch_size must be positive; was {o.max_batch_size}")
    if o.batch_timeout_micros < 0:
        raise BatchingConfigError(f"batch_timeout_micros must be non-negative; was {o.batch_timeout_micros}")
    if o.max_enqueued_batches < 1:
        raise BatchingConfigError(f"max_enqueued_batches must be positive; was {o.max_enqueued_batches}")
    if o.num_batch_threads < 1:
        raise BatchingConfigError(f"num_batch_threads must be positive; was {o.num_batch_threads}")
    if o.max_execution_batch_size < 0:
        raise BatchingConfigError(
            f"max_execution_batch_size must be positive; was {o.max_execution_batch_size}")
    if o.enable_large_batch_splitting and o.max_execution_batch_size > o.max_batch_size:
        raise BatchingConfigError(
            f"max_execution_batch_size ({o.max_execution_batch_size}) must not exceed "
            f"max_batch_size ({o.max_batch_size})")
    sizes = o.allowed_batch_sizes
    if sizes:
        if any(s < 1 for s in sizes):
            raise BatchingConfigError(f"allowed_batch_sizes must be positive; was {list(sizes)}")
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise BatchingConfigError(f"allowed_batch_sizes entries must be monotonically increasing; "
                                      f"was {list(sizes)}")
        limit = o.execution_batch_size
        if sizes[-1] != limit:
            what = ("max_execution_batch_size" if o.enable_large_batch_splitting and o.max_execution_batch_size
                    else "max_batch_size")
            raise BatchingConfigError(f"final entry in allowed_batch_sizes ({sizes[-1]}) must equal "
                                      f"{what} ({limit})")
    return o
