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
from modelserver.core.storage import (
    Fetched,
    RemoteStorage,
    StoreError,
    VersionListing,
    default_storage,
    fetch_backoff,
    is_remote,
    redact,
    serving_error,
)
from modelserver.core.storage.listing import version_dirs

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
    source: str = ""  # where an object-storage version came from (its URI)
    download: Fetched | None = None  # how its download went (time, bytes, found in the cache)
    fetch_failures: int = 0  # downloads that failed in a row (retried with back-off, without limit)


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
    storage_error: ServingError | None = None  # why the last listing of a remote base path failed
    pending: dict[int, str] = field(default_factory=dict)  # remote versions not taken yet, and why


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
        storage: RemoteStorage | None = None,
    ) -> None:
        self.storage = storage  # object-storage base paths (None: local ones only)
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
        self.on_change: Callable[[], None] | None = None  # versions or labels changed (workers/pool.py)

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
        if rec is not None and not rec.versions and rec.storage_error is not None:
            err = rec.storage_error
            raise ServingError(err.code, f"Could not find any versions of model {name}: {err.message}")
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
            self._changed()

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
        self._changed()

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
            await self._evict()
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
            await self._evict()

    async def stop(self) -> None:
        async with self._lock:
            for rec in self.models.values():
                await self._unload_all(rec)
            if self.storage is not None:
                await self.storage.close()

    # -- internals --

    @staticmethod
    def _available(rec: ModelRecord) -> set[int]:
        return {v for v, r in rec.versions.items() if r.state == AVAILABLE}

    async def _apply(self, rec: ModelRecord) -> None:
        listings: dict[int, VersionListing] = {}
        if is_remote(rec.config.base_path):
            found = await self._scan(rec)
            if found is None:
                return  # the store cannot be listed now: what is loaded keeps serving
            paths: dict[int, str] = {v: found.ready[v].dirname for v in found.ready}
            listings, clashes = found.ready, found.clashes
        else:
            paths, clashes = await asyncio.get_running_loop().run_in_executor(
                self._executor, list_versions, rec.config.base_path)
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
            await asyncio.gather(*(self._load(rec, v, Path(paths[v]), listings.get(v)) for v in new))
        rec.aspired = aspired
        self._drop_unneeded(rec)

    # -- object storage (core/storage) --

    def _remote(self) -> RemoteStorage:
        if self.storage is None:  # a manager built without one (tests): the default cache directory
            self.storage = default_storage()
        return self.storage

    async def _scan(self, rec: ModelRecord) -> Any:
        """The store's listing of a remote model (storage.Scan), or None when it failed: the model's
        status says why (logged when the reason changes) and nothing is loaded or unloaded."""
        name, base = rec.config.name, rec.config.base_path
        taken = [v for v, r in rec.versions.items() if r.state in (START, LOADING, AVAILABLE)]
        try:
            found = await self._remote().scan(name, base, taken)
        except StoreError as exc:
            err = serving_error(exc)
            if rec.storage_error is None or rec.storage_error.message != err.message:
                log.error("model %s: cannot list the store: %s (retrying at every poll)", name, exc.message)
            rec.storage_error = err
            return None
        if rec.storage_error is not None:
            log.info("model %s: %s can be listed again", name, redact(base))
        rec.storage_error = None
        rec.pending = {v: listing.missing or "listed once; taken at the next poll if its objects stay the same"
                       for v, listing in sorted(found.versions.items()) if v not in found.ready}
        return found

    async def _fetch(self, rec: ModelRecord, vr: VersionRecord, listing: VersionListing) -> bool:
        """Downloads a remote version into the cache (vr.path, vr.download); False (the version
        END with the reason, retried with back-off at a later poll, without limit) when it fails."""
        storage = self._remote()
        vr.source = storage.source(rec.config.base_path, listing)
        try:
            vr.download = await storage.fetch(rec.config.name, rec.config.base_path, listing)
        except StoreError as exc:
            vr.fetch_failures += 1
            wait = fetch_backoff(vr.fetch_failures)
            vr.error = serving_error(exc, f"Failed to download {rec.config.name} version {vr.version}: ")
            vr.state, vr.retry_at = END, time.monotonic() + wait
            log.error("downloading %s version %d failed (retry in %gs): %s", rec.config.name, vr.version, wait,
                      exc.message)
            return False
        vr.path, vr.fetch_failures = vr.download.path, 0
        d = vr.download
        log.info("model %s version %d: %s in %.2fs from %s", rec.config.name, vr.version,
                 "found in the cache" if d.cached else f"downloaded {d.bytes} bytes", d.seconds, vr.source)
        return True

    async def _evict(self) -> None:
        """Cache versions no model serves go, over --model_cache_max_bytes (storage.cache)."""
        if self.storage is None:
            return
        in_use = {r.download.path for rec in self.models.values() for r in rec.versions.values()
                  if r.download is not None and r.state in (START, LOADING, AVAILABLE)}
        await asyncio.get_running_loop().run_in_executor(self._executor, self.storage.evict, in_use)

    def _drop_unneeded(self, rec: ModelRecord) -> None:
        """Unloads the versions the policy drops, except one a label still points at (it goes once
        the label moves: a request naming the label never finds its version gone)."""
        loaded = self._available(rec)
        labelled = set(rec.labels.values())
        for v in sorted(versions_to_unload(loaded, rec.aspired, loaded & rec.aspired) - labelled):
            self._unload(rec, v)

    async def _load(self, rec: ModelRecord, version: int, version_dir: Path, listing: VersionListing | None = None) -> None:
        name = rec.config.name
        old = rec.versions.get(version)
        vr = VersionRecord(version, START, attempts=old.attempts if old and old.error else 0, path=version_dir,
                           fetch_failures=old.fetch_failures if old and old.error else 0)
        rec.versions[version] = vr
        vr.state = LOADING
        if listing is not None and not await self._fetch(rec, vr, listing):
            return
        version_dir = vr.path or version_dir
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

    def _refresh_latest(self, rec: ModelRecord) -> None:
        avail = [r for r in rec.versions.values() if r.state == AVAILABLE and r.servable is not None]
        rec.latest = max(avail, key=lambda r: r.version).servable if avail else None
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
