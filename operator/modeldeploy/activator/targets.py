"""One ModelDeployment on the activator: its gate and its two listeners (gRPC and REST, on ports the
OS picks, which the operator writes into the Service's EndpointSlice while there is no ready pod),
and the registry of them all with the demand sequence the operator long-polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import grpc
from aiohttp import web

from modeldeploy.activator.forward_grpc import GrpcForwarder
from modeldeploy.activator.forward_rest import RestForwarder
from modeldeploy.activator.hold import Endpoint, Gate, Limits


@dataclass
class Target:
    gate: Gate
    grpc_port: int
    http_port: int
    grpc_server: grpc.aio.Server
    grpc_forwarder: GrpcForwarder
    runner: web.AppRunner

    @classmethod
    async def start(cls, gate: Gate, bind: str) -> Target:
        forwarder = GrpcForwarder(gate)
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1),
                                          ("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers((forwarder,))
        grpc_port = server.add_insecure_port(f"{bind}:0")
        await server.start()
        # a stop (DELETE, SIGTERM) waits at most 2 s for held requests: their clients see the connection close
        runner = web.AppRunner(RestForwarder(gate).app(), access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, bind, 0)
        await site.start()
        http_port = runner.addresses[0][1]
        return cls(gate, grpc_port, http_port, server, forwarder, runner)

    async def set_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.gate.set_endpoints(endpoints)
        await self.grpc_forwarder.forget(endpoints)

    async def stop(self) -> None:
        await self.grpc_server.stop(grace=1)
        await self.grpc_forwarder.forget(())
        await self.runner.cleanup()


class Registry:
    """Every ModelDeployment the operator put here; `seq` grows whenever one's demand begins."""

    def __init__(self, bind: str):
        self.bind = bind
        self.targets: dict[tuple[str, str], Target] = {}
        self.seq = 0
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()

    async def put(self, namespace: str, name: str, limits: Limits, endpoints: tuple[Endpoint, ...]) -> Target:
        async with self._lock:
            target = self.targets.get((namespace, name))
            if target is None:
                gate = Gate(namespace, name, limits)
                gate.on_demand.append(self._demand)
                target = self.targets[(namespace, name)] = await Target.start(gate, self.bind)
        target.gate.limits = limits
        await target.set_endpoints(endpoints)
        return target

    async def delete(self, namespace: str, name: str) -> bool:
        async with self._lock:
            target = self.targets.pop((namespace, name), None)
        if target is None:
            return False
        await target.stop()
        return True

    def _demand(self) -> None:
        self.seq += 1
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_demand(self, after: int, timeout: float) -> int:
        """The sequence once it is past `after`, or after `timeout` seconds."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(lambda: self.seq > after), timeout)
        return self.seq

    def waiting(self) -> list[dict[str, object]]:
        return [t.gate.report() for t in self.targets.values() if t.gate.held]

    async def close(self) -> None:
        for key in list(self.targets):
            await self.delete(*key)
