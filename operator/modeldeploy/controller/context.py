"""The operator's context: built once by `modeldeploy operator` (controller.run), handed to kopf as
`kopf.operator(memo=...)`, and read by every handler from its `memo` argument.

- `Settings`: what the operator was told (flags and defaults); frozen, never changes while it runs.
- `OperatorContext`: what the handlers and reconciles share while it runs: the Kubernetes client,
  the cache of watched objects, the work queue and the threads that run reconciles, and the small
  memories of the reconciles (claims found, token Secrets created, ModelDeployments whose traffic
  is still moving).

kopf gives each watched object a shallow copy of the memo, so these objects are shared by all;
nothing rebinds them after construction. Tests build their own context (no module-level state).
The reconcile function is handed in (controller.run passes reconcile.reconcile), so this module
does not import the reconcile that reads it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import servers
from modeldeploy.clients.kube import Kube
from modeldeploy.controller import activation, metrics
from modeldeploy.controller.cache import Cache
from modeldeploy.controller.workqueue import WorkQueue
from modeldeploy.decisions import render
from modeldeploy.decisions.policy import Policy

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment


@dataclass(frozen=True)
class Settings:
    defaults: render.Defaults = field(default_factory=render.Defaults)
    # The periodic re-check of every ModelDeployment (storage that appeared, the servers' states).
    resync_seconds: float = 60.0
    # Where to ask the model servers for version states ({name}, {namespace}); "" turns it off.
    model_status_url: str = servers.DEFAULT_URL_TEMPLATE
    # Reconciles that run at once (threads), and how long a child's event waits to join others.
    workers: int = 8
    child_event_delay: float = 0.1
    # How long a PersistentVolumeClaim found stays known to exist (reconcile.claim_exists).
    claim_seconds: float = 300.0
    reporting_component: str = "modeldeploy-operator"
    reporting_instance: str = field(default_factory=socket.gethostname)
    # Prometheus for autoscaling and rollout analysis (a ModelDeployment may name its own).
    prometheus_url: str = ""
    # Ask each ready pod on its admin port and push routing tables there (off: ConfigMap only).
    pod_admin: bool = True
    # While labels or weights are still moving (a version loading, a pod lagging): look again this soon.
    traffic_recheck_seconds: float = 1.0
    # The key each ModelDeployment's admin token is derived from (--token-key-file; decisions.admintoken),
    # and how often a token Secret is created again (a no-op when it is there; the operator cannot see it go).
    token_key: bytes = field(default=b"", repr=False)
    secret_seconds: float = 300.0
    # What the cluster admin allows a spec (hostPath, the Prometheus URLs the operator fetches).
    policy: Policy = field(default_factory=Policy)
    # The activator (scale to zero): its HTTP API ("" : none, so nothing scales to zero) and token.
    activator_url: str = ""
    activator_token: str = field(default="", repr=False)


Reconcile = Callable[["OperatorContext", str, str], "float | None"]


@dataclass
class OperatorContext:
    kube: Kube
    reconcile: Reconcile  # one run for the work queue: the seconds until the next look (None: gone)
    settings: Settings = field(default_factory=Settings)
    cache: Cache = field(default_factory=Cache)
    claims_seen: dict[Key, float] = field(default_factory=dict)  # (namespace, claim) -> known until
    # (namespace, name, uid) -> when its token Secret's create last went through (created, or there)
    secrets_created: dict[tuple[str, str, str], float] = field(default_factory=dict)
    traffic_pending: dict[Key, bool] = field(default_factory=dict)
    queue: WorkQueue[Key] = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)
    demand: asyncio.Task[None] | None = field(init=False, default=None)  # activation.watch (scale to zero)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._run, self.settings.workers)
        self.executor = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="reconcile")
        metrics.QUEUE_DEPTH.set_function(self.queue.__len__)

    async def _run(self, key: Key) -> float | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.reconcile, self, *key)

    def start(self) -> None:
        self.queue.start()
        if self.settings.activator_url:
            self.demand = asyncio.get_running_loop().create_task(
                activation.watch(self.settings.activator_url, self.settings.activator_token, self.queue.add,
                                 self._requeue_all))

    def _requeue_all(self) -> None:
        for key in self.cache.names(api.KIND):
            self.queue.add(key)

    async def stop(self) -> None:
        if self.demand is not None:
            self.demand.cancel()
            await asyncio.gather(self.demand, return_exceptions=True)
        await self.queue.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
