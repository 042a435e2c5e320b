"""The kubectl verbs the docs use, against the local API server, as a reader types them.

kubectl 1.37 sends the objects it makes itself (`kubectl create namespace|configmap|secret`) in
Kubernetes' protobuf encoding, with no fallback to JSON (its client falls back only from CBOR): the
API server must read them (`kubeproto`), and answers 415 UnsupportedMediaType for the kinds it does
not read, naming the way that works. The tests rely on kubectl's real requests, nothing replayed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster.fakeapi import FakeKubeAPI

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
