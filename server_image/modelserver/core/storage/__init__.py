"""Models from object storage: base paths such as `s3://bucket/models/m` (the forms: uri.py).

The manager asks `RemoteStorage` two things about a remote base path: `scan` (which versions the
store holds and which of them may be loaded now: listing.py) and `fetch` (a version, downloaded
into the local cache and checked: cache.py). stores.py talks to the stores. Errors are
`StoreError`s with a `kind` (not_found, denied, unreachable, changed, corrupt, invalid) that the
manager maps to the model's status; their messages carry no credential.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from modelserver.config.storage_uri import StorageURI, is_remote, parse, redact
from modelserver.core.errors import ServingError
from modelserver.core.storage.cache import Cache, Fetched
from modelserver.core.storage.listing import Scan, VersionListing, scan
from modelserver.core.storage.stores import Store, StoreError, open_store

__all__ = ["Cache", "Fetched", "RemoteStorage", "Scan", "StorageURI", "StoreError", "VersionListing", "default_storage",
           "fetch_backoff", "is_remote", "parse", "redact", "serving_error"]

log = logging.getLogger("modelserver.core.storage")

# How a storage failure shows in a version's or a model's status.
STORE_CODES = {"not_found": grpc.StatusCode.NOT_FOUND, "denied": grpc.StatusCode.PERMISSION_DENIED,
               "unreachable": grpc.StatusCode.UNAVAILABLE, "changed": grpc.StatusCode.UNAVAILABLE,
               "corrupt": grpc.StatusCode.DATA_LOSS, "invalid": grpc.StatusCode.INVALID_ARGUMENT}
FETCH_BACKOFF_S = 1.0  # a failed download is tried again after 1, 2, 4, ... s, at most FETCH_BACKOFF_MAX_S apart
FETCH_BACKOFF_MAX_S = 30.0


def serving_error(exc: StoreError, prefix: str = "") -> ServingError:
    return ServingError(STORE_CODES.get(exc.kind, grpc.StatusCode.UNKNOWN), prefix + exc.message)


def fetch_backoff(failures: int) -> float:
    """Seconds before a download that failed `failures` times in a row is tried again."""
    return float(min(FETCH_BACKOFF_MAX_S, FETCH_BACKOFF_S * 2 ** max(0, failures - 1)))


def default_storage(cache_dir: str = "", max_bytes: int = 0, concurrency: int = 8) -> RemoteStorage:
    """The storage of a server: the cache under `cache_dir` (default: <temp dir>/modelserver-cache)."""
    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "modelserver-cache"
    return RemoteStorage(Cache(root, max_bytes, concurrency))


class RemoteStorage:
    """The stores of the remote base paths in use, what each model's last listing found, and the cache."""

    def __init__(self, cache: Cache, env: Mapping[str, str] | None = None) -> None:
        self.cache = cache
        self._env = env
        self._stores: dict[str, Store] = {}
        self._previous: dict[str, dict[int, VersionListing]] = {}

    def store(self, base_path: str) -> Store:
        found = self._stores.get(base_path)
        if found is None:
            try:
                uri = parse(base_path)
            except ValueError as exc:
                raise StoreError("invalid", str(exc)) from None
            if uri is None:
                raise StoreError("invalid", f"{base_path} is not an object-storage URI")
            found = self._stores[base_path] = open_store(uri, self._env)
        return found

    async def scan(self, model: str, base_path: str, taken: Iterable[int]) -> Scan:
        """The store's versions of a model and those ready to load (StoreError: nothing changes)."""
        objects = await self.store(base_path).list()
        key = f"{model}\0{base_path}"
        result = scan(objects, self._previous.get(key), taken)
        self._previous[key] = result.versions
        return result

    def forget(self, model: str, base_path: str) -> None:
        self._previous.pop(f"{model}\0{base_path}", None)

    async def fetch(self, model: str, base_path: str, listing: VersionListing) -> Fetched:
        return await self.cache.fetch(model, self.store(base_path), listing)

    def source(self, base_path: str, listing: VersionListing) -> str:
        """Where a version came from, as a URI (the base path's form)."""
        return f"{redact(base_path.rstrip('/'))}/{listing.dirname}"

    def evict(self, in_use: set[Path]) -> list[Path]:
        return self.cache.evict(in_use)

    async def close(self) -> None:
        for s in self._stores.values():
            close = getattr(s, "close", None)
            if close is not None:
                await close()
        self._stores.clear()

