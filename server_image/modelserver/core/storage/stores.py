"""The object stores a base path can name, behind one small interface: list every object under the
prefix, read a byte range of one (the ETag or generation it was listed with, so an object replaced
meanwhile is an error, not a mix of two uploads).

- S3 (and S3-compatible stores), Azure Blob and WebDAV servers go through **obstore** (the Rust
  `object_store` crate: async, ranged reads, retries with back-off, each cloud's credential chain).
- Google Cloud Storage goes through its **JSON API** over aiohttp with **google-auth**'s
  application-default credentials, so that `STORAGE_EMULATOR_HOST` (fake-gcs-server, the GCS
  emulators) works as with Google's own clients: object_store speaks GCS's XML API, which those
  emulators do not serve.

Credentials come from each cloud's standard chain, never from the URI:
- S3: the AWS_* environment (`AWS_ACCESS_KEY_ID`, ..., `AWS_SESSION_TOKEN`), IRSA web identity
  (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`), EKS Pod Identity and ECS container credentials,
  EC2 instance metadata; the shared files (`~/.aws/credentials` and `~/.aws/config`, `AWS_PROFILE`)
  when the environment names no key. `AWS_ENDPOINT_URL` (or TF Serving's `S3_ENDPOINT` with
  `S3_USE_HTTPS`) points it at MinIO or another S3-compatible store.
- GCS: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default file, the metadata server
  (GKE workload identity); none against `STORAGE_EMULATOR_HOST`.
- Azure: `AZURE_STORAGE_ACCOUNT_NAME` with `AZURE_STORAGE_ACCOUNT_KEY` or `AZURE_STORAGE_SAS_TOKEN`,
  `AZURE_STORAGE_CONNECTION_STRING`, a service principal (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
  `AZURE_CLIENT_SECRET`), AKS workload identity (`AZURE_FEDERATED_TOKEN_FILE`), managed identity;
  `AZURE_STORAGE_USE_EMULATOR=true` (with `AZURITE_BLOB_STORAGE_URL`) for Azurite.

Every failure is a `StoreError` of one `kind` (not_found, denied, unreachable, changed, corrupt,
invalid) whose message names the base path and the store's own error code, with query strings
and the credential values of the environment removed.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import datetime as dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from modelserver.config.storage_uri import StorageURI, redact
from modelserver.core.storage.listing import ObjectInfo

# Environment variables whose values are secrets: removed from every message.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY",
              "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY", "AZURE_CLIENT_SECRET", "AZURE_STORAGE_CONNECTION_STRING",
              "GOOGLE_SERVICE_ACCOUNT_KEY", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_TOKEN")
REQUEST_TIMEOUT_S = 30.0  # one request (a list page, an 8 MiB range) ends within this
RETRIES = 3  # per request, with back-off; a download that still fails is tried again at a later poll


class StoreError(Exception):
    """A store operation that failed; `kind` says how the manager reports it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # not_found | denied | unreachable | changed | corrupt | invalid
        self.message = message


class Store(Protocol):
    uri: StorageURI

    async def list(self) -> list[ObjectInfo]: ...

    async def read(self, path: str, start: int, end: int, etag: str) -> bytes: ...


def secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if env is None else env
    return tuple(v for k in SECRET_ENV if (v := env.get(k, "")))


def clean(text: str) -> str:
    return redact(text, secrets())


# ---- obstore: S3, Azure, WebDAV --------------------------------------------------------------------

_STATUS = re.compile(r"status(?: code)?:? (\d{3})")
_XML_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")
_UNREACHABLE = ("error sending request", "connection refused", "tcp connect", "dns error", "timed out",
                "connection reset", "connection closed", "incompletemessage", "broken pipe", "timeout")


def classify(uri: StorageURI, exc: BaseException, what: str) -> StoreError:
    """An obstore exception as a StoreError (its text is the only structure object_store exposes)."""
    from obstore import exceptions as ox

    text = str(exc)
    first = text.split("\n\nDebug source", 1)[0]
    status = next((int(m) for m in _STATUS.findall(first)), 0)
    code = next(iter(_XML_CODE.findall(text)), "")
    where = "container" if uri.kind == "azure" else "bucket"
    tag = f"HTTP {status}{' ' + code if code else ''}" if status else type(exc).__name__
    if isinstance(exc, ox.PreconditionError) or status == 412:
        return StoreError("changed", f"{uri}: {what}: the object changed while it was read; read again at the next poll")
    if code in ("NoSuchBucket", "ContainerNotFound") or (status == 404 and what == "list"):
        return StoreError("not_found", f"{uri}: {where} {uri.bucket} not found ({tag})")
    if isinstance(exc, ox.NotFoundError) or status == 404:
        return StoreError("changed", f"{uri}: {what}: object gone since it was listed ({tag})")
    if isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError) or status in (401, 403):
        return StoreError("denied", f"{uri}: access denied ({tag}): the credentials in the environment are not "
                          f"allowed to read this {where}")
    low = first.lower()
    if status >= 500 or any(s in low for s in _UNREACHABLE):
        detail = tag if status else _short_cause(first)
        return StoreError("unreachable", f"{uri}: store unreachable ({detail})")
    return StoreError("invalid", clean(f"{uri}: {what} failed: {_short_cause(first)[:300]}"))


def _short_cause(text: str) -> str:
    """The last ': '-separated clause of object_store's error chain: the root cause."""
    text = clean(re.sub(r"https?://\S+", "<url>", text.strip()))
    return text.rsplit(": ", 1)[-1][:200] or text[:200]


def _aws_config(env: Mapping[str, str]) -> dict[str, Any]:
    """S3 settings object_store does not read itself: TF Serving's S3_ENDPOINT, and the shared
    credentials and config files when the environment names no key and no web identity."""
    out: dict[str, Any] = {}
    if not env.get("AWS_ENDPOINT_URL") and not env.get("AWS_ENDPOINT_URL_S3") and env.get("S3_ENDPOINT"):
        ep = env["S3_ENDPOINT"]
        if "://" not in ep:
            ep = ("http://" if env.get("S3_USE_HTTPS", "1") in ("0", "false") else "https://") + ep
        out["endpoint"] = ep
    elif env.get("AWS_ENDPOINT_URL_S3"):
        out["endpoint"] = env["AWS_ENDPOINT_URL_S3"]
    if not env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
        creds = _ini(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", profile)
        if creds.get("aws_access_key_id") and creds.get("aws_secret_access_key"):
            out["access_key_id"] = creds["aws_access_key_id"]
            out["secret_access_key"] = creds["aws_secret_access_key"]
            if creds.get("aws_session_token"):
                out["token"] = creds["aws_session_token"]
    if not env.get("AWS_REGION") and not env.get("AWS_DEFAULT_REGION"):
        profile = env.get("AWS_PROFILE") or "default"
        cfg = _ini(env.get("AWS_CONFIG_FILE") or "~/.aws/config", profile if profile == "default" else f"profile {profile}")
        if cfg.get("region"):
            out["region"] = cfg["region"]
    return out


def _ini(path: str, section: str) -> dict[str, str]:
    p = Path(path).expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(p)
    except (OSError, configparser.Error):
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}


def _azure_config(uri: StorageURI, env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if uri.account:
        out["account_name"] = uri.account
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    if conn:
        parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
        if parts.get("AccountName") and "account_name" not in out:
            out["account_name"] = parts["AccountName"]
        if parts.get("AccountKey"):
            out["account_key"] = parts["AccountKey"]
        if parts.get("SharedAccessSignature"):
            out["sas_key"] = parts["SharedAccessSignature"]
        if parts.get("BlobEndpoint"):
            out["endpoint"] = parts["BlobEndpoint"]
    return out


class ObstoreStore:
    """S3, Azure Blob or a WebDAV server, through obstore."""

    def __init__(self, uri: StorageURI, env: Mapping[str, str] | None = None) -> None:
        from obstore.store import AzureStore, HTTPStore, S3Store

        env = os.environ if env is None else env
        self.uri = uri
        retry: Any = {"max_retries": RETRIES, "retry_timeout": dt.timedelta(seconds=REQUEST_TIMEOUT_S),
                      "backoff": {"init_backoff": dt.timedelta(milliseconds=100), "max_backoff": dt.timedelta(seconds=2)}}
        client: Any = {"timeout": dt.timedelta(seconds=REQUEST_TIMEOUT_S), "connect_timeout": dt.timedelta(seconds=5)}
        try:
            if uri.kind == "s3":
                config: Any = _aws_config(env)
                if uri.region:
                    config["region"] = uri.region
                endpoint = str(config.get("endpoint") or env.get("AWS_ENDPOINT_URL") or "")
                client["allow_http"] = endpoint.startswith("http://")
                self._store: Any = S3Store(uri.bucket, prefix=uri.prefix or None, config=config, client_options=client,
                                           retry_config=retry)
            elif uri.kind == "azure":
                config = _azure_config(uri, env)
                emulated = env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true")
                client["allow_http"] = emulated or str(config.get("endpoint", "")).startswith("http://")
                self._store = AzureStore(uri.bucket, prefix=uri.prefix or None, config=config, client_options=client,
                                         retry_config=retry)
            else:
                # at the server's root: object_store's WebDAV listing names objects from the root
                # (PROPFIND hrefs), so the prefix is a listing prefix and part of each read's path
                client["allow_http"] = uri.bucket.startswith("http://")
                self._store = HTTPStore.from_url(uri.bucket + "/", client_options=client, retry_config=retry)
        except Exception as exc:  # a configuration the library refuses (a bad region, an endpoint)
            raise StoreError("invalid", clean(f"{uri}: cannot configure the store: {_short_cause(str(exc))}")) from None

    async def list(self) -> list[ObjectInfo]:
        import obstore

        out: list[ObjectInfo] = []
        rooted = self.uri.kind == "http" and self.uri.prefix  # names from the server's root (see __init__)
        strip = self.uri.prefix + "/" if rooted else ""
        try:
            async for chunk in obstore.list(self._store, self.uri.prefix if rooted else None, chunk_size=1000):
                for meta in chunk:
                    path = str(meta["path"])
                    if strip and not path.startswith(strip):
                        continue
                    out.append(ObjectInfo(path[len(strip):], int(meta["size"]), meta.get("e_tag") or "",
                                          _etag_md5(meta.get("e_tag") or "") if self.uri.kind == "s3" else ""))
        except Exception as exc:
            raise classify(self.uri, exc, "list") from None
        return out

    async def read(self, path: str, start: int, end: int, etag: str) -> bytes:
        import obstore

        options: Any = {"range": (start, end)}
        if etag and self.uri.kind != "http":
            options["if_match"] = etag
        if self.uri.kind == "http":
            path = self.uri.key(path)  # the store is at the server's root (see __init__)
        try:
            result = await obstore.get_async(self._store, path, options=options)
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise classify(self.uri, exc, f"read {path}") from None


def _etag_md5(etag: str) -> str:
    """S3's ETag is the object's MD5 for a single-part upload (32 hex digits); a multipart upload's
    ETag (`<hex>-<parts>`) is not, and gives no checksum."""
    e = etag.strip('"').lower()
    return e if re.fullmatch(r"[0-9a-f]{32}", e) else ""


# ---- Google Cloud Storage: the JSON API ----------------------------------------------------------

GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


class GCSStore:
    """gs://: listing and ranged media downloads of the JSON API, each object read at the
    generation it was listed with."""

    def __init__(self, uri: StorageURI, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.uri = uri
        emulator = env.get("STORAGE_EMULATOR_HOST", "")
        self._base = (emulator if "://" in emulator else f"http://{emulator}") if emulator else "https://storage.googleapis.com"
        self._anonymous = bool(emulator)
        self._credentials: Any = None
        self._session: Any = None
        self._lock = asyncio.Lock()

    async def _headers(self) -> dict[str, str]:
        if self._anonymous:
            return {}
        async with self._lock:
            if self._credentials is None or not self._credentials.valid:
                self._credentials = await asyncio.get_running_loop().run_in_executor(None, self._refresh)
        return {"Authorization": f"Bearer {self._credentials.token}"}

    def _refresh(self) -> Any:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests

        try:
            creds = self._credentials
            if creds is None:
                creds, _ = google.auth.default(scopes=[GCS_SCOPE])
            creds.refresh(google.auth.transport.requests.Request())
            return creds
        except google.auth.exceptions.DefaultCredentialsError as exc:
            raise StoreError("denied", clean(f"{self.uri}: no Google credentials: {exc}")) from None
        except google.auth.exceptions.GoogleAuthError as exc:
            raise StoreError("denied", clean(f"{self.uri}: Google credentials refused: {_short_cause(str(exc))}")) from None
        except OSError as exc:
            raise StoreError("unreachable", clean(f"{self.uri}: token endpoint unreachable: {exc}")) from None

    async def _get(self, url: str, headers: dict[str, str], what: str) -> bytes:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, connect=5))
        delay = 0.1
        for attempt in range(RETRIES + 1):
            try:
                async with self._session.get(url, headers={**headers, **await self._headers()}) as resp:
                    body = await resp.read()
                    if resp.status < 300:
                        return bytes(body)
                    error = self._error(resp.status, body, what)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = StoreError("unreachable", clean(f"{self.uri}: store unreachable ({type(exc).__name__}: "
                                                        f"{_short_cause(str(exc)) or 'no answer'})"))
            if error.kind != "unreachable" or attempt == RETRIES:
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _error(self, status: int, body: bytes, what: str) -> StoreError:
        try:
            reason = str(json.loads(body)["error"]["errors"][0].get("reason") or "")
        except (ValueError, KeyError, IndexError, TypeError):
            reason = ""
        tag = f"HTTP {status}{' ' + reason if reason else ''}"
        if status == 404 and what == "list":
            return StoreError("not_found", f"{self.uri}: bucket {self.uri.bucket} not found ({tag})")
        if status in (404, 412):
            return StoreError("changed", f"{self.uri}: {what}: the object changed or went away since it was listed")
        if status in (401, 403):
            return StoreError("denied", f"{self.uri}: access denied ({tag}): the credentials in the environment are not "
                              "allowed to read this bucket")
        if status >= 500 or status == 429:
            return StoreError("unreachable", f"{self.uri}: store unreachable ({tag})")
        return StoreError("invalid", f"{self.uri}: {what} failed ({tag})")

    async def list(self) -> list[ObjectInfo]:
        prefix = self.uri.prefix + "/" if self.uri.prefix else ""
        url = (f"{self._base}/storage/v1/b/{quote(self.uri.bucket, safe='')}/o?prefix={quote(prefix, safe='')}"
               "&fields=items(name,size,md5Hash,generation),nextPageToken&maxResults=1000")
        out: list[ObjectInfo] = []
        token = ""
        while True:
            page = json.loads(await self._get(url + (f"&pageToken={quote(token, safe='')}" if token else ""), {}, "list"))
            for item in page.get("items") or []:
                md5 = base64.b64decode(item["md5Hash"]).hex() if item.get("md5Hash") else ""
                out.append(ObjectInfo(item["name"][len(prefix):], int(item.get("size") or 0), str(item.get("generation")
                                                                                                   or ""), md5))
            token = page.get("nextPageToken") or ""
            if not token:
                return out

    async def read(self, path: str, start: int, end: int, etag: str) -> bytes:
        name = quote(self.uri.key(path), safe="")
        url = f"{self._base}/storage/v1/b/{quote(self.uri.bucket, safe='')}/o/{name}?alt=media"
        if etag:
            url += f"&generation={quote(etag, safe='')}"
        data = await self._get(url, {"Range": f"bytes={start}-{end - 1}"}, f"read {path}")
        if len(data) != end - start:
            raise StoreError("corrupt", f"{self.uri}: read {path}: {len(data)} bytes for a range of {end - start}")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def open_store(uri: StorageURI, env: Mapping[str, str] | None = None) -> Store:
    """The store a parsed base path names (configuration only: nothing is sent yet)."""
    if uri.kind == "gcs":
        return GCSStore(uri, env)
    return ObstoreStore(uri, env)
