"""Services reachable from this machine: kube-proxy's part of the local cluster.

Every port of every Service but the headless ones listens on 127.0.0.1 (a port the OS picks, recorded in
the Service's annotation `localcluster.modeldeploy.io/ports`, port name -> local port) and forwards
each accepted connection, whole, to one endpoint of the Service's EndpointSlices, round-robin over
the ready endpoints (if none is ready, over the serving ones that are terminating, as kube-proxy
falls back to; with none at all, the connection is reset, as kube-proxy rejects it). Balancing is
per connection, as with kube-proxy: a long-lived connection (a gRPC channel, an HTTP keep-alive
session) stays on the pod it was opened to until one side closes it. A Service without a selector is
routed the same way, by the EndpointSlices someone else writes (kube-proxy does not care who wrote
them: the operator writes them for a ModelDeployment that scales to zero).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from localcluster import endpoints
from localcluster.apimachinery import ApiError
from localcluster.client import Client
from localcluster.connections import LoopbackServer, reset, splice
from localcluster.objects import (
    SERVICE_PORTS_ANNOTATION,
    Obj,
    annotations_of,
    labels_of,
    name_of,
    namespace_of,
)

log = logging.getLogger("localcluster.proxy")
Endpoint = tuple[str, int]


@dataclass
class Balancer:
    """Round-robin over a Service port's endpoints (pure; `pick` is the kube-proxy decision)."""

    ready: list[Endpoint] = field(default_factory=list)
    fallback: list[Endpoint] = field(default_factory=list)  # serving but terminating
    _next: int = 0

    @classmethod
    def from_slices(cls, slices: list[Obj], port_name: str) -> Balancer:
        b = cls()
        b.update(slices, port_name)
        return b

    def update(self, slices: list[Obj], port_name: str) -> None:
        found = endpoints.endpoints_of(slices, port_name)
        self.ready = sorted({(a, p) for a, p, c in found if c.get("ready")})
        self.fallback = sorted({(a, p) for a, p, c in found if not c.get("ready") and c.get("serving") and c.get("terminating")})

    def pick(self) -> Endpoint | None:
        pool = self.ready or self.fallback
        if not pool:
            return None
        choice = pool[self._next % len(pool)]
        self._next += 1
        return choice


class PortListener:
    """One Service port on 127.0.0.1: each connection goes, whole, to the endpoint the balancer picks."""

    def __init__(self, balancer: Balancer):
        self.balancer = balancer
        self.server = LoopbackServer(self._forward)

    @property
    def port(self) -> int:
        return self.server.port

    async def start(self, port: int = 0) -> int:
        """Listen on `port` (the one an earlier run recorded; any free one if it is taken now)."""
        return await self.server.start(port)

    async def close(self) -> None:
        await self.server.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self.balancer.pick()
        if target is None:
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            reset(writer)
            return
        await splice(reader, writer, up_reader, up_writer)


def port_key(service_port: Obj) -> str:
    return str(service_port.get("name") or service_port.get("port"))


class ServiceProxy:
    """Listeners for every Service port, following Services and EndpointSlices."""

    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop
        self.listeners: dict[tuple[str, str, str], PortListener] = {}  # (ns, service, port key)
        self._unsubscribe = lambda: None
        self._pending: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # one sync at a time: a listener is created once

    async def start(self) -> None:
        self._unsubscribe = self.client.subscribe({("", "services"), ("discovery.k8s.io", "endpointslices")}, self.on_event, self.loop)
        for svc in self.client.list("", "services"):
            await self.sync_service(namespace_of(svc), name_of(svc))

    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        ns = namespace_of(obj)
        name = name_of(obj) if plural == "services" else labels_of(obj).get(endpoints.SERVICE_NAME_LABEL)
        if not name:
            return
        task = self.loop.create_task(self.sync_service(ns, name))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def sync_service(self, ns: str, name: str) -> None:
        async with self._lock:
            await self._sync(ns, name)

    async def _sync(self, ns: str, name: str) -> None:
        svc = self.client.get("", "services", ns, name)
        spec = (svc or {}).get("spec") or {}
        # kube-proxy gives no virtual IP to a headless Service (clusterIP: None): clients reach
        # those pods through their EndpointSlices; a Service without a selector has one, and its
        # traffic goes to the endpoints of the slices labelled with its name, whoever wrote them
        proxied = bool(svc and spec.get("clusterIP") != "None")
        wanted = {port_key(p): p for p in spec.get("ports") or []} if proxied else {}
        for gone in [k for k in self.listeners if k[:2] == (ns, name) and k[2] not in wanted]:
            await self.listeners.pop(gone).close()
        slices = [s for s in self.client.list("discovery.k8s.io", "endpointslices", ns)
                  if labels_of(s).get(endpoints.SERVICE_NAME_LABEL) == name]
        previous = _recorded_ports(svc) if svc else {}
        for key, sp in wanted.items():
            listener = self.listeners.get((ns, name, key))
            if listener is None:
                listener = self.listeners[(ns, name, key)] = PortListener(Balancer())
                await listener.start(previous.get(key, 0))
            listener.balancer.update(slices, str(sp.get("name", "")))
        if svc is not None and wanted:
            self._record(ns, name, {k: self.listeners[(ns, name, k)].port for k in wanted})

    def _record(self, ns: str, name: str, ports: dict[str, int]) -> None:
        value = json.dumps(ports, sort_keys=True)
        for _ in range(10):
            svc = self.client.get("", "services", ns, name)
            if svc is None or annotations_of(svc).get(SERVICE_PORTS_ANNOTATION) == value:
                return
            svc["metadata"].setdefault("annotations", {})[SERVICE_PORTS_ANNOTATION] = value
            try:
                self.client.replace("", "services", svc)
                return
            except ApiError as exc:
                if exc.code != 409:
                    log.warning("recording the local ports of service %s/%s: %s", ns, name, exc)
                    return

    def local_port(self, ns: str, name: str, port: str) -> int | None:
        listener = self.listeners.get((ns, name, port))
        return listener.port if listener else None

    async def close(self) -> None:
        self._unsubscribe()
        for t in list(self._pending):
            t.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        for listener in self.listeners.values():
            await listener.close()
        self.listeners.clear()


def _recorded_ports(svc: Obj) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(annotations_of(svc).get(SERVICE_PORTS_ANNOTATION) or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        return {}
