"""Object-storage base paths, the pure parts and the cache: which URIs are served, when a listed
version is complete and settled, how credentials are found and kept out of messages, and that a
download is complete or absent (a stand-in store: a dict of objects, to corrupt them at will).
The stores themselves are exercised for real in test_storage_server.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from modelserver.config.model_config import ConfigError, single_model_config
from modelserver.config.storage_uri import is_remote, parse, redact
from modelserver.core.storage.cache import MANIFEST, Cache
from modelserver.core.storage.listing import ObjectInfo, missing_parts, scan, versions_in
from modelserver.core.storage.stores import StoreError, _aws_config, _etag_md5, clean

# ---- URIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "kind", "bucket", "prefix", "account"), [
    ("s3://models/team/m", "s3", "models", "team/m", ""),
    ("s3://models", "s3", "models", "", ""),
    ("gs://my-bucket/models/m/", "gcs", "my-bucket", "models/m", ""),
    ("az://cont/m", "azure", "cont", "m", ""),
    ("abfss://cont@acct.dfs.core.windows.net/models/m", "azure", "cont", "models/m", "acct"),
    ("https://acct.blob.core.windows.net/cont/models/m", "azure", "cont", "models/m", "acct"),
    ("https://storage.googleapis.com/bkt/models/m", "gcs", "bkt", "models/m", ""),
    ("https://bkt.s3.eu-west-1.amazonaws.com/models/m", "s3", "bkt", "models/m", ""),
    ("https://s3.amazonaws.com/bkt/m", "s3", "bkt", "m", ""),
    ("https://models.example.com/dav/m", "http", "https://models.example.com", "dav/m", ""),
])
def test_forms(raw: str, kind: str, bucket: str, prefix: str, account: str) -> None:
    uri = parse(raw)
    assert uri is not None and (uri.kind, uri.bucket, uri.prefix, uri.account) == (kind, bucket, prefix, account)


@pytest.mark.parametrize("raw", ["/models/m", "models/m", "file.txt", "C:/models"])
def test_local_paths_are_not_uris(raw: str) -> None:
    assert not is_remote(raw) and parse(raw) is None


@pytest.mark.parametrize(("raw", "says"), [
    ("s3://", "bucket name"),
    ("s3://b/m", "bucket name"),  # one character: not a bucket name anywhere
    ("s3://models/m?X-Amz-Signature=abc", "no query string"),
    ("https://acct.blob.core.windows.net/c/m?sig=SECRET", "no query string"),
    ("s3://user:pass@models/m", "no user or password"),
    ("abfs://acct.dfs.core.windows.net/m", "abfs[s]://CONTAINER@ACCOUNT"),
])
def test_uris_that_cannot_be_served(raw: str, says: str) -> None:
    with pytest.raises(ValueError, match=".*") as err:
        parse(raw)
    assert says in str(err.value)
    assert "SECRET" not in str(err.value) and "pass@" not in str(err.value)


def test_a_bad_uri_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'m'.*no query string"):
        single_model_config("m", "s3://models/m?token=1")
    assert single_model_config("m", "gs://models/m")[0].base_path == "gs://models/m"


def test_redact() -> None:
    text = "GET https://a.blob.core.windows.net/c?sig=abc&se=1 and http://u:p@host/x with key s3cr3tvalue"
    out = redact(text, ("s3cr3tvalue",))
    assert "sig=abc" not in out and "u:p@" not in out and "s3cr3tvalue" not in out


def test_clean_removes_the_environment_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    assert "wJalrXUtnFEMI" not in clean("signature for wJalrXUtnFEMI/K7MDENG refused")


# ---- AWS settings object_store does not read itself ------------------------------------------------

def test_tf_serving_s3_endpoint() -> None:
    assert _aws_config({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"})["endpoint"] == "http://minio:9000"
    assert _aws_config({"S3_ENDPOINT": "minio:9000"})["endpoint"] == "https://minio:9000"
    assert "endpoint" not in _aws_config({"S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL": "http://other"})


def test_shared_credentials_files(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s1\n"
                                          "[team]\naws_access_key_id = AKIA2\naws_secret_access_key = s2\n"
                                          "aws_session_token = t2\n")
    (tmp_path / "config").write_text("[default]\nregion = eu-west-1\n[profile team]\nregion = us-west-2\n")
    files = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_CONFIG_FILE": str(tmp_path / "config")}
    assert _aws_config(files) == {"access_key_id": "AKIA1", "secret_access_key": "s1", "region": "eu-west-1"}
    assert _aws_config({**files, "AWS_PROFILE": "team"}) == {"access_key_id": "AKIA2", "secret_access_key": "s2",
                                                             "token": "t2", "region": "us-west-2"}
    # the environment's own keys (or a web identity) win over the files, as in the AWS SDKs
    assert "access_key_id" not in _aws_config({**files, "AWS_ACCESS_KEY_ID": "AKIA3"})
    assert "access_key_id" not in _aws_config({**files, "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"})


def test_only_a_single_part_etag_is_an_md5() -> None:
    assert _etag_md5('"336311a016184326ddbdd61edd4eeb52"') == "336311a016184326ddbdd61edd4eeb52"
    assert _etag_md5('"336311a016184326ddbdd61edd4eeb52-3"') == ""


# ---- versions in a listing -------------------------------------------------------------------------

def objs(*names: str, etag: str = "e") -> list[ObjectInfo]:
    return [ObjectInfo(n, 1, etag) for n in names]


@pytest.mark.parametrize(("names", "missing"), [
    (["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"], ""),
    (["saved_model.pb"], ""),  # a SavedModel without variables
    (["saved_model.pbtxt", "variables/variables.index", "variables/variables.data-00000-of-00001"], ""),
    (["variables/variables.index", "variables/variables.data-00000-of-00001"], "no saved_model.pb yet"),
    (["saved_model.pb", "variables/variables.data-00000-of-00001"], "variables.index not uploaded yet"),
    (["saved_model.pb", "variables/variables.index"], "no variables/variables.data-* shard"),
    (["saved_model.pb", "variables/variables.index", "variables/variables.data-00001-of-00003"],
     "2 of 3 variables/ shards not uploaded yet"),
    (["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001",
      "variables/variables.data-00000-of-00002"], "shards of different sets"),
])
def test_complete(names: list[str], missing: str) -> None:
    got = missing_parts(objs(*names))
    assert (got == "") if not missing else (missing in got)


def test_version_directories_of_a_listing() -> None:
    listing = objs("1/saved_model.pb", "00002/saved_model.pb", "2/saved_model.pb", "notes/readme", "3/", "x.txt")
    versions, clashes = versions_in(listing)
    assert sorted(versions) == [1, 2] and versions[2].dirname == "2" and clashes == {2: ["2", "00002"]}


def test_a_new_version_is_taken_once_its_listing_is_the_same_twice() -> None:
    full = objs("1/saved_model.pb", "1/variables/variables.index", "1/variables/variables.data-00000-of-00001")
    first = scan(full, None)
    assert sorted(first.ready) == [1]  # the first listing: what is there has finished uploading
    v2 = objs("2/saved_model.pb", "2/variables/variables.index", "2/variables/variables.data-00000-of-00001")
    second = scan(full + v2[:2], first.versions)
    assert sorted(second.ready) == [1] and not second.versions[2].complete
    third = scan(full + v2, second.versions)
    assert sorted(third.ready) == [1]  # complete now, but just changed
    fourth = scan(full + v2, third.versions)
    assert sorted(fourth.ready) == [1, 2]
    rewritten = scan(full + objs(*(o.path for o in v2), etag="other"), fourth.versions)
    assert sorted(rewritten.ready) == [1]  # changed again: waits
    assert sorted(scan(full + objs(*(o.path for o in v2), etag="other"), fourth.versions, taken=[2]).ready) == [1, 2]


# ---- the cache -------------------------------------------------------------------------------------

class DictStore:
    """A stand-in store: objects in a dict; `corrupt` answers wrong bytes for one name."""

    def __init__(self, objects: dict[str, bytes], corrupt: str = "") -> None:
        self.uri = parse("s3://models/m")
        self.objects = objects
        self.corrupt = corrupt
        self.reads = 0

    async def list(self) -> list[ObjectInfo]:
        return [ObjectInfo(k, len(v), hashlib.md5(v).hexdigest(), hashlib.md5(v).hexdigest())
                for k, v in self.objects.items()]

    async def read(self, path: str, start: int, end: int, etag: str) -> bytes:
        self.reads += 1
        data = self.objects[path][start:end]
        return bytes(len(data)) if path == self.corrupt else data


MODEL = {"1/saved_model.pb": b"pb" * 10, "1/variables/variables.index": b"ix",
         "1/variables/variables.data-00000-of-00001": bytes(range(256)) * 100}


def fetch(cache: Cache, store: DictStore) -> tuple[object, Path]:
    async def go() -> object:
        listing = scan(await store.list(), None).ready[1]
        return await cache.fetch("m", store, listing)  # type: ignore[arg-type]
    out = asyncio.run(go())
    return out, out.path  # type: ignore[attr-defined]


def test_download_in_parts_then_found_in_the_cache(tmp_path: Path) -> None:
    cache = Cache(tmp_path, part_bytes=1000)
    store = DictStore(dict(MODEL))
    got, path = fetch(cache, store)
    assert not got.cached and got.bytes == sum(len(v) for v in MODEL.values())  # type: ignore[attr-defined]
    assert store.reads == 2 + 26  # the 25.6 KB shard in 1000-byte parts
    assert (path / "variables/variables.data-00000-of-00001").read_bytes() == MODEL["1/variables/variables.data-00000-of-00001"]
    assert (path / MANIFEST).exists() and not list((tmp_path / ".partial").iterdir())
    again, _ = fetch(Cache(tmp_path), store)  # a restarted server: nothing downloaded
    assert again.cached and store.reads == 28  # type: ignore[attr-defined]


def test_a_corrupt_object_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path, part_bytes=1000)
    with pytest.raises(StoreError) as err:
        fetch(cache, DictStore(dict(MODEL), corrupt="1/variables/variables.data-00000-of-00001"))
    assert err.value.kind == "corrupt" and "MD5" in err.value.message
    assert not list((tmp_path / ".partial").iterdir()) and not any(tmp_path.glob("m-*/1"))


def test_eviction_keeps_what_is_served(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=0)
    _, one = fetch(cache, DictStore(dict(MODEL)))
    other = DictStore({k.replace("1/", "2/", 1): v for k, v in MODEL.items()})

    async def two() -> Path:
        return (await cache.fetch("m", other, scan(await other.list(), None).ready[2])).path  # type: ignore[arg-type]
    second = asyncio.run(two())
    assert cache.evict({one, second}) == [] and one.exists() and second.exists()
    assert cache.evict({second}) == [one] and not one.exists() and second.exists()
    cache.max_bytes = 10**9
    assert cache.evict(set()) == [] and second.exists()  # under the limit: kept for a restart
    cache.max_bytes = 0
    assert cache.evict(set()) == [second]  # a version this server no longer serves goes at once
    other_server = Cache(tmp_path, max_bytes=0)
    _, third = fetch(other_server, DictStore(dict(MODEL)))
    assert cache.evict(set()) == [] and third.exists()  # another server's, used just now: left to it
    os.utime(third / MANIFEST, (1.0, 1.0))  # ... long ago: it goes, unless that server still serves it
    other_server.evict({third})  # (each server's poll touches what it serves)
    assert cache.evict(set()) == [] and third.exists()
    os.utime(third / MANIFEST, (1.0, 1.0))
    assert cache.evict(set()) == [third]
