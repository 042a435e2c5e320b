"""Model and monitoring config files: parsed with TF Serving's own protos, validated into plain data.

`parse_model_config_text` / `load_model_config_file` accept exactly what tensorflow_model_server
accepts in `--model_config_file` (a ModelServerConfig text proto with a `model_config_list`);
`model_configs_from_proto` turns it into `ModelConfig` records and rejects what cannot be served
with a message naming the model and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from modelserver.config.files import ConfigError, read_text
from modelserver.config.protos import MonitoringConfig
from modelserver.config.storage_uri import parse as parse_storage_uri
from modelserver.contract import METRICS_PATH


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()


LATEST_1 = VersionPolicy("latest", 1)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = LATEST_1
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = "tensorflow"


def parse_error_text(message: Any, exc: text_format.ParseError, source: str) -> str:
    """A text proto parse error as tensorflow_model_server reports it: the protobuf library's
    `Error parsing text-format <type>: <line>:<column>: <detail>`, then the file."""
    return (f"Error parsing text-format {message.DESCRIPTOR.full_name}: {exc}\n"
            f"Invalid protobuf file: '{source}'")


def parse_text_proto(text: str, message: Any, source: str) -> Any:
    """Parses `text` into `message` (a new message instance); ConfigError as TF Serving words it."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ConfigError(parse_error_text(message, exc, source)) from None
    return message


def parse_model_config_text(text: str, source: str = "model config") -> model_server_config_pb2.ModelServerConfig:
    return parse_text_proto(text, model_server_config_pb2.ModelServerConfig(), source)  # type: ignore[no-any-return]


def load_model_config_file(path: str | Path) -> list[ModelConfig]:
    text = read_text(path, "model config file")
    return model_configs_from_proto(parse_model_config_text(text, str(path)))


def model_configs_from_proto(cfg: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    kind = cfg.WhichOneof("config")
    if kind == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    out: list[ModelConfig] = []
    seen: set[str] = set()
    for mc in cfg.model_config_list.config:
        out.append(model_config_from_proto(mc))
        if mc.name in seen:
            raise ConfigError(f"model name {mc.name!r} appears more than once in the model config")
        seen.add(mc.name)
    return out


def model_config_from_proto(mc: model_server_config_pb2.ModelConfig) -> ModelConfig:
    if not mc.name:
        raise ConfigError("a model config has an empty name")
    if not mc.base_path:
        raise ConfigError(f"model {mc.name!r}: base_path is empty")
    platform = mc.model_platform or "tensorflow"
    if platform != "tensorflow":
        raise ConfigError(f"model {mc.name!r}: model_platform {platform!r} is not supported (only 'tensorflow')")
    if mc.model_type not in (0, 1):  # MODEL_TYPE_UNSPECIFIED or TENSORFLOW (deprecated field)
        raise ConfigError(f"model {mc.name!r}: model_type {mc.model_type} is not supported")
    labels: dict[str, int] = {}
    for key, ver in mc.version_labels.items():
        if not key:
            raise ConfigError(f"model {mc.name!r}: empty version label")
        if ver <= 0:
            raise ConfigError(f"model {mc.name!r}: label {key!r} points to invalid version {ver}")
        labels[key] = int(ver)
    _check_base_path(mc.name, mc.base_path)
    return ModelConfig(mc.name, mc.base_path, policy_from_proto(mc), labels, platform)


def _check_base_path(name: str, base_path: str) -> None:
    """An object-storage base path must be one of the forms the server reads (storage_uri)."""
    try:
        parse_storage_uri(base_path)
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def policy_from_proto(mc: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    pol = mc.model_version_policy
    which = pol.WhichOneof("policy_choice")
    if which is None:
        return LATEST_1
    if which == "latest":
        n = pol.latest.num_versions or 1
        if n < 0:
            raise ConfigError(f"model {mc.name!r}: latest.num_versions must be positive")
        return VersionPolicy("latest", n)
    if which == "all":
        return VersionPolicy("all")
    versions = tuple(sorted(set(pol.specific.versions)))
    if not versions:
        raise ConfigError(f"model {mc.name!r}: specific version policy lists no versions")
    if any(v < 0 for v in versions):
        raise ConfigError(f"model {mc.name!r}: specific versions must be non-negative")
    return VersionPolicy("specific", versions=versions)


def single_model_config(name: str, base_path: str) -> list[ModelConfig]:
    if not base_path:
        raise ConfigError("--model_base_path is required (or --model_config_file)")
    _check_base_path(name or "default", base_path)
    return [ModelConfig(name or "default", base_path)]


# ---- monitoring config ---------------------------------------------------------------------------

def load_monitoring_config(path: str | Path) -> Any:
    """Parses `--monitoring_config_file` (MonitoringConfig text proto); the metrics module serves it."""
    p = Path(path)
    cfg = parse_text_proto(read_text(p, "monitoring config file"), MonitoringConfig(), str(p))
    if cfg.prometheus_config.enable:
        path_ = cfg.prometheus_config.path or METRICS_PATH
        if not path_.startswith("/"):
            raise ConfigError(f"{p}: prometheus_config.path must start with '/': {path_!r}")
    return cfg
