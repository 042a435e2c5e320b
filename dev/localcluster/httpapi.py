"""The fake API server's HTTP front end: authentication and RBAC (`auth`), routing, discovery, OpenAPI
(`openapi`), verbs, patches, watches, tables.

An object that serves a `store.Store` (it holds the objects, the verbs and the lock); with the fake
API server's lifecycle (`fakeapi`), only this module speaks aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from typing import Any

import yaml
from aiohttp import web

from localcluster import kubeproto, openapi, portforward, printers, rbac
from localcluster.apimachinery import (
    ApiError,
    AuditEntry,
    Obj,
    Resource,
    age,
    jsonpath,
    matches,
    merge_patch,
    parse_label_selector,
    server_side_apply,
    strategic_merge,
)
from localcluster.objects import HOST_PORTS_ANNOTATION
from localcluster.store import Store

# Subresources besides status: a pod's log (`kubectl logs`) and port-forward, the scale of Deployments and
# ReplicaSets, a ServiceAccount's token (TokenRequest).
SUBRESOURCES = {("log", "pods"), ("portforward", "pods"), ("scale", "deployments"), ("scale", "replicasets"),
                ("token", "serviceaccounts")}
log = logging.getLogger("localcluster.api")
# Who made a request (set once it is authenticated; the audit log records it).
USER = web.RequestKey("user", rbac.User)


class HttpFront:
    """Serves `store` over kube-apiserver's REST API; records every resource request (`audit_log`)."""

    def __init__(self, store: Store):
        self.store = store
        self.url = ""
        self.audit_log: list[AuditEntry] = []
        self.fail_next: list[tuple[str, str, int]] = []  # (verb, plural, code): inject one transient error

    def application(self, url: str) -> web.Application:
        """The aiohttp application that serves every path, for the server at `url`."""
        self.url = url
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    def _record(self, request: web.Request, verb: str, r: Resource | None, sub: str, ns: str, name: str, code: int) -> None:
        if r is None:
            return
        user = request.get(USER)
        with self.store.lock:
            self.audit_log.append(AuditEntry(verb, r.group, r.plural, sub, ns, name, request.headers.get("User-Agent", ""), code,
                                             user.name if user is not None else ""))

    def _authorize(self, request: web.Request, path: str, verb: str = "get", r: Resource | None = None, sub: str = "",
                   ns: str = "", name: str = "") -> rbac.Attributes:
        """The request's user (401 for a token not valid here) and RBAC's verdict (403)."""
        user = request[USER] = self.store.tokens.user(request.headers)
        if r is None:
            attrs = rbac.Attributes(user, verb, path=path)
        else:
            if not name and verb in ("list", "watch"):  # kube-apiserver names the object a field selector pins
                pinned = [t.split("=", 1)[1] for t in request.query.get("fieldSelector", "").split(",")
                          if t.startswith(("metadata.name=", "metadata.name=="))]
                name = pinned[0].lstrip("=") if len(pinned) == 1 else ""
            if r.plural == "namespaces" and name:
                ns = name  # a namespace is authorized in itself
            attrs = rbac.Attributes(user, verb, r.group, r.plural, sub, ns, name, version=r.version)
        self.store.tokens.check(attrs)
        return attrs

    async def handle(self, request: web.Request) -> web.StreamResponse:
        verb, r, sub, ns, name = "", None, "", "", ""
        try:
            parts = [p for p in request.path.split("/") if p]
            if not parts or parts[0] not in ("api", "apis"):
                self._authorize(request, request.path, request.method.lower() if request.method != "HEAD" else "get")
                if request.path == "/version":
                    return web.json_response({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})
                if parts[:2] == ["openapi", "v3"]:
                    with self.store.lock:
                        return web.json_response(openapi.v3(self.store.resources.values(), parts[2:], self.store.rv))
                if parts == ["openapi", "v2"]:
                    return self._openapi_v2(request)
                if request.path in ("/healthz", "/livez", "/readyz"):
                    return web.Response(text="ok")
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            discovery = self._discovery(parts)
            if discovery is not None:
                self._authorize(request, request.path)
                return web.json_response(discovery)
            r, ns, name, sub = self._route(parts)
            verb = self._verb(request.method, name, request.query)
            attrs = self._authorize(request, request.path, "create" if sub in ("portforward", "token") else verb, r, sub, ns, name)
            injected = next((f for f in self.fail_next if f[0] == verb and f[1] == r.plural), None)
            if injected:
                self.fail_next.remove(injected)
                raise ApiError(injected[2], "InternalError" if injected[2] >= 500 else "Conflict", "injected failure")
            if verb == "watch":
                self._record(request, verb, r, sub, ns, name, 200)
                return await self._watch(request, r, ns)
            if sub == "log":
                self._record(request, verb, r, sub, ns, name, 200)
                return self._log(ns, name, request.query)
            if sub == "portforward":  # RBAC and the audit log call it "create", whatever the method
                host_ports = self._forwardable(request, ns, name)
                self._record(request, "create", r, sub, ns, name, 101)
                return await portforward.serve(request, host_ports, name)
            if sub == "scale":
                body = await self._scale(request, verb, r, ns, name)
                self._record(request, verb, r, sub, ns, name, 200)
                return web.json_response(body)
            if sub == "token":
                body = await self._token_request(request, ns, name)
                self._record(request, "create", r, sub, ns, name, 201)
                return web.json_response(body, status=201)
            # A server-side apply that creates its object answers 201, as kube-apiserver does.
            applies = verb == "patch" and not sub and request.content_type == "application/apply-patch+yaml"
            creates = verb == "create" or (applies and (r.group, r.plural, ns, name) not in self.store.objects)
            if applies and creates:
                self.store.tokens.check_create_on_apply(attrs)
            body = await self._dispatch(request, verb, r, ns, name, sub)
            self._record(request, verb, r, sub, ns, name, 201 if creates else 200)
            if verb in ("list",) and "as=Table" in request.headers.get("Accept", ""):
                body = self._table(r, body["items"], body["metadata"])
            elif verb == "get" and "as=Table" in request.headers.get("Accept", ""):
                body = self._table(r, [body], {"resourceVersion": body["metadata"]["resourceVersion"]})
            return web.json_response(body, status=201 if creates else 200)
        except ApiError as exc:
            self._record(request, verb, r, sub, ns, name, exc.code)
            if exc.code in (401, 403):  # as kube-apiserver's audit log, in the cluster's log
                log.warning("%s %s %s: %s", exc.code, request.method, request.path_qs, exc.message)
            return web.json_response(exc.status(), status=exc.code)

    def _discovery(self, parts: list[str]) -> Obj | None:
        with self.store.lock:
            if parts == ["api"]:
                return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}]}
            if parts == ["apis"]:
                return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in sorted({r.group for r in self.store.resources.values() if r.group})]}
            if parts[0] == "apis" and len(parts) == 2:
                return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
            gv = ("", parts[1]) if parts[0] == "api" and len(parts) == 2 else (parts[1], parts[2]) if parts[0] == "apis" and len(parts) == 3 else None
            if gv is None:
                return None
            resources = []
            for r in self.store.resources.values():
                if (r.group, r.version) != gv:
                    continue
                verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
                entry = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs}
                if r.short_names:
                    entry["shortNames"] = r.short_names
                if r.categories:
                    entry["categories"] = r.categories
                resources.append(entry)
                if r.has_status:
                    resources.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]})
                if ("token", r.plural) in SUBRESOURCES:
                    resources.append({"name": f"{r.plural}/token", "singularName": "", "namespaced": True, "kind": "TokenRequest",
                                      "group": "authentication.k8s.io", "version": "v1", "verbs": ["create"]})
                if r.scale is not None or ("scale", r.plural) in SUBRESOURCES:
                    resources.append({"name": f"{r.plural}/scale", "singularName": "", "namespaced": r.namespaced, "kind": "Scale",
                                      "group": "autoscaling", "version": "v1", "verbs": ["get", "patch", "update"]})
            if not resources:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "/".join(x for x in gv if x), "resources": resources}

    def _openapi_v2(self, request: web.Request) -> web.Response:
        """The OpenAPI v2 document, in JSON (406 to a client that accepts only its protobuf form)."""
        accept = request.headers.get("Accept", "")
        if accept and "json" not in accept and "*/*" not in accept:
            raise ApiError(406, "NotAcceptable", "only the following media types are accepted: application/json (the local "
                           "API server serves OpenAPI v2 in JSON, not in protobuf)")
        with self.store.lock:
            return web.json_response(openapi.v2(self.store.resources.values()))

    async def _token_request(self, request: web.Request, ns: str, name: str) -> Obj:
        """TokenRequest (`serviceaccounts/<name>/token`): a token for the ServiceAccount, bound to the
        pod its spec.boundObjectRef names (it is valid while both exist; it does not expire)."""
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            raise ApiError(400, "BadRequest", "the body must be a TokenRequest") from None
        spec = (body.get("spec") or {}) if isinstance(body, dict) else {}
        ref = spec.get("boundObjectRef") or {}
        pod = None
        if ref:
            if ref.get("kind") != "Pod":
                raise ApiError(422, "Invalid", f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.boundObjectRef.kind: '
                               f'Unsupported value: "{ref.get("kind")}" (the local API server binds tokens to Pods only)')
            pod = self.store.get("", "pods", ns, ref.get("name", ""))
            if pod is None or (ref.get("uid") and pod["metadata"]["uid"] != ref["uid"]):
                raise ApiError(404, "NotFound", f'pods "{ref.get("name", "")}" not found', {"name": ref.get("name", ""), "kind": "pods"})
        token = self.store.tokens.issue(ns, name, pod)
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": name, "namespace": ns},
                "spec": {**spec, "audiences": spec.get("audiences") or ["https://kubernetes.default.svc"]},
                "status": {"token": token, "expirationTimestamp": "2999-12-31T00:00:00Z"}}

    def _group(self, group: str) -> Obj:
        versions = sorted({r.version for r in self.store.resources.values() if r.group == group})
        if not versions:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _route(self, parts: list[str]) -> tuple[Resource, str, str, str]:
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        ns = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = self.store.resources.get((group, rest[2]))
            if candidate and candidate.namespaced:
                ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        r = self.store.resources.get((group, rest[0]))
        if r is None or r.version != version:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and not ((sub == "status" and r.has_status) or (sub == "scale" and r.scale is not None)
                        or (sub, r.plural) in SUBRESOURCES):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return r, ns, name, sub

    @staticmethod
    def _verb(method: str, name: str, query: Any) -> str:
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())

    async def _dispatch(self, request: web.Request, verb: str, r: Resource, ns: str, name: str, sub: str) -> Obj:
        q = request.query
        strict = q.get("fieldValidation") == "Strict"
        dry_run = q.get("dryRun") == "All"
        if verb == "get":
            obj = self.store.get(r.group, r.plural, ns, name)
            if obj is None:
                raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found'.replace(". ", " "), {"name": name, "group": r.group, "kind": r.plural})
            return obj
        if verb == "list":
            preds = parse_label_selector(q.get("labelSelector", ""))
            with self.store.lock:
                items = [o for o in self.store.list_objects(r.group, r.plural, ns if r.namespaced and ns else None) if matches(o, preds, q.get("fieldSelector", ""))]
                return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}
        if verb == "deletecollection":
            preds = parse_label_selector(q.get("labelSelector", ""))
            items = [o for o in self.store.list_objects(r.group, r.plural, ns or None) if matches(o, preds, q.get("fieldSelector", ""))]
            for o in items:
                with contextlib.suppress(ApiError):
                    self.store.delete(r, ns, o["metadata"]["name"])
            return {"kind": f"{r.kind}List", "apiVersion": r.api_version, "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if verb == "delete":
            # DeleteOptions: JSON, or protobuf from client-go's typed clients (Helm deleting its release
            # Secrets), whose options the local API server does not decode: the defaults apply.
            opts = json.loads(raw) if raw and ctype != kubeproto.MEDIA_TYPE else {}
            propagation = q.get("propagationPolicy") or opts.get("propagationPolicy") or ("Orphan" if opts.get("orphanDependents") else "Background")
            grace = q.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
            try:
                return self.store.delete(r, ns, name, propagation, None if grace is None else int(grace))
            except ValueError:
                raise ApiError(400, "BadRequest", f"gracePeriodSeconds: invalid value {grace!r}") from None
        body = _decode_body(raw, ctype)
        if verb == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "the body must be an object")
            return self.store.create(r, ns, body, strict, dry_run)
        if verb == "update":
            return self.store.update(r, ns, name, body, sub, strict)
        if verb == "patch":
            return self._patch(r, ns, name, sub, ctype, body, q, strict)
        raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported")

    def _patch(self, r: Resource, ns: str, name: str, sub: str, ctype: str, patch: Any, q: Any, strict: bool) -> Obj:
        import jsonpatch

        with self.store.lock:
            key = (r.group, r.plural, ns, name)
            live = self.store.get(r.group, r.plural, ns, name)
            if ctype == "application/apply-patch+yaml":
                manager = q.get("fieldManager")
                if not manager:
                    raise ApiError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                if not isinstance(patch, dict):
                    raise ApiError(400, "BadRequest", "apply patch must be an object")
                patch.setdefault("metadata", {}).setdefault("name", name)
                if r.namespaced:
                    patch["metadata"].setdefault("namespace", ns)
                intent = copy.deepcopy(patch)
                intent["metadata"].pop("resourceVersion", None)
                prev = self.store.applied.get((key, manager, sub))
                if live is None:
                    if sub:
                        raise ApiError(404, "NotFound", f'{r.plural} "{name}" not found')
                    result = self.store.create(r, ns, copy.deepcopy(intent), strict)
                else:
                    want_rv = patch["metadata"].get("resourceVersion")
                    if want_rv and want_rv != live["metadata"]["resourceVersion"]:
                        raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been modified; please apply your changes to the latest version and try again')
                    base = {k: v for k, v in live.items()}
                    new = server_side_apply(base, intent, prev)
                    new["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
                    result = self.store.update(r, ns, name, new, sub, strict)
                self.store.applied[(key, manager, sub)] = intent
                return result
            if live is None:
                raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found'.replace(". ", " "), {"name": name, "group": r.group, "kind": r.plural})
            if ctype == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(live, patch)
                except jsonpatch.JsonPatchTestFailed as exc:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
                    raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
            elif ctype == "application/merge-patch+json":
                new = merge_patch(live, patch)
            elif ctype == "application/strategic-merge-patch+json":
                if r.custom:
                    raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
                new = strategic_merge(live, patch)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype}")
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            patch_rv = (patch.get("metadata") or {}).get("resourceVersion") if isinstance(patch, dict) else None
            new.setdefault("metadata", {})["resourceVersion"] = patch_rv or live["metadata"]["resourceVersion"]
            return self.store.update(r, ns, name, new, sub, strict)

    async def _watch(self, request: web.Request, r: Resource, ns: str) -> web.StreamResponse:
        q = request.query
        preds = parse_label_selector(q.get("labelSelector", ""))
        field_sel = q.get("fieldSelector", "")
        since = q.get("resourceVersion", "")
        timeout = float(q.get("timeoutSeconds", "1800"))
        as_table = "as=Table" in request.headers.get("Accept", "")
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self.store.lock:
            if since not in ("", "0") and int(since) < self.store.compacted_rv:
                backlog: list[tuple[int, str, Obj]] | None = None
            elif since in ("", "0") or q.get("sendInitialEvents") == "true":
                backlog = [(self.store.rv, "ADDED", o) for o in self.store.list_objects(r.group, r.plural, ns or None)]
            else:
                backlog = [(rv, t, o) for rv, t, g, p, o in self.store.history if g == r.group and p == r.plural and rv > int(since)]
            watcher = (r.group, r.plural, queue)
            self.store.watchers.append(watcher)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        try:
            if backlog is None:
                gone = ApiError(410, "Expired", f"too old resource version: {since} ({self.store.compacted_rv})").status()
                await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return resp
            for item in backlog:
                queue.put_nowait(item)
            if q.get("sendInitialEvents") == "true":
                # WatchList (kubectl >= 1.32): initial state, then a bookmark marking its end.
                bookmark = {"kind": r.kind, "apiVersion": r.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv), "annotations": {"k8s.io/initial-events-end": "true"}}}
                queue.put_nowait((self.store.rv, "BOOKMARK", bookmark))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
                if item is None:
                    break
                _, etype, obj = item
                if etype != "BOOKMARK":
                    if ns and obj["metadata"].get("namespace") != ns:
                        continue
                    if not matches(obj, preds, field_sel):
                        continue
                if as_table and etype != "BOOKMARK":  # `kubectl get -w`: each event's object as a one-row Table
                    obj = self._table(r, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion", "")})
                await resp.write(json.dumps({"type": etype, "object": obj}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self.store.lock:
                if watcher in self.store.watchers:
                    self.store.watchers.remove(watcher)
        return resp

    def _log(self, ns: str, name: str, q: Any) -> web.Response:
        pod = self.store.get("", "pods", ns, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        container = q.get("container") or (containers[0] if len(containers) == 1 else "")
        if container not in containers:
            raise ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, choose one of: {containers}")
        tail = int(q["tailLines"]) if q.get("tailLines", "").isdigit() else None
        text = self.store.log_source(ns, name, container, tail) if self.store.log_source else None
        if text is None:
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: no log yet')
        return web.Response(text=text, content_type="text/plain")

    def _forwardable(self, request: web.Request, ns: str, name: str) -> dict[int, int]:
        """A running pod's container ports -> host ports, for a port-forward kubectl can open here."""
        pod = self.store.get("", "pods", ns, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise ApiError(400, "BadRequest", f"the local API server forwards ports over a WebSocket ({portforward.PROTOCOL}, "
                           "kubectl 1.31 or later), not over a SPDY upgrade")
        ports = json.loads((pod["metadata"].get("annotations") or {}).get(HOST_PORTS_ANNOTATION) or "{}")
        return {int(k): int(v) for k, v in ports.items()}

    async def _scale(self, request: web.Request, verb: str, r: Resource, ns: str, name: str) -> Obj:
        """The scale subresource (autoscaling/v1 Scale): `kubectl scale` and HorizontalPodAutoscalers;
        for a custom resource at the paths its CRD names (specReplicasPath, statusReplicasPath,
        labelSelectorPath)."""
        obj = self.store.get(r.group, r.plural, ns, name)
        if obj is None:
            raise ApiError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found', {"name": name, "kind": r.plural})
        paths = r.scale or {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}
        spec_path = _path(paths["specReplicasPath"])
        if verb in ("update", "patch"):
            raw = await request.read()
            try:
                body = json.loads(raw or b"{}")
                replicas = int(body["spec"]["replicas"])
            except (ValueError, TypeError, KeyError):
                raise ApiError(400, "BadRequest", "the body must be a Scale with spec.replicas") from None
            obj = self.store.update(r, ns, name, _with(obj, spec_path, replicas))
        elif verb != "get":
            raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported on scale")
        if r.scale is not None:
            selector = str(_at(obj, _path(r.scale.get("labelSelectorPath", ""))) or "")
        else:
            selector = ",".join(f"{k}={v}" for k, v in sorted(((obj["spec"].get("selector") or {}).get("matchLabels") or {}).items()))
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in obj["metadata"]},
                "spec": {"replicas": _at(obj, spec_path) if _at(obj, spec_path) is not None else 1},
                "status": {"replicas": _at(obj, _path(paths["statusReplicasPath"])) or 0, "selector": selector}}

    def _table(self, r: Resource, items: list[Obj], list_meta: Obj) -> Obj:
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "name", "priority": 0}]
        builtin = printers.COLUMNS.get((r.group, r.plural))
        extra = r.printer_columns or ([] if builtin else [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}])
        for name, ctype, priority, _ in builtin or []:
            columns.append({"name": name, "type": ctype, "format": "", "description": name, "priority": priority})
        for c in extra:
            columns.append({"name": c["name"], "type": "string" if c["type"] == "date" else c["type"], "format": c.get("format", ""), "description": c.get("description", ""), "priority": c.get("priority", 0)})
        rows = []
        for o in items:
            cells: list[Any] = [o["metadata"]["name"]]
            cells += [fn(o) for _, _, _, fn in builtin or []]
            for c in extra:
                found = jsonpath(o, c["jsonPath"])
                value = found[0] if found else None
                if c["type"] == "date":
                    value = age(value)
                elif value is None:
                    value = "<none>" if c["type"] == "string" else None
                cells.append(value)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": columns, "rows": rows}


def _decode_body(raw: bytes, ctype: str) -> Any:
    """A create/update/patch body: JSON, YAML, or protobuf for the kinds `kubeproto` reads (415 for
    others, as kube-apiserver answers a media type it cannot decode)."""
    if ctype == kubeproto.MEDIA_TYPE:
        try:
            return kubeproto.decode(raw)
        except kubeproto.Unsupported as exc:
            kinds = ", ".join(kind for _, kind in kubeproto.KINDS)
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format ({exc}) - the local "
                           f"API server reads protobuf for {kinds} only; accepted media types include: application/json, "
                           "application/yaml (kubectl apply -f sends JSON)") from None
    try:
        return yaml.safe_load(raw) if ctype.endswith("yaml") else json.loads(raw or b"null")
    except (ValueError, yaml.YAMLError) as exc:
        raise ApiError(400, "BadRequest", f"cannot decode the body: {exc}") from None


def _path(json_path: str) -> list[str]:
    """A CRD scale path (".spec.replicas") as keys."""
    return [k for k in json_path.split(".") if k]


def _at(obj: Obj, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)  # type: ignore[assignment]
    return obj


def _with(obj: Obj, keys: list[str], value: Any) -> Obj:
    """A copy of obj with the value at keys replaced (intermediate maps created)."""
    if not keys:
        return obj
    head, rest = keys[0], keys[1:]
    found = obj.get(head)
    inner: Obj = found if isinstance(found, dict) else {}
    return {**obj, head: _with(inner, rest, value) if rest else value}
