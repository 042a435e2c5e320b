"""A small, faithful fake kube-apiserver for tests (aiohttp, in a background thread).

There is no real API server on the test machines, so the real kopf operator and the real kubectl
run against this one. It behaves like kube-apiserver wherever modeldeploy relies on it:

- discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`, `/version`) incl. CRDs registered at runtime
  (creating a CustomResourceDefinition serves its resource, with short names and printer columns);
- CRUD: GET/LIST (label and field selectors), POST (generateName, AlreadyExists), PUT (resourceVersion
  precondition, 409 Conflict), DELETE (finalizers, deletionTimestamp, ownerReference cascade GC with
  Background/Foreground/Orphan propagation), PATCH as JSON merge patch, JSON patch (a failed `test`
  gives 422), strategic merge patch (lists of named items merged by name; 415 for custom resources),
  and server-side apply (`application/apply-patch+yaml`, per-field-manager: fields a manager applied
  before and leaves out now are removed; lists are atomic);
- `metadata.uid/resourceVersion/creationTimestamp/generation` stamped; generation bumps on spec
  changes only; the status subresource is isolated (the main resource ignores status, `/status`
  changes only status);
- watch with resume: `?watch=true&resourceVersion=N` replays every event after N (410 Gone once the
  history has been compacted with `compact()`), label/field selectors, `timeoutSeconds`;
- validation: custom resources against their CRD's structural schema (defaults applied, unknown
  fields pruned or rejected with `fieldValidation=Strict`, types, enums, bounds, patterns, required,
  `x-kubernetes-list-type: set`, and the CEL rules in `x-kubernetes-validations`, evaluated with
  cel-python); built-in kinds with `kubernetes-validate --strict` (422 with the reason);
- server-side printing (`Accept: ...;as=Table`, in lists, gets and `kubectl get -w` watches) with the
  CRD's printer columns and kube-apiserver's columns for pods, Deployments, ReplicaSets, Services,
  EndpointSlices, Nodes, Events and claims (`printers`);
- Pods deleted gracefully once on a node (deletionTimestamp and deletionGracePeriodSeconds; the
  node agent deletes them with grace 0 when their containers stopped), `pods/log` (from the node
  agent's `log_source`), the `scale` subresource of Deployments and ReplicaSets;
- in-process watchers (`subscribe`): the local cluster's controllers get every change, in order;
- an optional Deployment controller stand-in (`simulate_deployments=True`, `standin`): it reports
  every Deployment's pods as ready shortly after each change (`set_deployment_ready` overrides it).

Every resource request is recorded in an audit log of (verb, apiGroup, resource, subresource,
namespace, name, userAgent, code): `fake.audit()` returns it, `fake.write_audit(path)` writes JSON,
`fake.audit_rules(user_agent_prefix)` returns the distinct (verb, group, resource, subresource)
tuples, e.g. to check a Helm chart's RBAC against what the operator really calls.

Usage::

    from localcluster.fakeapi import FakeKubeAPI

    with FakeKubeAPI() as fake:                 # serves http://127.0.0.1:<free port>
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        fake.apply_yaml(Path("crds/modeldeployments.yaml").read_text())
        ...  # run kopf / kubectl with KUBECONFIG=kubeconfig
        fake.get("apps", "deployments", "ns", "name")    # direct access, not audited
        fake.audit_rules("modeldeploy")

Known gaps (not relied on): no authn/authz, no admission webhooks, no scheduling (the local cluster's
node agent binds pods), watches do not send DELETED when an object stops matching a label selector,
SSA reports no field conflicts, objects live in memory only.
"""


from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from localcluster.admission import VALIDATE_K8S_VERSION, validate_builtin, validate_custom
from localcluster.apimachinery import (
    _NO_GENERATION,
    BUILTINS,
    ApiError,
    AuditEntry,
    Obj,
    Resource,
    matches,
    merge_patch,
    now,
    parse_label_selector,
    server_side_apply,
    strategic_merge,
)
from localcluster.httpapi import HttpFront
from localcluster.standin import DeploymentStandIn

__all__ = [
    "VALIDATE_K8S_VERSION", "ApiError", "AuditEntry", "FakeKubeAPI", "Resource", "matches", "merge_patch",
    "parse_label_selector", "running", "server_side_apply", "strategic_merge", "validate_builtin", "validate_custom",
]


Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


class FakeKubeAPI(HttpFront, DeploymentStandIn):
    """The fake API server. Start with `start()` (or as a context manager); stop with `stop()`."""

    def __init__(self, simulate_deployments: bool = True, validate_builtins: bool = True):
        self.simulate_deployments = simulate_deployments
        self.validate_builtins = validate_builtins
        self.resources: dict[tuple[str, str], Resource] = {}
        for r in BUILTINS:
            self.resources[(r.group, r.plural)] = r
        self.objects: dict[Key, Obj] = {}
        self.applied: dict[tuple[Key, str, str], Obj] = {}  # (key, manager, subresource) -> last intent
        self.history: list[tuple[int, str, str, str, Obj]] = []  # (rv, type, group, plural, object)
        self.compacted_rv = 0
        self.rv = 0
        self.lock = threading.RLock()
        self._audit: list[AuditEntry] = []
        self._watchers: list[tuple[str, str, asyncio.Queue[Any]]] = []
        self._deployment_overrides: dict[tuple[str, str], int] = {}
        # In-process watchers (the local cluster's controllers): (resources or None for all, callback, loop).
        self._subscribers: list[tuple[frozenset[tuple[str, str]] | None, Callable[[str, str, Obj], None], asyncio.AbstractEventLoop]] = []
        # (namespace, pod, container, tailLines) -> the container's log, for `kubectl logs` (set by the node agent).
        self.log_source: Callable[[str, str, str, int | None], str | None] | None = None
        self.fail_next: list[tuple[str, str, int]] = []  # (verb, plural, code): inject one transient error
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})

    # -- lifecycle --
    def start(self) -> FakeKubeAPI:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        started = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            self.loop.run_until_complete(self._runner.setup())
            site = web.SockSite(self._runner, sock)
            self.loop.run_until_complete(site.start())
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="fake-kube-apiserver", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        if self.loop and self._thread:
            for _, _, q in list(self._watchers):
                self.loop.call_soon_threadsafe(q.put_nowait, None)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        path = Path(path)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    # -- audit --
    def audit(self) -> list[AuditEntry]:
        with self.lock:
            return list(self._audit)

    def audit_rules(self, user_agent_prefix: str = "") -> set[tuple[str, str, str, str]]:
        return {
            (a.verb, a.apiGroup, a.resource, a.subresource)
            for a in self.audit()
            if a.userAgent.startswith(user_agent_prefix)
        }

    def write_audit(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps([asdict(a) for a in self.audit()], indent=1))

    def clear_audit(self) -> None:
        with self.lock:
            self._audit.clear()

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
        for group, plural, q in list(self._watchers):
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
            meta["resourceVersion"] = self._bump()
            self.objects[key] = obj
            if r.plural == "customresourcedefinitions":
                self._register_crd(obj)
            self._emit("ADDED", r, obj)
            self._after_write(r, obj)
            return copy.deepcopy(obj)

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
            meta["resourceVersion"] = self._bump()
            self.objects[key] = new
            if r.plural == "customresourcedefinitions":
                self._register_crd(new)
            self._emit("MODIFIED", r, new)
            self._after_write(r, new)
            return copy.deepcopy(new)

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

    # -- after every write: orphan collection, the Deployment stand-in --
    def _after_write(self, r: Resource, obj: Obj) -> None:
        if self._orphaned(obj) and self.loop is not None:
            # As the real garbage collector: a dependent whose owners are all gone is deleted.
            ns, name = obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
            self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self._collect_orphan, r, ns, name)
        if r.plural == "deployments" and (self.simulate_deployments or self._deployment_overrides):
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self.loop.call_later, 0.05, self._write_deployment_status, ns, name)



@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
