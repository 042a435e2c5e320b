"""The in-process client of the local cluster's controllers and node agent.

They run in the same process as the API server and talk to its store directly (no HTTP, no JSON),
which keeps an idle cluster near zero CPU; every write still goes through the store's admission,
resourceVersion, generation and watch machinery, so kubectl and the operator see exactly what a
real cluster's controllers would write. `Client` methods take and return plain dicts; errors are
`ApiError` (404, 409, 422 ...), as the HTTP API would answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from localcluster.apimachinery import ApiError, Resource
from localcluster.objects import Obj, meta, name_of, namespace_of, timestamp, uid_of, utcnow
from localcluster.store import Store

log = logging.getLogger("localcluster")


class Client:
    def __init__(self, api: Store, component: str):
        self.api, self.component = api, component
        self._events: dict[tuple[str, str, str, str], str] = {}  # (namespace, uid, reason, message) -> Event name

    def _resource(self, group: str, plural: str) -> Resource:
        return self.api.resources[(group, plural)]

    def get(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        return self.api.get(group, plural, namespace, name)

    def list(self, group: str, plural: str, namespace: str | None = None) -> list[Obj]:
        return self.api.list_objects(group, plural, namespace)

    def create(self, group: str, plural: str, obj: Obj) -> Obj:
        return self.api.create(self._resource(group, plural), namespace_of(obj), obj)

    def replace(self, group: str, plural: str, obj: Obj) -> Obj:
        """Write the whole object (spec, metadata) with its resourceVersion: 409 if it changed meanwhile."""
        return self.api.update(self._resource(group, plural), namespace_of(obj), name_of(obj), obj)

    def write_status(self, group: str, plural: str, obj: Obj, status: Obj) -> Obj | None:
        """Set the status subresource (None if the object is gone); a no-op when unchanged."""
        if obj.get("status") == status:
            return obj
        try:
            return self.api.update(self._resource(group, plural), namespace_of(obj), name_of(obj),
                                   {"metadata": {"name": name_of(obj)}, "status": status}, subresource="status")
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def delete(self, group: str, plural: str, namespace: str, name: str, grace: int | None = None) -> None:
        with contextlib.suppress(ApiError):
            self.api.delete(self._resource(group, plural), namespace, name, "Background", grace)

    def subscribe(self, resources: set[tuple[str, str]], callback: Callable[[str, str, Obj], None],
                  loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        return self.api.subscribe(resources, callback, loop)

    def event(self, obj: Obj, etype: str, reason: str, message: str) -> None:
        """A v1 Event about `obj`, as a controller or kubelet posts it (repeats bump count)."""
        ns = namespace_of(obj) or "default"
        stamp = timestamp(utcnow())
        involved = {"apiVersion": obj.get("apiVersion", ""), "kind": obj.get("kind", ""), "name": name_of(obj),
                    "namespace": namespace_of(obj), "uid": uid_of(obj), "resourceVersion": meta(obj).get("resourceVersion", "")}
        key = (ns, uid_of(obj), reason, message)
        existing = self.api.get("", "events", ns, self._events[key]) if key in self._events else None
        if existing is not None:
            existing.update(count=int(existing.get("count") or 1) + 1, lastTimestamp=stamp)
            with contextlib.suppress(ApiError):
                self.api.update(self._resource("", "events"), ns, name_of(existing), existing)
            return
        body: Obj = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name_of(obj)}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": involved, "type": etype, "reason": reason, "message": message[:1024],
            "source": {"component": self.component}, "reportingComponent": self.component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            self.api.create(self._resource("", "events"), ns, body)
            self._events[key] = body["metadata"]["name"]
        except ApiError as exc:  # an event must never break the controller posting it
            log.debug("event %s on %s/%s not recorded: %s", reason, ns, name_of(obj), exc)
