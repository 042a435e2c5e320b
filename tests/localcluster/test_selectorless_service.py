"""A Service without a selector on the local cluster, as kube-proxy treats one: it gets a local
port, and its connections go to the endpoints of the EndpointSlices labelled with its name that
someone else wrote (the operator, for a ModelDeployment that scales to zero); the EndpointSlice
controller leaves those slices alone. Relies on: the fake API server's watch, the proxy, and the
EndpointSlice controller of `make run`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from localcluster.client import Client
from localcluster.controllers import ControllerManager
from localcluster.fakeapi import FakeKubeAPI
from localcluster.proxy import ServiceProxy


async def _backend(name: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b":" + await reader.read(100))
        await writer.drain()
        writer.close()
    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def _ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"hi")
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(100), 5)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()


def endpoint_slice(name: str, port: int) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "ml",
                         "labels": {"kubernetes.io/service-name": "m",
                                    "endpointslice.kubernetes.io/managed-by": "modeldeploy.io/operator"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}


async def _until(check, what: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_service_without_a_selector_follows_the_slices_others_write(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    a, b = await _backend(b"a"), await _backend(b"b")
    pa, pb = (s.sockets[0].getsockname()[1] for s in (a, b))
    with FakeKubeAPI(simulate_deployments=False) as api:
        client = Client(api, "test")
        client.create("", "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}})
        manager = ControllerManager(Client(api, "controller-manager"), loop, tmp_path)
        proxy = ServiceProxy(Client(api, "kube-proxy"), loop)
        await proxy.start()
        try:
            client.create("", "services", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "m", "namespace": "ml"},
                                           "spec": {"ports": [{"name": "http", "port": 8501}]}})
            client.create("discovery.k8s.io", "endpointslices", endpoint_slice("m-md-1", pa))

            async def listening() -> bool:
                return proxy.local_port("ml", "m", "http") is not None
            await _until(listening, "a local port for the selector-less Service")
            port = proxy.local_port("ml", "m", "http")
            assert port is not None

            async def reaches(name: bytes) -> bool:
                return await _ask(port) == name + b":hi"
            await _until(lambda: reaches(b"a"), "the slice's endpoint")
            client.delete("discovery.k8s.io", "endpointslices", "ml", "m-md-1")
            client.create("discovery.k8s.io", "endpointslices", endpoint_slice("m-md-2", pb))
            await _until(lambda: reaches(b"b"), "the new slice's endpoint")
            # the EndpointSlice controller does not delete a slice it does not manage
            assert client.get("discovery.k8s.io", "endpointslices", "ml", "m-md-2") is not None
        finally:
            await proxy.close()
            manager.close()
            for s in (a, b):
                s.close()
                await s.wait_closed()
