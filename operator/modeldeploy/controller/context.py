"""The operator's context: built once by `modeldeploy operator` (operator_main.run), handed to kopf as
`kopf.operator(memo=...)`, and read by every handler from its `memo` argument.

It holds what the handlers and reconciles share: the Kubernetes client, the operator-wide defaults
(flags), the cache of watched objects, the work queue and the threads that run reconciles. kopf
gives each watched object a shallow copy of the memo, so these objects are shared by all; nothing
rebinds them after `build`. Tests build their own context (no module-level state).
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from modeldeploy.clients import modelstatus
from modeldeploy.clients.kube import Kube
from modeldeploy.controller import metrics, reconcile
from modeldeploy.controller.cache import Cache
from modeldeploy.controller.workqueue import WorkQueue
from modeldeploy.decisions import render

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment


@dataclass
class OperatorContext:
    kube: Kube
    defaults: render.Defaults = field(default_factory=render.Defaults)
    # The periodic re-check of every ModelDeployment (storage that appeared, the servers' states).
    resync_seconds: float = 60.0
    # Where to ask the model servers for version states ({name}, {namespace}); "" turns it off.
    model_status_url: str = modelstatus.DEFAULT_URL_TEMPLATE
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
    traffic_pending: dict[tuple[str, str], bool] = field(default_factory=dict)
    cache: Cache = field(default_factory=Cache)
    claims_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (namespace, claim) -> known until
    queue: WorkQueue[Key] = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.queue = WorkQueue(self._run, self.workers)
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix="reconcile")
        metrics.QUEUE_DEPTH.set_function(self.queue.__len__)

    def probe(self, namespace: str, name: str, model: str, labels: list[str]) -> dict[int, modelstatus.VersionReport] | None:
        """The servers' own version reports (None: turned off or unreachable)."""
        if not self.model_status_url:
            return None
        return modelstatus.fetch(self.model_status_url.format(name=name, namespace=namespace), model, labels)

    async def _run(self, key: Key) -> float | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, reconcile.reconcile, self, *key)

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
