"""Version discovery in a flat object listing (pure).

An object store has no directories: a base path's versions are the all-digit first components of
its object names (`3/saved_model.pb` is version 3), read as TF Serving reads directories
(`version_dirs`: leading zeros ignored, `00000123` is 123; clashes resolved the same way every time).

A version is served only when it is complete, as a directory written atomically would be: its
`saved_model.pb` (or `.pbtxt`) is there, and its `variables/` hold the index and every data shard
the shard names count (`variables.data-00000-of-00002` and `-00001-of-00002`). An upload in
progress that has some of them is seen again at the next poll. Objects can still arrive after
that (assets, a second shard set), so a version that appears while the server runs is taken only
when its listing (names, sizes, ETags) is the same at two polls in a row; at a model's first
listing, complete versions are taken at once (what sits in the store when the server starts has
finished uploading, as TF Serving assumes of directories).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INT64_MAX = 2**63 - 1
_SHARD = re.compile(r"^variables\.data-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object under the base path: its name relative to the prefix, size, ETag, and MD5 (hex)
    when the store gives one it guarantees (a single-part S3 ETag, GCS md5Hash, Azure Content-MD5)."""

    path: str
    size: int
    etag: str = ""
    md5: str = ""


@dataclass(frozen=True, slots=True)
class VersionListing:
    version: int
    dirname: str  # as named in the store (e.g. 00000123)
    files: tuple[ObjectInfo, ...]  # paths relative to the version directory
    missing: str = ""  # why it is not complete ("" when it is)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def fingerprint(self) -> tuple[tuple[str, int, str], ...]:
        return tuple((f.path, f.size, f.etag) for f in self.files)


@dataclass(slots=True)
class Scan:
    """What one listing found: every version, and the versions that may be loaded now."""

    versions: dict[int, VersionListing] = field(default_factory=dict)
    ready: dict[int, VersionListing] = field(default_factory=dict)
    clashes: dict[int, list[str]] = field(default_factory=dict)


def version_dirs(names: Iterable[str]) -> tuple[dict[int, str], dict[int, list[str]]]:
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


def missing_parts(files: Iterable[ObjectInfo]) -> str:
    """Why a version directory's objects are not a complete SavedModel ("" when they are)."""
    names = {f.path for f in files}
    if "saved_model.pb" not in names and "saved_model.pbtxt" not in names:
        return "no saved_model.pb yet"
    shards = [m for n in names if n.startswith("variables/") and (m := _SHARD.match(n[len("variables/"):]))]
    has_index = "variables/variables.index" in names
    if not shards and not has_index:
        return ""  # a SavedModel without variables
    if not has_index:
        return "variables/variables.index not uploaded yet"
    if not shards:
        return "no variables/variables.data-* shard uploaded yet"
    counts = {int(m[2]) for m in shards}
    if len(counts) != 1:
        return f"variables/ holds shards of different sets ({', '.join(str(c) for c in sorted(counts))} shards)"
    total = counts.pop()
    have = {int(m[1]) for m in shards}
    absent = sorted(set(range(total)) - have)
    return f"{len(absent)} of {total} variables/ shards not uploaded yet" if absent else ""


def versions_in(objects: Iterable[ObjectInfo]) -> tuple[dict[int, VersionListing], dict[int, list[str]]]:
    """Every version directory in a listing, with its objects and whether it is complete."""
    by_dir: dict[str, list[ObjectInfo]] = {}
    for o in objects:
        first, sep, rest = o.path.partition("/")
        if sep and rest and not rest.endswith("/"):
            by_dir.setdefault(first, []).append(ObjectInfo(rest, o.size, o.etag, o.md5))
    chosen, clashes = version_dirs(by_dir)
    out = {}
    for v, d in chosen.items():
        files = tuple(sorted(by_dir[d], key=lambda f: f.path))
        out[v] = VersionListing(v, d, files, missing_parts(files))
    return out, clashes


def scan(objects: Iterable[ObjectInfo], previous: Mapping[int, VersionListing] | None,
         taken: Iterable[int] = ()) -> Scan:
    """The versions of a listing and those ready to load: complete, and either listed the same at
    the previous scan, or found at the model's first scan (`previous` None), or already taken
    (`taken`: loaded or downloading, whose listing may change only by deletion)."""
    versions, clashes = versions_in(objects)
    already = set(taken)
    ready = {}
    for v, listing in versions.items():
        if not listing.complete:
            continue
        before = None if previous is None else previous.get(v)
        if previous is None or v in already or (before is not None and before.fingerprint() == listing.fingerprint()):
            ready[v] = listing
    return Scan(versions, ready, clashes)
