"""What the operator last saw of each object it watches, so that a reconcile reads memory, not the API.

Fed by kopf's watch events (the ModelDeployments and every child with our managed-by label) and by
the operator's own writes (the API server's answer to an apply or a status patch), read by
`reconcile.observe`. Watches start with a full listing, and kopf holds every handler except its
index handlers until the listings of indexed resources are in: the children are indexed into this
cache there, so no reconcile ever runs on a half-filled cache (controller-runtime's
WaitForCacheSync).

Each entry keeps the newer of what it has and what it is given (resourceVersions compared as the
integers kube-apiserver issues; an opaque one always replaces). `seen` also answers whether a
watched object is news: the echo of our own write (same resourceVersion as the answer we stored)
is not, so it triggers no reconcile. Thread-safe: watch events arrive on kopf's event loop,
writes in the reconcile threads.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from modeldeploy.decisions.render import OWNER_LABEL  # on every child and every server pod

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (str(obj.get("kind") or ""), str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _older(new: Obj, old: Obj) -> bool:
    """Whether `new` is an older version of `old` (an event that arrives after our own write's answer)."""
    a, b = _rv(new), _rv(old)
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def _slim(obj: Obj) -> Obj:
    """With managedFields cut to who manages the object and how (their field sets are large, and the
    operator reads only whether its own apply manages a child: plan.child_action)."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    managers = [{k: e[k] for k in ("manager", "operation", "subresource") if k in e} for e in meta["managedFields"] or []]
    return {**obj, "metadata": {**meta, "managedFields": managers}}


class Cache:
    def __init__(self) -> None:
        self._objects: dict[Key, Obj] = {}
        self._written: dict[Key, str] = {}  # key -> resourceVersion of our last write's answer
        self._kinds: Counter[str] = Counter()
        self._slices: dict[tuple[str, str], set[Key]] = {}  # (namespace, service) -> EndpointSlice keys
        self._pods: dict[tuple[str, str], set[Key]] = {}  # (namespace, ModelDeployment) -> Pod keys
        self._lock = threading.Lock()

    def seen(self, obj: Obj) -> bool:
        """A watched object (listing, ADDED, MODIFIED): keep it if newer; True unless it is the echo
        of our own last write."""
        key = key_of(obj)
        with self._lock:
            self._store(key, obj)
            return not (_rv(obj) and self._written.get(key) == _rv(obj))

    def wrote(self, obj: Obj) -> None:
        """The API server's answer to our write: keep it, and know its watch event for an echo."""
        key = key_of(obj)
        with self._lock:
            self._store(key, obj)
            self._written[key] = _rv(obj)

    def deleted(self, obj: Obj) -> None:
        """A DELETED event (ignored when we hold a newer object: the operator re-created it since)."""
        key = key_of(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is None or _older(obj, old):
                return
            del self._objects[key]
            self._kinds[key[0]] -= 1
            self._written.pop(key, None)
            self._index(key, old, None)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def names(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every object of a kind."""
        with self._lock:
            return sorted((ns, name) for k, ns, name in self._objects if k == kind)

    def endpoint_slices(self, namespace: str, service: str) -> list[Obj]:
        """The EndpointSlices of a Service (by their kubernetes.io/service-name label)."""
        with self._lock:
            keys = sorted(self._slices.get((namespace, service), ()))
            return [self._objects[k] for k in keys if k in self._objects]

    def pods(self, namespace: str, owner: str) -> list[Obj]:
        """The server pods of a ModelDeployment (by their owner label)."""
        with self._lock:
            keys = sorted(self._pods.get((namespace, owner), ()))
            return [self._objects[k] for k in keys if k in self._objects]

    def count(self, kind: str) -> int:
        with self._lock:
            return self._kinds[kind]

    def _store(self, key: Key, obj: Obj) -> None:
        old = self._objects.get(key)
        if old is not None and _older(obj, old):
            return
        if old is None:
            self._kinds[key[0]] += 1
        self._objects[key] = _slim(obj)
        self._index(key, old, obj)

    def _index(self, key: Key, old: Obj | None, new: Obj | None) -> None:
        """Keep the EndpointSlice and Pod indexes in step with a change from `old` to `new`."""
        index, label = {"EndpointSlice": (self._slices, SERVICE_NAME_LABEL), "Pod": (self._pods, OWNER_LABEL)}.get(
            key[0], (None, ""))
        if index is None:
            return
        if old is not None:
            index.get(_by_label(old, label), set()).discard(key)
        if new is not None:
            index.setdefault(_by_label(new, label), set()).add(key)


def _by_label(obj: Obj, label: str) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str((meta.get("labels") or {}).get(label) or ""))
