"""Models → versions, with TF Serving's version states, policies, labels and reloads.

Decisions are pure functions (`aspired_versions`, `label_error`, `versions_to_unload`); the
Manager applies them: it loads versions off the event loop (START → LOADING → AVAILABLE, or END
with an error status), calls the `on_version_loaded` hook before a version becomes AVAILABLE,
swaps new versions in before old ones go (UNLOADING → END), and resolves ModelSpecs.
A failed load only marks that version; the server keeps serving everything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from modelserver.config.model_config import ModelConfig, VersionPolicy
from modelserver.core.errors import ServingError, failed_precondition, invalid_argument, not_found
from modelserver.core.routing import EMPTY, ModelRoute, RoutingTable, choose
from modelserver.core.servable import Servable, SessionOptions, load_servable

log = logging.getLogger("modelserver.core.manager")

# TF Serving's ModelVersionStatus.State values
UNKNOWN, START, LOADING, AVAILABLE, UNLOADING, END = 0, 10, 20, 30, 40, 50
STATE_NAMES = {UNKNOWN: "UNKNOWN", START: "START", LOADING: "LOADING", AVAILABLE: "AVAILABLE",
               UNLOADING: "UNLOADING", END: "END"}

LoadHook = Callable[[Servable, Path], None]


@dataclass(slots=True)
class VersionRecord:
    version: int
    state: int = START
    error: ServingError | None = None
    servable: Servable | None = None
    attempts: int = 0  # failed or current load attempts
    retry_at: float = 0.0  # time.monotonic() after which a failed load may be retried
    path: Path | None = None  # the version's directory, as named on disk (e.g. <base>/00000123)
    warmup: Any = None  # what the load hook returned (warmup.WarmupResult), shown by the admin API


@dataclass(slots=True)
class ModelRecord:
    config: ModelConfig
    versions: dict[int, VersionRecord] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    latest: Servable | None = None  # highest AVAILABLE version (hot path)
    warned_no_versions: bool = False  # logged once until versions appear
    warned_clashes: dict[int, list[str]] = field(default_factory=dict)  # logged once per change
    route: ModelRoute | None = None  # set by a routing table, which then owns the labels
    aspired: set[int] = field(default_factory=set)  # what the policy wanted at the last poll


# ---- pure decisions ------------------------------------------------------------------------------


def aspired_versions(policy: VersionPolicy, on_disk: list[int]) -> set[int]:
    """The versions the policy wants served, out of those present on disk."""
    ordered = sorted(on_disk)
    if policy.kind == "all":
        return set(ordered)
    if policy.kind == "specific":
        return {v for v in ordered if v in policy.versions}
    return set(ordered[-policy.num_versions:]) if ordered else set()


def versions_to_unload(loaded: set[int], aspired: set[int], available_aspired: set[int]) -> set[int]:
    """Loaded versions the policy drops; while no aspired version is AVAILABLE, the newest loaded
    one is kept (availability preserving: a failed new version never leaves the model empty)."""
    drop = loaded - aspired
    if drop and not available_aspired:
        drop.discard(max(drop))
    return drop


def label_error(model: str, new: dict[str, int], current: dict[str, int], available: set[int],
                allow_unavailable: bool) -> ServingError | None:
    """TF Serving's label rule: a label may point only at an AVAILABLE version; with
    --allow_version_labels_for_unavailable_models, a label not yet assigned may point anywhere."""
    for label, version in sorted(new.items()):
        if version in available:
            continue
        is_new_or_same = label not in current or current[label] == version
        if allow_unavailable and is_new_or_same:
            continue
        return failed_precondition(
            f"Request to assign label to version {version} of model {model}, which is not currently "
            f"available for inference"
        )
    return None


def retry_due(attempts: int, max_retries: int, retry_at: float, now: float) -> bool:
    """A failed load is retried (on a later poll) up to max_retries times, retry_at apart."""
    return attempts <= max_retries and now >= retry_at


INT64_MAX = 2**63 - 1


def version_dirs(names: list[str]) -> tuple[dict[int, str], dict[int, list[str]]]:
    """Version directories among `names`, as TF Serving reads them: a directory whose whole name
    is a decimal number is that version, leading zeros ignored (`00000123` is 123). Returns
    version -> directory name, and the versions named by more than one directory with all their
    names. Of those, the canonical name (`123`) wins, else the shortest, then the first in sort
    order, so the choice never depends on listing order."""
    found: dict[int, list[str]] = {}
    for n in names:
        if n.isascii() and n.isdigit() and int(n) <= INT64_MAX:
            found.setdefault(int(n), []).append(n)
    chosen = {}
    clashes = {}
    for v, dirs in found.items():
        dirs.sort(key=lambda d: (d != str(v), len(d), d))
        chosen[v] = dirs[0]
        if len(dirs) > 1:
            clashes[v] = dirs
    return chosen, clashes


def list_versions(base_path: str) -> tuple[dict[int, str], dict[int, list[str]]]:
    """The version directories of base_path that hold a SavedModel: version -> path, and the
    clashes of `version_dirs` (versions named by several such directories)."""
    try:
        entries = os.listdir(base_path)
    except OSError:
        return {}, {}
    with_model = [e for e in entries if os.path.exists(os.path.join(base_path, e, "saved_model.pb"))
                  or os.path.exists(os.path.join(base_path, e, "saved_model.pbtxt"))]
    chosen, clashes = version_dirs(with_model)
    return {v: os.path.join(base_path, d) for v, d in chosen.items()}, clashes


# ---- the manager ---------------------------------------------------------------------------------


class Manager:
    def __init__(
        self,
        load_executor: Executor,
        *,
        allow_unavailable_labels: bool = False,
        max_num_load_retries: int = 5,
        load_retry_interval_s: float = 60.0,
        on_version_loaded: LoadHook | None = None,
        tags: tuple[str, ...] = ("serve",),
        session_options: SessionOptions | None = None,
    ) -> None:
        self._tags = tags
        self._session_options = session_options
        self.models: dict[str, ModelRecord] = {}
        self.on_version_loaded = on_version_loaded
        self._executor = load_executor
        self._allow_unavailable_labels = allow_unavailable_labels
        self._retries = max(0, max_num_load_retries)
        self._retry_interval = load_retry_interval_s
        self._configured = False  # the first reload (versions and labels) has been applied
        self._lock = asyncio.Lock()
        self.routing: RoutingTable = EMPTY  # the routing table in force
        self.routing_required = False  # --routing_config_file: not ready until a table is in force

    # -- queries (hot path: plain dict lookups) --

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        rec = self.models.get(name)
        if label:
            if rec is None or label not in rec.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = rec.labels[label]
        if version is None:
            if rec is None or rec.latest is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            return rec.latest
        vr = rec.versions.get(version) if rec is not None else None
        if vr is None or vr.state != AVAILABLE or vr.servable is None:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return vr.servable

    def resolve_unlabelled(self, name: str, route_key: bytes | None = None) -> tuple[Servable, str | None]:
        """A request naming neither version nor label: split across labels by the model's route
        (the chosen label is returned), else the latest version as in TF Serving. A chosen label
        whose version cannot serve falls back to the others, heaviest first, then the latest."""
        rec = self.models.get(name)
        route = rec.route if rec is not None else None
        if route is None or not route.total:
            return self.resolve(name), None
        label = choose(route, route_key)
        for candidate in (label, *(lbl for lbl, _ in sorted(route.weights, key=lambda w: -w[1]))):
            vr = rec.versions.get(rec.labels.get(candidate, -1)) if rec is not None else None  # type: ignore[arg-type]
            if vr is not None and vr.state == AVAILABLE and vr.servable is not None:
                return vr.servable, candidate
        return self.resolve(name), None

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionRecord]:
        rec = self.models.get(name)
        if label:
            if rec is None or label not in rec.labels:
                raise invalid_argument(f"Unrecognized servable version label: {label}")
            version = rec.labels[label]
        if rec is None or not rec.versions:
            raise not_found(f"Could not find any versions of model {name}")
        if version is None:
            return [rec.versions[v] for v in sorted(rec.versions, reverse=True)]
        if version not in rec.versions:
            raise not_found(f"Could not find version {version} of model {name}")
        return [rec.versions[version]]

    def is_ready(self) -> bool:
        """Every configured model has an AVAILABLE version, and the initial config is applied in
        full (its other versions loaded or failed, its labels set), so labelled requests work."""
        return (self._configured and bool(self.models) and all(r.latest is not None for r in self.models.values())
                and not self.routing_pending())

    def routing_pending(self) -> bool:
        """A routing file is configured and no table is in force yet (its labels wait on a version)."""
        return self.routing_required and self.routing is EMPTY

    def not_ready_models(self) -> list[str]:
        return sorted(n for n, r in self.models.items() if r.latest is None or not self._configured
                      and any(v.state in (START, LOADING) for v in r.versions.values()))

    # -- changes --

    async def reload(self, configs: list[ModelConfig]) -> None:
        """Applies a new model list: adds and removes models, applies policies (loads finish
        before this returns), then labels. A label error is raised after the models are updated."""
        try:
            await self._reload(configs)
        finally:
            self._configured = True

    def apply_routing(self, table: RoutingTable) -> None:
        """Puts a routing table in force, all of it or nothing: an older generation is ABORTED,
        a model not served is NOT_FOUND, a label on a version that is not AVAILABLE is TF Serving's
        FAILED_PRECONDITION. Synchronous, so every request sees the old labels and weights or the
        new ones, never a mix. Models routed before and absent now lose their split (their labels
        stay until the model config sets them)."""
        if table.generation < self.routing.generation:
            raise ServingError(grpc.StatusCode.ABORTED, f"routing table generation {table.generation} is older "
                               f"than the one in force ({self.routing.generation})")
        for name, route in sorted(table.models.items()):
            rec = self.models.get(name)
            if rec is None:
                raise not_found(f"routing table names model {name}, which is not served")
            err = label_error(name, dict(route.labels), rec.labels, self._available(rec),
                              self._allow_unavailable_labels)
            if err is not None:
                raise err
        for name, rec in self.models.items():
            new_route = table.models.get(name)
            if new_route is not None:
                rec.labels = dict(new_route.labels)
            rec.route = new_route
            self._drop_unneeded(rec)  # versions whose last label just moved away
        self.routing = table

    async def _reload(self, configs: list[ModelConfig]) -> None:
        async with self._lock:
            wanted = {c.name: c for c in configs}
            for name in list(self.models):
                old = self.models[name]
                if name not in wanted or wanted[name].base_path != old.config.base_path:
                    await self._unload_all(self.models.pop(name))
            for name, cfg in wanted.items():
                rec = self.models.setdefault(name, ModelRecord(cfg))
                rec.config = cfg
            await asyncio.gather(*(self._apply(self.models[n]) for n in wanted))
            errors = []
            for name, cfg in wanted.items():
                rec = self.models[name]
                if rec.route is not None:
                    continue  # the routing table owns this model's labels
                err = label_error(name, cfg.labels, rec.labels, self._available(rec), self._allow_unavailable_labels)
                if err is None:
                    rec.labels = dict(cfg.labels)
                    self._drop_unneeded(rec)
                else:
                    errors.append(err)
            if errors:
                raise errors[0]

    async def poll(self) -> None:
        """One file-system poll: loads new versions, then unloads what the policies drop."""
        async with self._lock:
            await asyncio.gather(*(self._apply(r) for r in list(self.models.values())))

    async def stop(self) -> None:
        async with self._lock:
            for rec in self.models.values():
                await self._unload_all(rec)

    # -- internals --

    @staticmethod
    def _available(rec: ModelRecord) -> set[int]:
        return {v for v, r in rec.versions.items() if r.state == AVAILABLE}

    async def _apply(self, rec: ModelRecord) -> None:
        paths, clashes = await asyncio.get_running_loop().run_in_executor(
            self._executor, list_versions, rec.config.base_path
        )
        if not paths and not rec.warned_no_versions:
            log.warning("No versions of servable %s found under base path %s. Did you forget to name "
                        "your leaf directory as a number (eg. '/1/')?", rec.config.name, rec.config.base_path)
        rec.warned_no_versions = not paths
        if clashes != rec.warned_clashes:
            for v, dirs in sorted(clashes.items()):
                log.warning("model %s: directories %s under %s all name version %d; serving %s",
                            rec.config.name, ", ".join(dirs), rec.config.base_path, v, dirs[0])
            rec.warned_clashes = clashes
        on_disk = list(paths)
        aspired = aspired_versions(rec.config.policy, on_disk)
        now = time.monotonic()
        tried = {v for v, r in rec.versions.items() if r.state in (START, LOADING, AVAILABLE)
                 or (r.error is not None and not retry_due(r.attempts, self._retries, r.retry_at, now))}
        new = sorted(aspired - tried)
        if new:
            await asyncio.gather(*(self._load(rec, v, Path(paths[v])) for v in new))
        rec.aspired = aspired
        self._drop_unneeded(rec)

    def _drop_unneeded(self, rec: ModelRecord) -> None:
        """Unloads the versions the policy drops, except one a label still points at (it goes once
        the label moves: a request naming the label never finds its version gone)."""
        loaded = self._available(rec)
        labelled = set(rec.labels.values())
        for v in sorted(versions_to_unload(loaded, rec.aspired, loaded & rec.aspired) - labelled):
            self._unload(rec, v)

    async def _load(self, rec: ModelRecord, version: int, version_dir: Path) -> None:
        name = rec.config.name
        old = rec.versions.get(version)
        vr = VersionRecord(version, START, attempts=old.attempts if old and old.error else 0, path=version_dir)
        rec.versions[version] = vr
        vr.state = LOADING
        vr.attempts += 1
        try:
            servable, vr.warmup = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._load_and_warm, name, version, version_dir)
        except Exception as exc:  # any load failure is reported in the version's status
            vr.error = exc if isinstance(exc, ServingError) else ServingError(
                grpc.StatusCode.UNKNOWN, f"Failed to load {name} version {version}: {exc}")
            vr.state = END
            vr.retry_at = time.monotonic() + self._retry_interval
            left = self._retries + 1 - vr.attempts
            log.error("loading %s version %d failed (%s): %s", name, version,
                      f"{left} retries left, next in {self._retry_interval:g}s" if left > 0 else "giving up",
                      vr.error.message)
            return
        vr.servable, vr.state = servable, AVAILABLE
        self._refresh_latest(rec)
        log.info("model %s version %d AVAILABLE", name, version)

    def _load_blocking(self, name: str, version: int, version_dir: Path) -> Servable:
        return load_servable(name, version, version_dir, self._tags, self._session_options)

    def _load_and_warm(self, name: str, version: int, version_dir: Path) -> tuple[Servable, Any]:
        servable = self._load_blocking(name, version, version_dir)
        hooked = self.on_version_loaded(servable, version_dir) if self.on_version_loaded is not None else None
        return servable, hooked

    def _unload(self, rec: ModelRecord, version: int) -> None:
        vr = rec.versions[version]
        vr.state = UNLOADING
        vr.servable = None  # in-flight requests keep their own reference until they finish
        self._refresh_latest(rec)
        vr.state = END
        log.info("model %s version %d unloaded", rec.config.name, version)

    async def _unload_all(self, rec: ModelRecord) -> None:
        for v in sorted(self._available(rec)):
            self._unload(rec, v)

    @staticmethod
    def _refresh_latest(rec: ModelRecord) -> None:
        avail = [r for r in rec.versions.values() if r.state == AVAILABLE and r.servable is not None]
        rec.latest = max(avail, key=lambda r: r.version).servable if avail else None
