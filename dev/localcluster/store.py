"""The fake API server's store: its objects and the verbs on them, as kube-apiserver and etcd keep them.

Everything the HTTP front end (`httpapi`) serves and the local cluster's components call in process:
create / update / delete with kube-apiserver's rules (generateName, resourceVersion preconditions,
generation on spec changes, the status subresource's isolation, finalizers, graceful pod deletion,
ownerReference garbage collection, CRD registration, admission), direct reads (`get`,
`list_objects`), the watch history (`history`, `compact`), the queues of the HTTP watches
(`watchers`) and the in-process watchers (`subscribe`). It has no thread of its own: `loop` is the
event loop that serves it (set by `fakeapi.FakeKubeAPI.start`), where watch events and delayed work
(orphan collection, `write_hooks` such as the Deployment stand-in's) are scheduled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import threading
import uuid
from collections.abc import Callable
from typing import Any

import yaml

from localcluster.admission import validate_builtin, validate_custom
from localcluster.apimachinery import _NO_GENERATION, BUILTINS, ApiError, Obj, Resource, now
from localcluster.auth import Tokens

Key = tuple[str, str, str, str]  # (group, plural, namespace, name)
# An HTTP watch: (group, plural, the queue of (resourceVersion, event type, object); None ends it).
Watcher = tuple[str, str, asyncio.Queue[Any]]
# An in-process watcher: (resources or None for all, callback(event type, plural, object), its loop).
Subscriber = tuple[frozenset[tuple[str, str]] | None, Callable[[str, str, Obj], None], asyncio.AbstractEventLoop]
# (namespace, pod, container, tailLines) -> the container's log, None if there is none yet.
LogSource = Callable[[str, str, str, int | None], str | None]


class Store:
    """The objects and the verbs; thread-safe (`lock`), called from the serving loop and from tests."""

    def __init__(self, validate_builtins: bool = True):
        self.validate_builtins = validate_builtins
        self.resources: dict[tuple[str, str], Resource] = {(r.group, r.plural): r for r in BUILTINS}
        self.objects: dict[Key, Obj] = {}
        self.applied: dict[tuple[Key, str, str], Obj] = {}  # (key, manager, subresource) -> last intent
        self.history: list[tuple[int, str, str, str, Obj]] = []  # (rv, type, group, plural, object)
        self.compacted_rv = 0
        self.rv = 0
        self.lock = threading.RLock()
        self.watchers: list[Watcher] = []
        self._subscribers: list[Subscriber] = []
        # Called under the lock after every write that is kept (the Deployment stand-in schedules its status).
        self.write_hooks: list[Callable[[Resource, Obj], None]] = []
        # Where `kubectl logs` reads a container's log (set by the local cluster's node agent).
        self.log_source: LogSource | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # ServiceAccount tokens it issued; who makes each HTTP request, and what RBAC allows them
        self.tokens = Tokens(self)
        self.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # -- direct access for tests (not audited) --
    def resource_for(self, api_version: str, kind: str) -> Resource:
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        for r in self.resources.values():
            if r.group == group and r.kind == kind:
                return r
        raise ApiError(404, "NotFound", f"no resource for {api_version} {kind}")

    def add_object(self, obj: Obj) -> Obj:
        r = self.resource_for(obj["apiVersion"], obj["kind"])
        ns = obj["metadata"].get("namespace", "default") if r.namespaced else ""
        return self.create(r, ns, copy.deepcopy(obj))

    def apply_yaml(self, text: str, namespace: str = "default") -> list[Obj]:
        out = []
        for doc in yaml.safe_load_all(text):
            if doc:
                r = self.resource_for(doc["apiVersion"], doc["kind"])
                if r.namespaced:
                    doc["metadata"].setdefault("namespace", namespace)
                out.append(self.create(r, doc["metadata"].get("namespace", "") if r.namespaced else "", doc))
        return out

    def get(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        with self.lock:
            obj = self.objects.get((group, plural, namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list_objects(self, group: str, plural: str, namespace: str | None = None) -> list[Obj]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (g, p, ns, _), o in sorted(self.objects.items())
                if g == group and p == plural and (namespace is None or ns == namespace)
            ]

    def subscribe(self, resources: set[tuple[str, str]] | None, callback: Callable[[str, str, Obj], None],
                  loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Call `callback(event type, plural, object)` on `loop` for every change of `resources`
        ((group, plural) pairs; None: all), in order, after the change. The object is shared: do not
        modify it. Returns the function that unsubscribes."""
        entry = (frozenset(resources) if resources is not None else None, callback, loop)
        with self.lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self.lock, contextlib.suppress(ValueError):
                self._subscribers.remove(entry)

        return unsubscribe

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older resourceVersions get 410 Gone."""
        with self.lock:
            self.compacted_rv = self.rv
            self.history.clear()
    # -- core operations --
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _emit(self, etype: str, r: Resource, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        snapshot = copy.deepcopy(obj)
        self.history.append((rv, etype, r.group, r.plural, snapshot))
        for wanted, callback, loop in list(self._subscribers):
            if wanted is None or (r.group, r.plural) in wanted:
                with contextlib.suppress(RuntimeError):  # a subscriber whose loop has closed
                    loop.call_soon_threadsafe(callback, etype, r.plural, snapshot)
        if self.loop is None:
            return
        for group, plural, q in list(self.watchers):
            if group == r.group and plural == r.plural:
                self.loop.call_soon_threadsafe(q.put_nowait, (rv, etype, snapshot))

    def _admit(self, r: Resource, obj: Obj, strict: bool) -> None:
        if r.plural == "secrets" and obj.get("stringData"):
            # kube-apiserver folds stringData into data (base64) on every write; stringData is never stored
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        if r.custom and r.schema:
            validate_custom(obj, r.schema, strict)
        elif self.validate_builtins and not r.custom:
            validate_builtin(obj)

    def create(self, r: Resource, namespace: str, obj: Obj, strict: bool = False, dry_run: bool = False) -> Obj:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{r.kind} is invalid: metadata.name: Required value")
            if r.namespaced:
                if meta.get("namespace", namespace) != namespace:
                    raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
                meta["namespace"] = namespace
                if r.plural != "events" and ("", "namespaces", "", namespace) not in self.objects:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            key = (r.group, r.plural, namespace, name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{r.plural}.{r.group} "{name}" already exists'.replace(". ", " "),
                               {"name": name, "group": r.group, "kind": r.plural})
            obj["apiVersion"], obj["kind"] = r.api_version, r.kind
            if r.has_status and r.custom:
                obj.pop("status", None)
            meta.update({"uid": str(uuid.uuid4()), "creationTimestamp": now()})
            meta.pop("resourceVersion", None)
            meta.pop("deletionTimestamp", None)
            if r.plural not in _NO_GENERATION:
                meta["generation"] = 1
            self._admit(r, obj, strict)
            if dry_run:
                return obj
            return self._keep("ADDED", r, key, obj)

    def update(self, r: Resource, namespace: str, name: str, new: Obj, subresource: str = "", strict: bool = False) -> Obj:
        with self.lock:
            key = (r.group, r.plural, namespace, name)
            old = self.objects.get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found', {"name": name, "kind": r.plural})
            want_rv = (new.get("metadata") or {}).get("resourceVersion")
            if want_rv and want_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been modified; please apply your changes to the latest version and try again',
                               {"name": name, "kind": r.plural})
            new = copy.deepcopy(new)
            new["apiVersion"], new["kind"] = r.api_version, r.kind
            meta = new.setdefault("metadata", {})
            if meta.get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            for k in ("uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
                else:
                    meta.pop(k, None)
            meta["name"] = name
            if subresource == "status":
                merged = copy.deepcopy(old)
                merged["status"] = new.get("status")
                if merged["status"] is None:
                    merged.pop("status")
                new, meta = merged, merged["metadata"]  # a status write bumps the stored resourceVersion too
            elif r.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            self._admit(r, new, strict)  # status writes are validated (and pruned) too
            spec_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}  # noqa: E731
            if "generation" in old["metadata"] and spec_of(new) != spec_of(old):
                meta["generation"] = old["metadata"]["generation"] + 1
            if new == {**old, "metadata": {**old["metadata"], "resourceVersion": new["metadata"].get("resourceVersion", old["metadata"]["resourceVersion"])}}:
                return copy.deepcopy(old)  # no-op writes do not bump resourceVersion
            waiting_for_kubelet = r.plural == "pods" and old["metadata"].get("deletionGracePeriodSeconds")
            if old["metadata"].get("deletionTimestamp") and not meta.get("finalizers") and not waiting_for_kubelet:
                meta["resourceVersion"] = self._bump()
                self.objects[key] = new
                self._finish_delete(r, key, "Background")
                return copy.deepcopy(new)
            return self._keep("MODIFIED", r, key, new)

    def _keep(self, etype: str, r: Resource, key: Key, obj: Obj) -> Obj:
        """Store a created or changed object under a new resourceVersion; tell the watchers and hooks."""
        obj["metadata"]["resourceVersion"] = self._bump()
        self.objects[key] = obj
        if r.plural == "customresourcedefinitions":
            self._register_crd(obj)
        self._emit(etype, r, obj)
        self._after_write(r, obj)
        return copy.deepcopy(obj)

    def delete(self, r: Resource, namespace: str, name: str, propagation: str = "Background", grace: int | None = None) -> Obj:
        with self.lock:
            key = (r.group, r.plural, namespace, name)
            obj = self.objects.get(key)
            if obj is None:
                raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found', {"name": name, "kind": r.plural})
            if r.plural == "pods" and self._graceful(obj, grace):
                return self._mark_terminating(r, key, obj, grace)
            if propagation == "Foreground":
                obj = copy.deepcopy(obj)
                obj["metadata"].setdefault("finalizers", [])
                if "foregroundDeletion" not in obj["metadata"]["finalizers"]:
                    obj["metadata"]["finalizers"].append("foregroundDeletion")
            if obj["metadata"].get("finalizers"):
                if not obj["metadata"].get("deletionTimestamp"):
                    obj = copy.deepcopy(obj)
                    obj["metadata"]["deletionTimestamp"] = now()
                    obj["metadata"]["deletionGracePeriodSeconds"] = 0
                    obj["metadata"]["resourceVersion"] = self._bump()
                    self.objects[key] = obj
                    self._emit("MODIFIED", r, obj)
                if propagation == "Foreground":
                    self._collect(obj["metadata"]["uid"], "Background")
                    fins = [f for f in obj["metadata"]["finalizers"] if f != "foregroundDeletion"]
                    return self.update(r, namespace, name, {**obj, "metadata": {**obj["metadata"], "finalizers": fins}})
                return copy.deepcopy(obj)
            return self._finish_delete(r, key, propagation)

    @staticmethod
    def _graceful(pod: Obj, grace: int | None) -> bool:
        """A pod on a node is deleted gracefully: its kubelet stops it, then deletes it with grace 0.
        Unscheduled or finished pods, and a grace of 0, delete at once."""
        if grace == 0 or pod["metadata"].get("deletionGracePeriodSeconds") == 0:
            return False
        return bool((pod.get("spec") or {}).get("nodeName")) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")

    def _mark_terminating(self, r: Resource, key: Key, pod: Obj, grace: int | None) -> Obj:
        period = int(grace if grace is not None else (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        current = pod["metadata"].get("deletionGracePeriodSeconds")
        if pod["metadata"].get("deletionTimestamp") and current is not None and period >= current:
            return copy.deepcopy(pod)  # already terminating (a shorter grace may still be asked for)
        pod = copy.deepcopy(pod)
        pod["metadata"].setdefault("deletionTimestamp", now())
        pod["metadata"]["deletionGracePeriodSeconds"] = period
        pod["metadata"]["resourceVersion"] = self._bump()
        self.objects[key] = pod
        self._emit("MODIFIED", r, pod)
        return copy.deepcopy(pod)

    def _finish_delete(self, r: Resource, key: Key, propagation: str) -> Obj:
        obj = self.objects.pop(key)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit("DELETED", r, obj)
        for applied_key in [a for a in self.applied if a[0] == key]:
            del self.applied[applied_key]
        if r.plural == "namespaces":
            for k in [k for k in self.objects if k[2] == key[3] and k[2]]:
                if k in self.objects:
                    self._finish_delete(self.resources[(k[0], k[1])], k, "Background")
        self._collect(obj["metadata"]["uid"], propagation)
        return copy.deepcopy(obj)

    def _collect(self, owner_uid: str, propagation: str) -> None:
        """The garbage collector: dependents of a deleted owner go too (or are orphaned)."""
        for key, dep in list(self.objects.items()):
            refs = dep["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            res = self.resources[(key[0], key[1])]
            rest = [ref for ref in refs if ref.get("uid") != owner_uid]
            if propagation == "Orphan" or rest:
                new = copy.deepcopy(dep)
                new["metadata"]["ownerReferences"] = rest
                if not rest:
                    del new["metadata"]["ownerReferences"]
                self.update(res, key[2], key[3], new)
            elif key in self.objects:
                self.delete(res, key[2], key[3], "Background")

    def _register_crd(self, crd: Obj) -> None:
        spec = crd["spec"]
        version = next((v for v in spec["versions"] if v.get("storage")), spec["versions"][0])
        names = spec["names"]
        self.resources[(spec["group"], names["plural"])] = Resource(
            spec["group"], version["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
            names.get("singular", names["kind"].lower()), list(names.get("shortNames", [])),
            list(names.get("categories", [])), "status" in (version.get("subresources") or {}),
            (version.get("schema") or {}).get("openAPIV3Schema"), list(version.get("additionalPrinterColumns", [])), True,
            (version.get("subresources") or {}).get("scale"),
        )
        status = {
            "acceptedNames": names,
            "storedVersions": [version["name"]],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()},
            ],
        }
        if crd.get("status") != status:
            crd["status"] = status

    def _orphaned(self, obj: Obj) -> bool:
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return False
        uids = {o["metadata"]["uid"] for o in self.objects.values()}
        return all(ref.get("uid") not in uids for ref in refs)

    def _collect_orphan(self, r: Resource, namespace: str, name: str) -> None:
        with self.lock:
            obj = self.objects.get((r.group, r.plural, namespace, name))
            if obj is not None and self._orphaned(obj):
                self.delete(r, namespace, name, "Background")

    # -- after every write: orphan collection, the write hooks --
    def _after_write(self, r: Resource, obj: Obj) -> None:
        if self._orphaned(obj) and self.loop is not None:
            # As the real garbage collector: a dependent whose owners are all gone is deleted.
            ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self._collect_orphan, r, ns, name)
        for hook in self.write_hooks:
            hook(r, obj)
