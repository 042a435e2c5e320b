"""Object-storage base paths: which forms are accepted, and what each names (pure, no I/O).

    s3://BUCKET/PREFIX                                    Amazon S3 and S3-compatible stores
    gs://BUCKET/PREFIX                                    Google Cloud Storage
    az://CONTAINER/PREFIX                                 Azure Blob (the account from AZURE_STORAGE_ACCOUNT_NAME)
    abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX   Azure Blob / ADLS Gen2, the Hadoop form
    https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX    Azure Blob, the account's own URL
    https://BUCKET.s3[.REGION].amazonaws.com/PREFIX, https://s3[.REGION].amazonaws.com/BUCKET/PREFIX
    https://storage.googleapis.com/BUCKET/PREFIX
    https://HOST/PATH (or http://)                        any other server that lists directories over
                                                          WebDAV (PROPFIND), e.g. nginx or Apache with DAV

Anything else (a local path) is not a `StorageURI`: `parse` returns None for it. A URI that names
a store but cannot be served (no bucket, a query string, an unknown host form) is a `ValueError`
whose message says which form to use. `redact` removes what must never reach a log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("s3", "gs", "az", "abfs", "abfss", "https", "http")
# The forms, for messages (and the docs).
FORMS = ("s3://BUCKET/PREFIX", "gs://BUCKET/PREFIX", "az://CONTAINER/PREFIX",
         "abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX", "https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX",
         "https://BUCKET.s3.REGION.amazonaws.com/PREFIX", "https://storage.googleapis.com/BUCKET/PREFIX",
         "https://HOST/PATH (a WebDAV server)")

_BUCKET = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}$")
# The forms above as one pattern (ECMA and RE2 alike: the CRD's `pattern` for spec.model.storage.uri):
# a bucket name as `_BUCKET` reads it, no user or password, no query string or fragment. `parse`
# checks the rest (an abfs URI's host, an https URL's cloud forms).
URI_PATTERN = (r"^((s3|gs|az)://[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}|abfss?://[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}"
               r"@[a-z0-9]{3,24}\.dfs\.core\.windows\.net|https?://[^/?#@\s]+)(/[^?#\s]*)?$")
_AZ_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(?P<kind>blob|dfs)\.core\.windows\.net$")
_S3_VHOST = re.compile(r"^(?P<bucket>.+)\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")
_S3_PATH = re.compile(r"^s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com$")


@dataclass(frozen=True, slots=True)
class StorageURI:
    """A parsed base path: `kind` s3 | gcs | azure | http; `bucket` (the container for Azure, the
    server's root URL for http); `prefix` without slashes at either end; `account` (Azure) and
    `region` (S3) when the URI names them."""

    kind: str
    bucket: str
    prefix: str
    raw: str
    account: str = ""
    region: str = ""

    def key(self, *parts: str) -> str:
        """The object name of `parts` under the prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return self.raw


def is_remote(base_path: str) -> bool:
    """Whether a base path names object storage rather than a local directory."""
    scheme, sep, _ = base_path.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def parse(base_path: str) -> StorageURI | None:
    """The storage a base path names; None for a local path; ValueError for a URI it cannot serve."""
    if not is_remote(base_path):
        return None
    u = urlsplit(base_path)
    scheme = u.scheme.lower()
    if u.query or u.fragment:
        raise ValueError(f"base path {redact(base_path)}: no query string or fragment (credentials come from the "
                         "environment, never from the URI)")
    if u.username is not None and scheme not in ("abfs", "abfss") or u.password is not None:
        raise ValueError(f"base path {redact(base_path)}: no user or password in the URI (credentials come from "
                         "the environment)")
    path = u.path.strip("/")
    host = (u.hostname or "").lower()
    if scheme in ("s3", "gs", "az"):
        kind = {"s3": "s3", "gs": "gcs", "az": "azure"}[scheme]
        return _checked(StorageURI(kind, u.netloc, path, base_path), base_path)
    if scheme in ("abfs", "abfss"):
        m = _AZ_HOST.match(host)
        if not u.username or m is None:
            raise ValueError(f"base path {redact(base_path)}: the abfs form is "
                             "abfs[s]://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX")
        return _checked(StorageURI("azure", u.username, path, base_path, account=m["account"]), base_path)
    return _parse_http(base_path, scheme, host, path)


def _parse_http(raw: str, scheme: str, host: str, path: str) -> StorageURI:
    if not host:
        raise ValueError(f"base path {redact(raw)}: no host")
    first, _, rest = path.partition("/")
    if m := _AZ_HOST.match(host):
        return _checked(StorageURI("azure", first, rest, raw, account=m["account"]), raw)
    if host == "storage.googleapis.com":
        return _checked(StorageURI("gcs", first, rest, raw), raw)
    if m := _S3_VHOST.match(host):
        return _checked(StorageURI("s3", m["bucket"], path, raw, region=m["region"] or ""), raw)
    if m := _S3_PATH.match(host):
        return _checked(StorageURI("s3", first, rest, raw, region=m["region"] or ""), raw)
    root = f"{scheme}://{urlsplit(raw).netloc}"
    return StorageURI("http", root, path, raw)


def _checked(uri: StorageURI, raw: str) -> StorageURI:
    if not _BUCKET.match(uri.bucket or ""):
        what = "container" if uri.kind == "azure" else "bucket"
        raise ValueError(f"base path {redact(raw)}: {what} name {uri.bucket!r} is not valid (forms: "
                         f"{'; '.join(FORMS)})")
    return uri


_SECRET_QUERY = re.compile(r"\?[^\s\"'<>]*")
_USERINFO = re.compile(r"(://)[^/@\s]*:[^/@\s]*@")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without query strings (SAS tokens, presigned signatures), user:password@ parts of
    URLs, or any of `secrets` (the credential values in the environment)."""
    out = _USERINFO.sub(r"\1***@", _SECRET_QUERY.sub("?***", text))
    for s in secrets:
        if s and len(s) >= 4:
            out = out.replace(s, "***")
    return out
