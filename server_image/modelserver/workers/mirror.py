"""The model process's versions, labels, routing and readiness, as the workers see them.

The model process builds a `snapshot` (pickled: it changes only when a version loads or unloads,
a label or a routing table changes, or readiness does) and pushes it to every worker at once; the
worker's `MirrorManager` answers the data plane's queries (resolve, the traffic split, status,
metadata, readiness) from the last one, as plain dict lookups, exactly as the Manager does in a
single process. Servables are mirrored with their signatures and SignatureDef map but no
TensorFlow objects: their calls go to the model process (`frontend.RemoteRunner`).
"""

from __future__ import annotations

import pickle
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from modelserver.config.model_config import ModelConfig
from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager, ModelRecord, VersionRecord
from modelserver.core.routing import RoutingTable
from modelserver.core.servable import Servable, Signature


@dataclass(frozen=True, slots=True)
class _Version:
    version: int
    state: int
    error: tuple[str, str] | None
    servable: Servable | None


@dataclass(frozen=True, slots=True)
class _Model:
    config: ModelConfig
    labels: dict[str, int]
    route: Any
    versions: tuple[_Version, ...]
    storage_error: tuple[str, str] | None
    pending: dict[int, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: dict[str, _Model]
    routing: RoutingTable
    routing_required: bool
    ready: bool
    not_ready: list[str]
    draining: bool


def _error(err: ServingError | None) -> tuple[str, str] | None:
    return None if err is None else (err.code.name, err.message)


def _as_error(e: tuple[str, str] | None) -> ServingError | None:
    return None if e is None else ServingError(grpc.StatusCode[e[0]], e[1])


class Snapshots:
    """Builds snapshots of a Manager; a servable's mirror is built once per loaded version."""

    def __init__(self) -> None:
        self._lite: dict[int, tuple[Servable, Servable]] = {}  # id(servable) -> (servable, its mirror)

    def fingerprint(self, manager: Manager, draining: bool) -> tuple[Any, ...]:
        """Changes whenever anything a snapshot holds does (cheap: identities and states)."""
        return (draining, manager.is_ready(), manager.routing.generation, tuple(
            (name, id(rec.config), id(rec.route), tuple(rec.labels.items()), id(rec.storage_error), len(rec.pending),
             tuple((v, vr.state, id(vr.servable), id(vr.error)) for v, vr in rec.versions.items()))
            for name, rec in manager.models.items()))

    def build(self, manager: Manager, draining: bool) -> bytes:
        live: dict[int, tuple[Servable, Servable]] = {}
        models = {}
        for name, rec in manager.models.items():
            versions = []
            for v, vr in sorted(rec.versions.items()):
                mirror = None
                if vr.servable is not None:
                    pair = self._lite.get(id(vr.servable))
                    if pair is None or pair[0] is not vr.servable:
                        pair = (vr.servable, _lite(vr.servable))
                    live[id(vr.servable)] = pair
                    mirror = pair[1]
                versions.append(_Version(v, vr.state, _error(vr.error), mirror))
            models[name] = _Model(rec.config, dict(rec.labels), rec.route, tuple(versions),
                                  _error(rec.storage_error), dict(rec.pending))
        self._lite = live
        snap = Snapshot(models, manager.routing, manager.routing_required, manager.is_ready(),
                        manager.not_ready_models(), draining)
        return pickle.dumps(snap, protocol=pickle.HIGHEST_PROTOCOL)


def _lite(s: Servable) -> Servable:
    from tensorflow_serving.apis import get_model_metadata_pb2

    sdm = get_model_metadata_pb2.SignatureDefMap()
    for k, v in s.signature_defs.items():
        sdm.signature_def[k].CopyFrom(v)
    sigs = {n: Signature(g.name, g.method_name, g.inputs, g.outputs, fn=_remote, input_names_text=g.input_names_text)
            for n, g in s.signatures.items()}
    return Servable(s.name, s.version, s.path, sigs, sdm.SerializeToString())


def _remote(inputs: Any) -> Any:
    raise AssertionError("a mirrored signature runs in the model process")  # RemoteRunner never calls it


def _unpack_servable(s: Servable) -> Servable:
    from tensorflow_serving.apis import get_model_metadata_pb2

    sdm = get_model_metadata_pb2.SignatureDefMap.FromString(s.signature_defs)
    s.loaded = sdm  # keeps the message alive for its map
    s.signature_defs = sdm.signature_def
    return s


Forward = Callable[[str, Any], Awaitable[Any]]


class MirrorManager(Manager):
    """A worker's read-only Manager: the model process's last snapshot. A reload (the gRPC
    ReloadConfig RPC) is forwarded to the model process; loading happens there only."""

    def __init__(self, forward: Forward) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # never loads
        self._forward = forward
        self._ready = False
        self._not_ready: list[str] = []
        self.linked = True  # False once the model process is gone: never ready again

    def apply(self, data: bytes) -> None:
        snap: Snapshot = pickle.loads(data)  # noqa: S301 - from the model process, over its own socket
        models: dict[str, ModelRecord] = {}
        for name, m in snap.models.items():
            rec = ModelRecord(m.config, labels=m.labels, route=m.route, pending=m.pending,
                              storage_error=_as_error(m.storage_error))
            for v in m.versions:
                servable = _unpack_servable(v.servable) if v.servable is not None else None
                rec.versions[v.version] = VersionRecord(v.version, v.state, _as_error(v.error), servable)
            self._refresh_latest(rec)
            models[name] = rec
        self.models = models
        self.routing = snap.routing
        self.routing_required = snap.routing_required
        self._ready = snap.ready
        self._not_ready = snap.not_ready
        self._configured = True

    def is_ready(self) -> bool:
        return self.linked and self._ready

    def not_ready_models(self) -> list[str]:
        return list(self._not_ready)

    async def reload(self, configs: list[ModelConfig]) -> None:
        await self._forward("reload", configs)

    async def poll(self) -> None:  # the model process polls
        return None

    async def stop(self) -> None:
        return None
