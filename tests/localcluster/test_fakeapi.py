"""The fake API server behaves like kube-apiserver where the operator relies on it (over real HTTP)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import requests
from localcluster.fakeapi import FakeKubeAPI
from operator_support import GROUP, PLURAL, make_namespace, md

MDS = f"/apis/{GROUP}/v1alpha1/namespaces/ml/{PLURAL}"
CMS = "/api/v1/namespaces/ml/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def call(fake: FakeKubeAPI, method: str, path: str, body: Any = None, headers: dict | None = None, **params: str) -> requests.Response:
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    return requests.request(method, fake.url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})}, params=params, timeout=10)


def cm(name: str, labels: dict | None = None, **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}}, "data": data}


@pytest.fixture
def ns(fake: FakeKubeAPI) -> FakeKubeAPI:
    make_namespace(fake, "ml")
    return fake


def test_discovery_serves_builtins_and_registered_crds(fake: FakeKubeAPI) -> None:
    assert call(fake, "GET", "/api").json()["versions"] == ["v1"]
    groups = {g["name"] for g in call(fake, "GET", "/apis").json()["groups"]}
    assert {"apps", "policy", GROUP} <= groups
    res = call(fake, "GET", f"/apis/{GROUP}/v1alpha1").json()
    assert res["groupVersion"] == f"{GROUP}/v1alpha1"
    mdres = next(r for r in res["resources"] if r["name"] == PLURAL)
    assert mdres["shortNames"] == ["md"] and mdres["namespaced"] and mdres["kind"] == "ModelDeployment"
    assert any(r["name"] == f"{PLURAL}/status" for r in res["resources"])
    assert call(fake, "GET", "/api/v1").json()["groupVersion"] == "v1"
    assert call(fake, "GET", "/api/v1/namespaces").status_code == 200


def test_create_stamps_metadata_and_conflicts(ns: FakeKubeAPI) -> None:
    r = call(ns, "POST", CMS, cm("a", x="1"))
    assert r.status_code == 201
    meta = r.json()["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"] and meta["namespace"] == "ml"
    assert call(ns, "POST", CMS, cm("a")).json()["reason"] == "AlreadyExists"
    stale = r.json()
    assert call(ns, "PUT", f"{CMS}/a", {**stale, "data": {"x": "2"}}).status_code == 200
    conflict = call(ns, "PUT", f"{CMS}/a", {**stale, "data": {"x": "3"}})
    assert conflict.status_code == 409 and conflict.json()["reason"] == "Conflict"
    assert call(ns, "GET", f"{CMS}/nope").status_code == 404
    assert call(ns, "POST", "/api/v1/namespaces/absent/configmaps", cm("b")).status_code == 404


def test_builtin_kinds_are_validated(ns: FakeKubeAPI) -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "two"}}
    r = call(ns, "POST", "/apis/apps/v1/namespaces/ml/deployments", bad)
    assert r.status_code == 422 and "replicas" in r.json()["message"]


def test_label_and_field_selectors(ns: FakeKubeAPI) -> None:
    for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {})):
        call(ns, "POST", CMS, cm(name, labels))
    names = lambda **p: [o["metadata"]["name"] for o in call(ns, "GET", CMS, **p).json()["items"]]  # noqa: E731
    assert names(labelSelector="app=x") == ["a"]
    assert names(labelSelector="app in (x,y)") == ["a", "b"]
    assert names(labelSelector="app notin (x),app") == ["b"]
    assert names(labelSelector="!app") == ["c"]
    assert names(labelSelector="app!=x") == ["b", "c"]
    assert names(fieldSelector="metadata.name=b") == ["b"]


def test_patch_kinds(ns: FakeKubeAPI) -> None:
    call(ns, "POST", CMS, cm("p", a="1", b="2"))
    assert call(ns, "PATCH", f"{CMS}/p", {"data": {"a": None, "c": "3"}}, MERGE).json()["data"] == {"b": "2", "c": "3"}
    jp = {"Content-Type": "application/json-patch+json"}
    ok = call(ns, "PATCH", f"{CMS}/p", [{"op": "test", "path": "/data/b", "value": "2"}, {"op": "replace", "path": "/data/b", "value": "9"}], jp)
    assert ok.json()["data"]["b"] == "9"
    failed = call(ns, "PATCH", f"{CMS}/p", [{"op": "test", "path": "/data/b", "value": "2"}], jp)
    assert failed.status_code == 422
    smp = {"Content-Type": "application/strategic-merge-patch+json"}
    assert call(ns, "PATCH", f"{CMS}/p", {"data": {"d": "4"}}, smp).json()["data"]["d"] == "4"
    ns.add_object(md("x", "ml"))
    assert call(ns, "PATCH", f"{MDS}/x", {"spec": {"replicas": 2}}, smp).status_code == 415
    stale = call(ns, "PATCH", f"{CMS}/p", {"metadata": {"resourceVersion": "1"}, "data": {"e": "5"}}, MERGE)
    assert stale.status_code == 409


def test_server_side_apply_owns_and_drops_fields(ns: FakeKubeAPI) -> None:
    apply = {"Content-Type": "application/apply-patch+yaml"}
    r = call(ns, "PATCH", f"{CMS}/s", cm("s", {"l": "1"}, a="1", b="2"), apply, fieldManager="me", force="true")
    assert r.status_code == 201 and r.json()["data"] == {"a": "1", "b": "2"}  # an apply that creates: 201, as kube-apiserver
    call(ns, "PATCH", f"{CMS}/s", {"data": {"other": "x"}}, MERGE)  # another writer's field
    r = call(ns, "PATCH", f"{CMS}/s", cm("s", {"l": "1"}, a="1"), apply, fieldManager="me", force="true")
    assert r.status_code == 200 and r.json()["data"] == {"a": "1", "other": "x"}  # b was ours and is gone; other stays
    assert call(ns, "PATCH", f"{CMS}/s", cm("s"), apply).status_code == 422  # fieldManager required


def test_status_subresource_and_generation(ns: FakeKubeAPI) -> None:
    ns.add_object(md("g", "ml"))
    obj = call(ns, "GET", f"{MDS}/g").json()
    assert obj["metadata"]["generation"] == 1 and "status" not in obj
    r = call(ns, "PATCH", f"{MDS}/g", {"status": {"replicas": 5}, "metadata": {"labels": {"a": "b"}}}, MERGE)
    assert "status" not in r.json() and r.json()["metadata"]["generation"] == 1  # main resource ignores status
    r = call(ns, "PATCH", f"{MDS}/g/status", {"status": {"replicas": 5}, "spec": {"replicas": 9}}, MERGE)
    assert r.json()["status"] == {"replicas": 5} and r.json()["spec"]["replicas"] == 1  # status changes only status
    r = call(ns, "PATCH", f"{MDS}/g", {"spec": {"replicas": 3}}, MERGE)
    assert r.json()["metadata"]["generation"] == 2 and r.json()["status"] == {"replicas": 5}


def test_custom_resources_are_validated_defaulted_and_pruned(ns: FakeKubeAPI) -> None:
    body = md("v", "ml")
    body["spec"]["unknownField"] = 1
    r = call(ns, "POST", MDS, body)
    assert r.status_code == 201 and "unknownField" not in r.json()["spec"] and r.json()["spec"]["replicas"] == 1
    strict = call(ns, "POST", MDS, {**body, "metadata": {"name": "v2"}}, fieldValidation="Strict")
    assert strict.status_code == 422 and 'unknown field "spec.unknownField"' in strict.json()["message"]
    bad = md("v3", "ml", model={"storage": {"pvc": {"claimName": "m"}}, "versions": [1]}, versionLabels={"s": 2})
    r = call(ns, "POST", MDS, bad)
    assert r.status_code == 422 and "must name a version listed" in r.json()["message"]


def test_delete_cascades_orphans_and_honours_finalizers(ns: FakeKubeAPI) -> None:
    owner = call(ns, "POST", CMS, cm("owner")).json()
    ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]
    for name in ("dep1", "dep2"):
        call(ns, "POST", CMS, {**cm(name), "metadata": {"name": name, "ownerReferences": ref}})
    call(ns, "DELETE", f"{CMS}/owner")
    assert ns.get("", "configmaps", "ml", "dep1") is None and ns.get("", "configmaps", "ml", "dep2") is None
    owner = call(ns, "POST", CMS, cm("owner2")).json()
    ref = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner["metadata"]["uid"]}]
    call(ns, "POST", CMS, {**cm("kept"), "metadata": {"name": "kept", "ownerReferences": ref}})
    call(ns, "DELETE", f"{CMS}/owner2", {"propagationPolicy": "Orphan"})
    assert "ownerReferences" not in ns.get("", "configmaps", "ml", "kept")["metadata"]
    call(ns, "POST", CMS, {**cm("fin"), "metadata": {"name": "fin", "finalizers": ["x/y"]}})
    r = call(ns, "DELETE", f"{CMS}/fin")
    assert r.json()["metadata"]["deletionTimestamp"]
    call(ns, "PATCH", f"{CMS}/fin", {"metadata": {"finalizers": None}}, MERGE)
    assert ns.get("", "configmaps", "ml", "fin") is None


def _watch(fake: FakeKubeAPI, path: str, out: list, **params: str) -> threading.Thread:
    def run() -> None:
        with requests.get(fake.url + path, params={"watch": "true", "timeoutSeconds": "1", **params}, stream=True, timeout=10) as r:
            for line in r.iter_lines():
                if line:
                    out.append(json.loads(line))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_watch_resumes_from_a_resource_version_and_expires(ns: FakeKubeAPI) -> None:
    first = call(ns, "POST", CMS, cm("w1")).json()["metadata"]["resourceVersion"]
    call(ns, "POST", CMS, cm("w2", {"k": "v"}))
    call(ns, "PATCH", f"{CMS}/w1", {"data": {"a": "b"}}, MERGE)
    call(ns, "DELETE", f"{CMS}/w2")
    events: list = []
    _watch(ns, CMS, events, resourceVersion=first).join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w2"), ("MODIFIED", "w1"), ("DELETED", "w2")]
    live: list = []
    t = _watch(ns, CMS, live, labelSelector="k=v", resourceVersion=call(ns, "GET", CMS).json()["metadata"]["resourceVersion"])
    import time

    time.sleep(0.3)
    call(ns, "POST", CMS, cm("w3", {"k": "v"}))
    call(ns, "POST", CMS, cm("w4"))
    t.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in live] == [("ADDED", "w3")]
    ns.compact()
    gone: list = []
    _watch(ns, CMS, gone, resourceVersion=first).join()
    assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410


def test_table_output_uses_printer_columns(ns: FakeKubeAPI) -> None:
    ns.add_object(md("t", "ml"))
    table = call(ns, "GET", MDS, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}).json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:3] == ["Name", "Ready", "Reason"]
    assert table["rows"][0]["cells"][0] == "t"


def test_status_writes_are_validated_against_the_schema(ns: FakeKubeAPI) -> None:
    ns.add_object(md("s", "ml"))
    bad = call(ns, "PATCH", f"{MDS}/s/status", {"status": {"conditions": [{"type": "Ready", "status": "Maybe", "reason": "x y"}]}}, MERGE)
    assert bad.status_code == 422 and "status.conditions" in bad.json()["message"]
    pruned = call(ns, "PATCH", f"{MDS}/s/status", {"status": {"replicas": 1, "bogus": 2}}, MERGE)
    assert pruned.status_code == 200 and pruned.json()["status"] == {"replicas": 1}


def test_a_delete_with_protobuf_options_deletes(ns: FakeKubeAPI) -> None:
    """client-go's typed clients send DeleteOptions in protobuf (Helm deleting its release Secrets on
    `helm uninstall`): the object goes, with the default options."""
    call(ns, "POST", CMS, cm("release"))
    r = call(ns, "DELETE", f"{CMS}/release", b"k8s\x00\n\x17\n\x02v1\x12\x0dDeleteOptions",
             headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert r.status_code == 200 and ns.get("", "configmaps", "ml", "release") is None
