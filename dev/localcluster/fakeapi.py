"""A small, faithful fake kube-apiserver for tests (aiohttp, in a background thread).

There is no real API server on the test machines, so the real kopf operator and the real kubectl
run against this one. It behaves like kube-apiserver wherever modeldeploy relies on it:

- discovery (`/api`, `/apis`, `/api/v1`, `/apis/G/V`, `/version`) incl. CRDs registered at runtime
  (creating a CustomResourceDefinition serves its resource, with short names and printer columns);
- CRUD: GET/LIST (label and field selectors), POST (generateName, AlreadyExists), PUT (resourceVersion
  precondition, 409 Conflict), DELETE (finalizers, deletionTimestamp, ownerReference cascade GC with
  Background/Foreground/Orphan propagation), PATCH as JSON merge patch, JSON patch (a failed `test`
  gives 422), strategic merge patch (lists of named items merged by name; 415 for custom resources),
  and server-side apply (`application/apply-patch+yaml`, per-field-manager: fields a manager applied
  before and leaves out now are removed; lists are atomic);
- `metadata.uid/resourceVersion/creationTimestamp/generation` stamped; generation bumps on spec
  changes only; the status subresource is isolated (the main resource ignores status, `/status`
  changes only status);
- watch with resume: `?watch=true&resourceVersion=N` replays every event after N (410 Gone once the
  history has been compacted with `compact()`), label/field selectors, `timeoutSeconds`;
- validation: custom resources against their CRD's structural schema (defaults applied, unknown
  fields pruned or rejected with `fieldValidation=Strict`, types, enums, bounds, patterns, required,
  `x-kubernetes-list-type: set`, and the CEL rules in `x-kubernetes-validations`, evaluated with
  cel-python); built-in kinds with `kubernetes-validate --strict` (422 with the reason);
- server-side printing (`Accept: ...;as=Table`, in lists, gets and `kubectl get -w` watches) with the
  CRD's printer columns and kube-apiserver's columns for pods, Deployments, ReplicaSets, Services,
  EndpointSlices, Nodes, Events and claims (`printers`);
- Pods deleted gracefully once on a node (deletionTimestamp and deletionGracePeriodSeconds; the
  node agent deletes them with grace 0 when their containers stopped), `pods/log` (from the node
  agent's `log_source`), `pods/portforward` (kubectl's WebSocket, `portforward`), the `scale`
  subresource of Deployments and ReplicaSets;
- bodies in JSON, YAML, and protobuf for the kinds `kubectl create namespace|configmap|secret`
  sends so (`kubeproto`; 415 for other kinds in protobuf);
- in-process watchers (`subscribe`): the local cluster's controllers get every change, in order;
- an optional Deployment controller stand-in (`simulate_deployments=True`, `standin`): it reports
  every Deployment's pods as ready shortly after each change (`set_deployment_ready` overrides it).

`FakeKubeAPI` is the store (`store.Store`: the objects and the verbs, which it extends) with its
parts composed in: the HTTP front end (`http`, an `httpapi.HttpFront`) and the Deployment stand-in
(`standin`, a `standin.DeploymentStandIn`, the store's write hook); it adds the serving thread.

Every resource request is recorded in an audit log of (verb, apiGroup, resource, subresource,
namespace, name, userAgent, code): `fake.audit()` returns it, `fake.write_audit(path)` writes JSON,
`fake.audit_rules(user_agent_prefix)` returns the distinct (verb, group, resource, subresource)
tuples, e.g. to check a Helm chart's RBAC against what the operator really calls.

Usage::

    from localcluster.fakeapi import FakeKubeAPI

    with FakeKubeAPI() as fake:                 # serves http://127.0.0.1:<free port>
        kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
        fake.apply_yaml(Path("crds/modeldeployments.yaml").read_text())
        ...  # run kopf / kubectl with KUBECONFIG=kubeconfig
        fake.get("apps", "deployments", "ns", "name")    # direct access, not audited
        fake.audit_rules("modeldeploy")

Known gaps (not relied on): no authn/authz, no admission webhooks, no scheduling (the local cluster's
node agent binds pods), watches do not send DELETED when an object stops matching a label selector,
SSA reports no field conflicts, objects live in memory only.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from localcluster.admission import VALIDATE_K8S_VERSION, validate_builtin, validate_custom
from localcluster.apimachinery import (
    ApiError,
    AuditEntry,
    Resource,
    matches,
    merge_patch,
    parse_label_selector,
    server_side_apply,
    strategic_merge,
)
from localcluster.httpapi import HttpFront
from localcluster.standin import DeploymentStandIn
from localcluster.store import Store

__all__ = [
    "VALIDATE_K8S_VERSION", "ApiError", "AuditEntry", "FakeKubeAPI", "Resource", "matches", "merge_patch",
    "parse_label_selector", "running", "server_side_apply", "strategic_merge", "validate_builtin", "validate_custom",
]


class FakeKubeAPI(Store):
    """The fake API server. Start with `start()` (or as a context manager); stop with `stop()`."""

    def __init__(self, simulate_deployments: bool = True, validate_builtins: bool = True):
        super().__init__(validate_builtins)
        self.http = HttpFront(self)
        self.standin = DeploymentStandIn(self, simulate_deployments)
        self.write_hooks.append(self.standin.after_write)
        self.url = ""
        self._thread: threading.Thread | None = None

    @property
    def fail_next(self) -> list[tuple[str, str, int]]:
        """(verb, plural, code) entries: the next such request fails once with that code (add to the list)."""
        return self.http.fail_next

    # -- lifecycle --
    def start(self) -> FakeKubeAPI:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = self.http.application(self.url)
        started = threading.Event()

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-kube-apiserver", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop(self) -> None:
        if self.loop and self._thread:
            for _, _, q in list(self.watchers):
                self.loop.call_soon_threadsafe(q.put_nowait, None)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        path = Path(path)
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def set_deployment_ready(self, namespace: str, name: str, ready: int) -> None:
        """Pretend `ready` pods of a Deployment are ready (overrides simulate_deployments)."""
        self.standin.set_ready(namespace, name, ready)

    # -- audit --
    def audit(self) -> list[AuditEntry]:
        with self.lock:
            return list(self.http.audit_log)

    def audit_rules(self, user_agent_prefix: str = "") -> set[tuple[str, str, str, str]]:
        return {
            (a.verb, a.apiGroup, a.resource, a.subresource)
            for a in self.audit()
            if a.userAgent.startswith(user_agent_prefix)
        }

    def write_audit(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps([asdict(a) for a in self.audit()], indent=1))

    def clear_audit(self) -> None:
        with self.lock:
            self.http.audit_log.clear()


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[FakeKubeAPI]:
    fake = FakeKubeAPI(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
