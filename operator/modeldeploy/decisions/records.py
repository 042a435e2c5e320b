"""The records the I/O layer fills in and the decisions read: what the model servers said about
their versions (`VersionReport`, `PodReport`), where their admin ports are (`Endpoint`), and what
a routing push did (`PushResult`). Plain frozen data, no behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VersionReport:
    state: str
    message: str = ""
    labels: tuple[str, ...] = ()  # the labels the server resolves to this version
    warmup: dict[str, Any] | None = None  # what the server replayed before AVAILABLE (admin port report)
    source: str = ""  # storage.uri: where the version was downloaded from
    download: dict[str, Any] | None = None  # storage.uri: {seconds, bytes, cached} (the slowest pod's)


@dataclass(frozen=True, slots=True)
class PodReport:
    """What one ready pod's admin port said (GET /v1/admin/models), or why it said nothing."""

    pod: str
    versions: Mapping[int, str] = field(default_factory=dict)  # version -> AVAILABLE | LOADING | END ...
    errors: Mapping[int, str] = field(default_factory=dict)  # version -> the load error
    generation: int = -1  # the routing generation in force on the pod
    unreachable: str = ""  # why it could not be asked
    labels: Mapping[str, int] = field(default_factory=dict)  # where its labels point now
    warmup: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # version -> the server's warmup report
    token_refused: bool = False  # it answered 401: its mounted token is not the one the operator derives
    downloads: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)  # version -> {source, download}
    store_error: str = ""  # storage.uri: why the server's last listing of the store failed


@dataclass(frozen=True, slots=True)
class Endpoint:
    pod: str
    url: str  # http://<address>:<admin port>


@dataclass(frozen=True, slots=True)
class PushResult:
    pod: str
    generation: int  # in force on the pod after the push (-1: unknown)
    error: str = ""
