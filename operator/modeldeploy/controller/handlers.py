"""kopf handlers: what marks a ModelDeployment dirty. Importing this module registers them.

No handler reconciles. Each watch event updates the cache and, when it is news, adds the
ModelDeployment it concerns to the work queue (`memo.queue`); the queue's workers reconcile (see
workqueue.py: one run per burst of events, one run at a time per object, retries with backoff,
the periodic re-check as a timer). So:

- a ModelDeployment listed at start, created, changed (spec, metadata, deletion) or deleted: queued
  at once (its own status writes come back as echoes and queue nothing);
- any event on a child we manage (ConfigMap, Deployment, Services, PDB, NetworkPolicy, HPA with
  our managed-by label), on our Services' EndpointSlices (pods becoming ready or going) or on the
  server pods (a container that crashes),
  a hand edit, a deletion, the Deployment controller's status: its owner queued after
  `child_event_delay` (0.1 s), so that the events of one change join into one run.

The children are indexed into the cache by kopf index handlers: kopf runs every other handler only
once the initial listings of indexed resources are in, so reconciles never see a half-filled cache.
Handlers are async and cheap: nothing here blocks kopf's event loop. kopf posts only its own
warnings; our Events come from the reconciles.

Secrets are not watched: the operator holds no read access to them (RBAC cannot narrow a list or
watch by label, so a Secret watch would mean reading every Secret). It only creates each
ModelDeployment's token Secret, whose content it derives (decisions.admintoken).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modeldeploy.api import v1alpha1 as api
from modeldeploy.controller import metrics
from modeldeploy.controller.context import OperatorContext
from modeldeploy.decisions import render

Obj = dict[str, Any]
MANAGED_BY = {"app.kubernetes.io/managed-by": "modeldeploy"}
CHILDREN = [("", "v1", "configmaps", "ConfigMap"), ("apps", "v1", "deployments", "Deployment"),
            ("", "v1", "services", "Service"), ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
            ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
            ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
            # not rendered: the EndpointSlice controller makes them for our Services, with their
            # labels (so the managed-by selector finds them): which pods are ready, and where
            ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
            # not rendered either: the Deployment's pods carry the template's labels; their container
            # states tell a crash loop, which the Deployment's own status never shows
            ("", "v1", "pods", "Pod")]


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection stays unused (no create/update handlers: an event only marks its
    ModelDeployment dirty), so it keeps no diff base; kopf's default deep-copies every watched
    object at every event to build one (the largest share of the operator's CPU at 1,000 objects)."""

    def build(self, *, body: kopf.Body, **_: Any) -> kopf.BodyEssence:
        return {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


class NoProgress(kopf.ProgressStorage):
    """No handler here is retried by kopf (the work queue retries), so no progress is kept."""

    def fetch(self, *, key: Any, body: kopf.Body) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        pass

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        pass

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: OperatorContext, **_: Any) -> None:
    # kopf's own bookkeeping stays unused: no annotations, no finalizer of its own (ours is the
    # reconciler's, see plan.FINALIZER).
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
    settings.posting.level = logging.WARNING  # kopf posts only its own warnings and errors
    settings.posting.reporting_component = memo.settings.reporting_component
    # We watch our CRD cluster-wide or in the namespaces given: no need to scan CRDs/namespaces.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    memo.start()


@kopf.on.cleanup()
async def stop(memo: OperatorContext, **_: Any) -> None:
    await memo.stop()


async def on_model_deployment(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
    obj: Obj = dict(event["object"])
    meta = obj["metadata"]
    key = (meta["namespace"], meta["name"])
    if event["type"] == "DELETED":
        memo.cache.deleted(obj)
        memo.queue.forget(key)
        news = False
    else:
        news = memo.cache.seen(obj)
    metrics.MANAGED.set(memo.cache.count(api.KIND))
    if news:
        memo.queue.add(key)


async def index_child(body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
    """Runs before any other handler, for the initial listing too: the cache is full by then."""
    memo.cache.seen(dict(body))


async def on_child(event: kopf.RawEvent, memo: OperatorContext, **_: Any) -> None:
    obj: Obj = dict(event["object"])
    meta = obj.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(render.OWNER_LABEL)
    if event["type"] == "DELETED":
        memo.cache.deleted(obj)
        news = True
    else:
        news = memo.cache.seen(obj)
    if owner and meta.get("namespace") and news:
        metrics.CHILD_EVENTS.labels(kind=obj.get("kind", ""), type=event["type"] or "None").inc()
        memo.queue.add_after((meta["namespace"], owner), memo.settings.child_event_delay)


def register() -> None:
    kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, id="model-deployments")(on_model_deployment)
    for group, version, plural, _ in CHILDREN:
        kopf.index(group, version, plural, labels=MANAGED_BY, id=f"{plural}-cache")(index_child)
        kopf.on.event(group, version, plural, labels=MANAGED_BY, id=f"{plural}-events")(on_child)


register()
