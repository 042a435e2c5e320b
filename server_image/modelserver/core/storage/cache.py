"""The local cache of downloaded versions (`--model_cache_dir`): complete or absent, never half.

Layout: `<root>/<model>-<hash of the base path>/<version dir>/` holds a version as the store lists
it, plus `.modeldeploy-version.json` (its manifest: each object's name, size and ETag, the base
path, when it was downloaded). A download goes to `<root>/.partial/<unique>/` first, in parallel
ranged reads (`--model_download_concurrency` reads of `PART_BYTES` at a time: that is the most
memory it holds), each object read at the ETag or generation it was listed with; every object's
size, and its MD5 where the store gives one, is checked; only then is the directory renamed into
place (one rename on one file system: atomic). A version whose manifest matches the store's
listing is not downloaded again: a restarted server, or a second server sharing the directory
(a node-local cache), loads it at once. Two servers that download the same version at once both
finish, and the second rename finds the first's directory and keeps it.

Eviction (`evict`): versions this server does not serve are removed, least recently used first,
while the cache holds more than `--model_cache_max_bytes` (0: keep only what is served); a
version another process used within `SHARED_GRACE_S` is left to it, and partial downloads left by
a process that died are removed after `STALE_PARTIAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from modelserver.config.storage_uri import StorageURI
from modelserver.core.storage.listing import ObjectInfo, VersionListing
from modelserver.core.storage.stores import Store, StoreError

log = logging.getLogger("modelserver.core.storage")

MANIFEST = ".modeldeploy-version.json"
PART_BYTES = 8 * 1024 * 1024
SHARED_GRACE_S = 600.0  # a version another server touched this recently is not evicted
STALE_PARTIAL_S = 3600.0  # a partial download untouched this long was left by a process that died
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Fetched:
    """A version in the cache: where, and what it took (`cached`: found there, nothing downloaded)."""

    path: Path
    seconds: float
    bytes: int
    cached: bool


def entry_name(model: str, uri: StorageURI) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)[:64] or "model"
    return f"{safe}-{hashlib.sha256(uri.raw.rstrip('/').encode()).hexdigest()[:12]}"


def manifest_of(uri: StorageURI, listing: VersionListing) -> dict[str, object]:
    return {"source": uri.raw, "version": listing.version, "dir": listing.dirname, "bytes": listing.size,
            "files": [[f.path, f.size, f.etag] for f in listing.files]}


def _matches(path: Path, want: dict[str, object]) -> bool:
    try:
        have = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(have, dict) and have.get("files") == want["files"] and have.get("source") == want["source"]


class Cache:
    def __init__(self, root: Path, max_bytes: int = 0, concurrency: int = 8, part_bytes: int = PART_BYTES) -> None:
        self.root = root
        self.max_bytes = max(0, max_bytes)
        self.part_bytes = max(1, part_bytes)
        self._reads = asyncio.Semaphore(max(1, concurrency))
        # version dirs this server downloaded or reused: evicted by the limit once it no longer serves
        # them (in_use), where another server's are left alone for SHARED_GRACE_S after their last use
        self._mine: set[Path] = set()
        self._partials: set[Path] = set()

    def version_dir(self, model: str, uri: StorageURI, listing: VersionListing) -> Path:
        return self.root / entry_name(model, uri) / listing.dirname

    async def fetch(self, model: str, store: Store, listing: VersionListing) -> Fetched:
        """The version in the cache, downloaded unless a matching copy is there; StoreError when
        a read fails or an object is not what the listing said (nothing is left behind)."""
        started = time.monotonic()
        final = self.version_dir(model, store.uri, listing)
        want = manifest_of(store.uri, listing)
        self._mine.add(final)
        if _matches(final, want):
            _touch(final / MANIFEST)
            return Fetched(final, time.monotonic() - started, 0, True)
        partial = self.root / ".partial" / f"{final.parent.name}-{listing.dirname}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        partial.mkdir(parents=True)
        self._partials.add(partial)
        try:
            await asyncio.gather(*(self._download(store, listing, f, partial) for f in listing.files))
            (partial / MANIFEST).write_text(json.dumps({**want, "downloadedAt": time.time()}))
            await asyncio.get_running_loop().run_in_executor(None, self._commit, partial, final, want)
        finally:
            self._partials.discard(partial)
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return Fetched(final, time.monotonic() - started, listing.size, False)

    @staticmethod
    def _commit(partial: Path, final: Path, want: dict[str, object]) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if _matches(final, want):
                return  # another server finished the same download first: keep its copy
            old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)  # a re-uploaded version: the old copy goes
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(partial, final)
        except OSError:
            if not _matches(final, want):  # lost a race with another server's rename: fine if it matches
                raise

    async def _download(self, store: Store, listing: VersionListing, obj: ObjectInfo, into: Path) -> None:
        dest = into / obj.path
        if ".." in Path(obj.path).parts or Path(obj.path).is_absolute():
            raise StoreError("invalid", f"{store.uri}: object name {obj.path!r} leaves its version directory")
        dest.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async def part(start: int) -> None:
                end = min(start + self.part_bytes, obj.size)
                async with self._reads:
                    data = await store.read(f"{listing.dirname}/{obj.path}", start, end, obj.etag)
                    if len(data) != end - start:
                        raise StoreError("corrupt", f"{store.uri}: {listing.dirname}/{obj.path}: {len(data)} bytes "
                                         f"read for bytes {start}-{end - 1}")
                    await loop.run_in_executor(None, os.pwrite, fd, data, start)

            await asyncio.gather(*(part(s) for s in range(0, obj.size, self.part_bytes)))
        finally:
            os.close(fd)
        await loop.run_in_executor(None, _verify, dest, obj, f"{store.uri}: {listing.dirname}/{obj.path}")

    # -- eviction --
    def evict(self, in_use: set[Path]) -> list[Path]:
        """Removes versions not in use, least recently used first, while over the limit. The
        versions in use are touched first: in a cache shared by several servers, that is what
        keeps the others from evicting a version this one serves."""
        self._clean_partials()
        for vdir in in_use:
            _touch(vdir / MANIFEST)
        entries = []
        for model_dir in _dirs(self.root):
            if model_dir.name.startswith("."):
                continue
            for vdir in _dirs(model_dir):
                if vdir.name.startswith("."):
                    continue
                try:
                    st = (vdir / MANIFEST).stat()
                    size = int(json.loads((vdir / MANIFEST).read_text()).get("bytes", 0))
                except (OSError, ValueError, AttributeError):
                    continue  # not a finished version (or being renamed)
                entries.append((st.st_mtime, vdir, size))
        total = sum(size for _, _, size in entries)
        removed = []
        now = time.time()
        for mtime, vdir, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if vdir in in_use or (vdir not in self._mine and now - mtime < SHARED_GRACE_S):
                continue
            shutil.rmtree(vdir, ignore_errors=True)
            self._mine.discard(vdir)
            total -= size
            removed.append(vdir)
            log.info("model cache: removed %s (%d bytes; the cache holds %d)", vdir, size, total)
        return removed

    def _clean_partials(self) -> None:
        now = time.time()
        for p in _dirs(self.root / ".partial"):
            try:
                stale = now - p.stat().st_mtime > STALE_PARTIAL_S
            except OSError:
                continue
            if p not in self._partials and stale:
                shutil.rmtree(p, ignore_errors=True)


def _dirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _verify(path: Path, obj: ObjectInfo, what: str) -> None:
    size = path.stat().st_size
    if size != obj.size:
        raise StoreError("corrupt", f"{what}: {size} bytes downloaded, the store lists {obj.size}")
    if obj.md5:
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        if h.hexdigest() != obj.md5:
            raise StoreError("corrupt", f"{what}: MD5 {h.hexdigest()} does not match the store's {obj.md5}")
