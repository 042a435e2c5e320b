"""The kubectl verbs the docs use, against the local API server, as a reader types them.

kubectl 1.37 sends the objects it makes itself (`kubectl create namespace|configmap|secret`) in
Kubernetes' protobuf encoding, with no fallback to JSON (its client falls back only from CBOR): the
API server must read them (`kubeproto`), and answers 415 UnsupportedMediaType for the kinds it does
not read, naming the way that works. `kubectl port-forward` speaks SPDY inside a WebSocket
(`portforward`). The tests rely on kubectl's real requests, nothing replayed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster.fakeapi import FakeKubeAPI
from localcluster.objects import HOST_PORTS_ANNOTATION

KUBECTL = Path(sys.executable).parent / "kubectl"


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(simulate_deployments=False) as api:
        yield api


def kubectl(fake: FakeKubeAPI, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    return subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_kubectl_create_namespace_configmap_and_secret(fake: FakeKubeAPI, tmp_path: Path) -> None:
    assert ok(kubectl(fake, tmp_path, "create", "namespace", "ml", "--dry-run=server")) == "namespace/ml created (server dry run)\n"
    assert fake.get("", "namespaces", "", "ml") is None
    assert ok(kubectl(fake, tmp_path, "create", "namespace", "ml")) == "namespace/ml created\n"
    ns = fake.get("", "namespaces", "", "ml")
    assert ns["metadata"]["name"] == "ml" and ns["metadata"]["uid"]
    (tmp_path / "requests.json").write_text('{"instances": [1.0]}')
    (tmp_path / "blob").write_bytes(b"\xff\x00\xfe")  # not UTF-8: kubectl puts it in binaryData
    ok(kubectl(fake, tmp_path, "-n", "ml", "create", "configmap", "reqs", "--from-literal=empty=", "--from-literal=a=1",
               f"--from-file={tmp_path / 'requests.json'}", f"--from-file={tmp_path / 'blob'}"))
    cm = fake.get("", "configmaps", "ml", "reqs")
    assert cm["data"] == {"a": "1", "empty": "", "requests.json": '{"instances": [1.0]}'}
    assert cm["binaryData"] == {"blob": base64.b64encode(b"\xff\x00\xfe").decode()}
    ok(kubectl(fake, tmp_path, "-n", "ml", "create", "secret", "generic", "token", "--from-literal=token=s3cret",
               "--type=example.com/token"))
    secret = fake.get("", "secrets", "ml", "token")
    assert secret["data"] == {"token": base64.b64encode(b"s3cret").decode()} and secret["type"] == "example.com/token"
    ok(kubectl(fake, tmp_path, "-n", "ml", "label", "secret", "token", "team=a"))
    assert "team=a" in ok(kubectl(fake, tmp_path, "-n", "ml", "get", "secret", "token", "--show-labels"))


def test_a_kind_it_cannot_read_in_protobuf_is_415_naming_what_works(fake: FakeKubeAPI, tmp_path: Path) -> None:
    p = kubectl(fake, tmp_path, "create", "deployment", "web", "--image=nginx")
    assert p.returncode == 1
    assert "apps/v1/Deployment in protobuf" in p.stderr and "kubectl apply -f sends JSON" in p.stderr
    assert fake.get("apps", "deployments", "default", "web") is None
    assert ("create", "apps", "deployments", "", "default", "", 415) in [
        (e.verb, e.apiGroup, e.resource, e.subresource, e.namespace, e.name, e.code) for e in fake.audit()]


@pytest.fixture
def upper_server() -> Iterator[int]:
    """A TCP server answering each connection's bytes in upper case, until the client closes its side."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), UpperHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class UpperHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data.upper())


def forwarded(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_kubectl_port_forward_reaches_the_pods_port(fake: FakeKubeAPI, tmp_path: Path, upper_server: int) -> None:
    """kubectl 1.37's own port-forward (SPDY in a WebSocket): several connections, large ones, both
    directions, half-close; a port the pod does not declare is refused on kubectl's error stream."""
    fake.add_object({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "web", "namespace": "default", "annotations": {HOST_PORTS_ANNOTATION: json.dumps({"8500": upper_server})}},
                     "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8500}]}]},
                     "status": {"phase": "Running"}})
    env = dict(os.environ, KUBECONFIG=str(fake.write_kubeconfig(tmp_path / "kubeconfig")))
    proc = subprocess.Popen([str(KUBECTL), "port-forward", "pod/web", "0:8500", "0:9999"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]  # "Forwarding from 127.0.0.1:N -> 8500", then [::1]
        local = {int(m.group(2)): int(m.group(1)) for line in lines if (m := re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line))}
        assert sorted(local) == [8500, 9999], lines
        big = bytes(range(97, 123)) * 40_000  # 1 MB
        assert forwarded(local[8500], big) == big.upper()
        assert [forwarded(local[8500], b"hello %d" % i) for i in range(3)] == [b"HELLO %d" % i for i in range(3)]
        assert ("create", "", "pods", "portforward", "default", "web") in [
            (e.verb, e.apiGroup, e.resource, e.subresource, e.namespace, e.name) for e in fake.audit()]
        assert forwarded(local[9999], b"x") == b""
        out, _ = proc.communicate(timeout=20)  # kubectl ends a port-forward whose pod side failed
        assert "error forwarding port 9999 to pod web: port 9999 is not a declared containerPort of pod web" in out
    finally:
        proc.kill()
        proc.wait()
