"""The Kubernetes API edge: a thin JSON client over the `kubernetes` package's ApiClient.

The `kubernetes` client supplies configuration and authentication (kubeconfig or in-cluster); we send
plain dicts and read plain dicts, so our manifests stay the renderer's output and nothing is
round-tripped through generated models. Server-side apply uses our field manager with `force=true`:
the operator owns every field it renders. A child is created with a POST (`create`: a 409 when an
object of that name exists, so nothing is taken over), then applied once; the create leaves its
fields to our field manager as an `Update` entry of managedFields, which would keep a field a later
apply leaves out, so `drop_create_entry` removes that entry once the apply owns the same fields (as
kubectl's upgrade from client-side to server-side apply does).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from modeldeploy import __version__
from modeldeploy.api import v1alpha1 as api

USER_AGENT = f"modeldeploy-operator/{__version__}"
Obj = dict[str, Any]

# (apiVersion, kind) -> (path prefix, plural)
_KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("/apis/networking.k8s.io/v1", "networkpolicies"),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("/apis/discovery.k8s.io/v1", "endpointslices"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments"),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    (api.API_VERSION, api.KIND): (f"/apis/{api.API_VERSION}", api.PLURAL),
}


@dataclass
class KubeError(Exception):
    status: int
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


def path_for(api_version: str, kind: str, namespace: str, name: str = "", subresource: str = "") -> str:
    prefix, plural = _KINDS[(api_version, kind)]
    p = f"{prefix}/namespaces/{namespace}/{plural}"
    if name:
        p += f"/{name}"
    if subresource:
        p += f"/{subresource}"
    return p


def without_create_entry(obj: Obj) -> list[Obj] | None:
    """Pure: the object's managedFields without our field manager's `Update` entry of the main
    resource, when it has one beside our `Apply` entry (None otherwise)."""
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    ours = [e for e in entries if e.get("manager") == api.FIELD_MANAGER and not e.get("subresource")]
    if not any(e.get("operation") == "Apply" for e in ours) or not any(e.get("operation") == "Update" for e in ours):
        return None
    return [e for e in entries if not (e in ours and e.get("operation") == "Update")]


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api = api_client
        self.api.user_agent = USER_AGENT  # the audit log and API server logs tell our calls apart

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster configuration when running in a pod, else KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            # KUBECONFIG as it is now (the client library reads it once, when first imported)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        return cls(client.ApiClient())

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float = 30,
    ) -> Obj:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        elif body is not None:
            headers["Content-Type"] = "application/json"
        m, url, h, b, post = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            resp = self.api.call_api(m, url, h, b, post, _request_timeout=timeout)
            data = resp.read()
            status = resp.status
        except client.ApiException as exc:
            data, status = (exc.body or b""), exc.status or 0
        except Exception as exc:  # connection refused, timeouts: transient
            raise KubeError(0, "ConnectionError", str(exc)) from exc
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        try:
            parsed = json.loads(data) if data else {}
        except ValueError:
            parsed = {"message": data}
        if status >= 400:
            raise KubeError(status, parsed.get("reason", "") or str(status), parsed.get("message", "") or str(data))
        return parsed

    # -- typed helpers --
    def apply(self, obj: Obj) -> Obj:
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return self.request(
            "PATCH", path, query={"fieldManager": api.FIELD_MANAGER, "force": "true"}, body=obj,
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: Obj) -> Obj:
        """POST: the object created, or KubeError 409 (AlreadyExists) when one of that name exists."""
        meta = obj["metadata"]
        return self.request("POST", path_for(obj["apiVersion"], obj["kind"], meta["namespace"]),
                            query={"fieldManager": api.FIELD_MANAGER}, body=obj)

    def drop_create_entry(self, obj: Obj) -> Obj | None:
        """Remove the `Update` managedFields entry of our field manager from an object that our
        apply also manages (a JSON patch, conditional on the resourceVersion); None when there is
        none (or the server reports no managedFields)."""
        kept = without_create_entry(obj)
        if kept is None:
            return None
        meta = obj["metadata"]
        patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                 {"op": "replace", "path": "/metadata/managedFields", "value": kept}]
        return self.request("PATCH", path_for(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]),
                            body=patch, content_type="application/json-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """DELETE; one already gone is fine."""
        try:
            self.request("DELETE", path_for(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status != 404:
                raise

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.request("GET", path_for(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, namespace: str, name: str, status: Obj, resource_version: str | None = None) -> Obj:
        body: Obj = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self.request(
            "PATCH", path_for(api.API_VERSION, api.KIND, namespace, name, "status"), body=body,
            content_type="application/merge-patch+json",
        )

    def patch_finalizers(self, namespace: str, name: str, finalizers: list[str], resource_version: str | None) -> Obj:
        """Set a ModelDeployment's finalizers (a merge patch replaces the list, so it is conditional
        on the resourceVersion it was computed from: 409 if someone changed the object since)."""
        meta: Obj = {"finalizers": finalizers or None}
        if resource_version:
            meta["resourceVersion"] = resource_version
        return self.request(
            "PATCH", path_for(api.API_VERSION, api.KIND, namespace, name), body={"metadata": meta},
            content_type="application/merge-patch+json",
        )

    def post_event(self, obj: Obj, etype: str, reason: str, message: str, component: str,
                   instance: str = "") -> Obj:
        """A core/v1 Event about `obj`, as kubectl describe shows it (reason, message, From: component)."""
        meta = obj["metadata"]
        stamp = dt.datetime.now(dt.UTC).isoformat()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion", api.API_VERSION), "kind": obj.get("kind", api.KIND),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid", "")},
            "type": etype, "reason": reason, "message": message[:1000],
            "source": {"component": component}, "reportingComponent": component,
            "reportingInstance": instance or socket.gethostname(),
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        return self.request("POST", path_for("v1", "Event", meta["namespace"]), body=event)

    def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves a resource (discovery; e.g. our CRD is installed)."""
        try:
            listing = self.request("GET", f"/apis/{group}/{version}")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return any(r.get("name") == plural for r in listing.get("resources") or [])
