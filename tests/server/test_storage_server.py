"""Models served from real object stores on loopback (object_stores.py: moto's S3 API,
fake-gcs-server's GCS JSON API, Azurite's Blob API), each behind a proxy that can slow it down and
cut it: a model served end to end over REST and gRPC, a version uploaded while serving, an upload
in progress, a deleted version, a missing bucket, wrong credentials, and a store that goes away in
the middle of a download and comes back.

What the tests rely on of the stand-ins: each lists and reads objects as its cloud does (ranged
reads, ETags or generations), keeps its objects across a stop and a start, and refuses a request
signed with a key it does not know as its cloud does (moto: 403 InvalidAccessKeyId; Azurite: 403
AuthenticationFailed; for GCS, Google's token endpoint is stood in for by one that refuses the
grant, since clients send no credentials to an emulator). One store and one server per store,
shared by the module's tests, which run in order (each says what state it leaves)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import object_stores
import pytest
import requests
from demomodels import model_config_text
from server_support import ServerProcess, predict_request, wait_for
from support import free_port

TOKEN = "storage-admin-token-0123456789"
V1 = [2.5, 3.0]  # two_versions/1 (x / 2 + 2) on [1, 2]
V2 = [4.0, 5.0]  # two_versions/2 (x + 3)
MISSING_BUCKET = "no-such-bucket"
BIG_ASSET = 3 << 20  # an extra file in version 3, so that its download takes a while when paced
SLOW_RATE = 512 << 10  # bytes/s the proxy lets through while a test stops the store mid-download


class Served:
    """A model-server started against one store, and what the tests read from it."""

    def __init__(self, srv: ServerProcess, store: object_stores.Store, admin_port: int) -> None:
        self.srv, self.store, self.admin_port = srv, store, admin_port

    def admin(self) -> dict[str, Any]:
        r = requests.get(f"http://127.0.0.1:{self.admin_port}/v1/admin/models",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        r.raise_for_status()
        return dict(r.json()["models"])

    def states(self, model: str = "m") -> dict[str, str]:
        return {s["version"]: s["state"] for s in self.srv.model_state(model)}

    def predict(self, model: str = "m", version: int | None = None) -> requests.Response:
        path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
        return requests.post(self.srv.url + path, json={"instances": [1.0, 2.0]}, timeout=10)


@pytest.fixture(scope="module", params=["s3", "gcs", "azure"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object_stores.Store]:
    with object_stores.running(request.param, tmp_path_factory.mktemp(f"store-{request.param}") / "data") as s:
        yield s


@pytest.fixture(scope="module")
def served(store: object_stores.Store, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server over the store: `m` (policy latest 1, version 1 uploaded before it starts) and
    `gone` (a bucket that does not exist: never ready, so the server's readiness stays false;
    the tests wait on `m`)."""
    d = tmp_path_factory.mktemp("served")
    store.upload_dir(models_dir / "two_versions" / "1", "m/1")
    (d / "models.config").write_text(model_config_text([("m", store.uri("m")),
                                                        ("gone", store.uri("m", bucket=MISSING_BUCKET))]))
    (d / "token").write_text(TOKEN + "\n")
    admin = free_port()
    srv = ServerProcess([f"--model_config_file={d / 'models.config'}", "--file_system_poll_wait_seconds=1",
                         f"--model_cache_dir={d / 'cache'}", f"--admin_port={admin}", f"--admin_token_file={d / 'token'}"],
                        d / "server.log", env={**object_stores.no_store_env(), **store.env})
    try:
        out = Served(srv, store, admin)
        srv.wait_until(lambda: out.states().get("1") == "AVAILABLE", "version 1 of m")
        yield out
    finally:
        srv.stop()


def test_a_model_is_served_from_the_store_over_rest_and_grpc(served: Served) -> None:
    from tensorflow_serving.apis import (
        get_model_status_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    assert served.predict().json() == {"predictions": V1}
    with grpc.insecure_channel(served.srv.target) as ch:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(ch).Predict(
            predict_request("m", {"x": [1.0, 2.0]}), timeout=10)
        status_req = get_model_status_pb2.GetModelStatusRequest()
        status_req.model_spec.name = "m"
        status = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(status_req, timeout=10)
    assert list(next(iter(answer.outputs.values())).float_val) == V1
    assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
    version = served.admin()["m"]["versions"]["1"]
    assert version["source"] == served.store.uri("m") + "/1"
    assert version["download"]["bytes"] > 0 and not version["download"]["cached"]


def test_an_upload_in_progress_is_not_loaded_then_the_finished_version_is(served: Served, models_dir: Path) -> None:
    """Leaves version 2 AVAILABLE (and version 1 unloaded by the policy)."""
    v2 = models_dir / "two_versions" / "2"
    shard = "variables/variables.data-00000-of-00001"
    for f in sorted(p for p in v2.rglob("*") if p.is_file() and p.relative_to(v2).as_posix() != shard):
        served.store.put(f"m/2/{f.relative_to(v2).as_posix()}", f.read_bytes())
    # A poll has seen version 2 and left it, saying why; it is neither loading nor served.
    pending = wait_for(lambda: served.admin()["m"]["storage"]["pending"].get("2"), what="version 2 pending")
    assert "shard uploaded yet" in pending
    assert "2" not in served.states() and served.predict().json() == {"predictions": V1}
    served.store.put(f"m/2/{shard}", (v2 / shard).read_bytes())
    served.srv.wait_until(lambda: served.states().get("2") == "AVAILABLE", "version 2 AVAILABLE")
    assert served.predict().json() == {"predictions": V2}
    assert served.admin()["m"]["versions"]["2"]["source"] == served.store.uri("m") + "/2"
    log = served.srv.output()
    assert "loading m version 2 failed" not in log and "downloading m version 2 failed" not in log


def test_a_deleted_version_is_unloaded(served: Served) -> None:
    """Deletes version 2: the policy (latest 1) serves version 1 again. Leaves version 1 AVAILABLE."""
    served.store.delete_prefix("m/2")
    served.srv.wait_until(lambda: served.states() == {"1": "AVAILABLE", "2": "END"}, "version 2 unloaded")
    assert served.predict().json() == {"predictions": V1}


def test_a_missing_bucket_is_reported_and_other_models_keep_serving(served: Served) -> None:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    where = "container" if served.store.kind == "azure" else "bucket"
    r = requests.get(served.srv.url + "/v1/models/gone", timeout=5)
    assert r.status_code == 404 and f"{where} {MISSING_BUCKET} not found" in r.json()["error"]
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "gone"
    with grpc.insecure_channel(served.srv.target) as ch, pytest.raises(grpc.RpcError) as err:
        model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and MISSING_BUCKET in str(err.value.details())
    assert served.admin()["gone"]["storage"]["code"] == "NOT_FOUND"
    assert f"model gone: cannot list the store: {served.store.uri('m', bucket=MISSING_BUCKET)}: " in served.srv.output()
    assert served.predict().status_code == 200


def test_the_store_stopped_mid_download_then_back(served: Served, models_dir: Path) -> None:
    """Version 3 (version 2's model and a 3 MiB asset) is uploaded, its download paced, the store
    stopped in the middle of it: version 1 keeps answering, version 3 says why it is not loaded,
    and it loads once the store is back. Every answer meanwhile is a whole version's."""
    store = served.store
    v2 = models_dir / "two_versions" / "2"
    store.proxy.rate = SLOW_RATE
    store.put("m/3/assets/big.bin", bytes(range(256)) * (BIG_ASSET // 256))
    store.upload_dir(v2, "m/3", last="saved_model.pb")
    answers: list[tuple[int, Any]] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            with contextlib.suppress(requests.RequestException):
                r = served.predict()
                answers.append((r.status_code, r.json()))

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    stopped = False
    try:
        partial = Path(served.srv.log_path.parent / "cache" / ".partial")
        # the big object's file is opened when its first ranged read is sent (written when it returns)
        wait_for(lambda: any(partial.glob("*/assets/big.bin")), what="version 3's download under way")
        store.stop()
        stopped = True
        status = served.srv.wait_until(lambda: next((s for s in served.srv.model_state("m") if s["version"] == "3"
                                                     and s["status"]["error_code"] != "OK"), None),
                                       "version 3's download failure in its status", timeout=60)
        assert status["state"] == "END" and "store unreachable" in status["status"]["error_message"]
        assert served.predict(version=3).status_code == 404 and served.predict().json() == {"predictions": V1}
        store.proxy.rate = None
        store.start()
        stopped = False
        served.srv.wait_until(lambda: served.states().get("3") == "AVAILABLE", "version 3 AVAILABLE", timeout=90)
        assert served.predict().json() == {"predictions": V2}
        assert not any(partial.iterdir())
    finally:
        done.set()
        asker.join(timeout=15)
        store.proxy.rate = None
        if stopped:
            store.start()
    assert answers and all(code == 200 and body["predictions"] in (V1, V2) for code, body in answers), \
        [a for a in answers if a[0] != 200][:3]


def test_wrong_credentials_are_reported_without_the_secret(store: object_stores.Store, models_dir: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("denied")
    wrong = store.wrong_credentials()
    (d / "models.config").write_text(model_config_text([("local", str(models_dir / "half_plus_two")),
                                                        ("m", store.uri("m"))]))
    srv = ServerProcess([f"--model_config_file={d / 'models.config'}", "--file_system_poll_wait_seconds=1",
                         f"--model_cache_dir={d / 'cache'}"], d / "server.log",
                        env={**object_stores.no_store_env(), **wrong})
    try:
        srv.wait_until(lambda: any(s["state"] == "AVAILABLE" for s in srv.model_state("local")), "model local")
        r = srv.wait_until(lambda: [x for x in [requests.get(srv.url + "/v1/models/m", timeout=5)]
                                    if x.status_code != 200], "model m's status")[0]
        assert r.status_code == 403, r.text
        assert "access denied" in r.json()["error"] or "credentials refused" in r.json()["error"]
        assert requests.post(srv.url + "/v1/models/local:predict", json={"instances": [1.0]}, timeout=10).ok
        log = srv.output()
        assert "model m: cannot list the store: " in log
    finally:
        srv.stop()
    secrets = [v for k, v in wrong.items() if "SECRET" in k or "KEY" in k and "ID" not in k]
    if store.kind == "gcs":
        key = json.loads(Path(wrong["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())["private_key"]
        secrets.append(key.splitlines()[1])  # a line of the private key itself
    for text in (log, r.text):
        assert secrets and not any(s in text for s in secrets)


def test_the_serve_from_s3_example(models_dir: Path, tmp_path: Path) -> None:
    """examples/serve-from-s3.sh (make serve-s3): moto, `aws s3 cp`, model-server on s3://; stopped
    by SIGTERM, it stops both."""
    import signal
    import subprocess

    from server_support import REPO

    ports = {"S3_PORT": str(free_port()), "GRPC_PORT": str(free_port()), "REST_PORT": str(free_port())}
    env = {**object_stores.no_store_env(), **ports, "MODELS": str(models_dir), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(tmp_path / "example.log", "wb") as log:
        proc = subprocess.Popen(["bash", str(REPO / "examples" / "serve-from-s3.sh")], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{ports['REST_PORT']}/v1/models/two_versions:predict"

    def answer() -> Any:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "example.log").read_text()[-3000:])
        with contextlib.suppress(requests.RequestException):
            return requests.post(url, json={"instances": [1.0, 2.0]}, timeout=5).json().get("predictions")
        return None

    try:
        assert wait_for(answer, what="the example's server answering", timeout=120) == V2  # the latest version
        assert "s3://models/two_versions" in (tmp_path / "example.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for port in ports.values():  # moto and model-server are gone with it
        wait_for(lambda port=port: not _listening(int(port)), what=f"port {port} closed", timeout=30)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_a_model_from_a_webdav_server(models_dir: Path, tmp_path: Path) -> None:
    """An http(s):// base path that names no cloud: a directory listing over WebDAV (WsgiDAV). The
    model is served, a new version is loaded, and a deleted one is unloaded."""
    with object_stores.running("http", tmp_path / "dav" / "data") as store:
        store.upload_dir(models_dir / "two_versions" / "1", "m/1")
        srv = ServerProcess(["--model_name=m", f"--model_base_path={store.uri('m')}", "--file_system_poll_wait_seconds=1",
                             f"--model_cache_dir={tmp_path / 'cache'}"], tmp_path / "server.log",
                            env=object_stores.no_store_env())
        try:
            served = Served(srv, store, 0)
            srv.wait_until(lambda: served.states().get("1") == "AVAILABLE", "version 1 over WebDAV")
            assert served.predict().json() == {"predictions": V1}
            store.upload_dir(models_dir / "two_versions" / "2", "m/2", last="saved_model.pb")
            srv.wait_until(lambda: served.states().get("2") == "AVAILABLE", "version 2 over WebDAV")
            assert served.predict().json() == {"predictions": V2}
            store.delete_prefix("m/2")
            srv.wait_until(lambda: served.states() == {"1": "AVAILABLE", "2": "END"}, "version 2 unloaded")
            assert served.predict().json() == {"predictions": V1}
        finally:
            srv.stop()
