"""The running operator: configure kopf, connect to the cluster, wait for the CRD, serve metrics
and liveness, and hand kopf the context (its memo) with the reconcile the work queue runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import kopf
import prometheus_client
from kubernetes.config import ConfigException

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients.kube import Kube, KubeError
from modeldeploy.controller import (
    handlers,  # noqa: F401 - importing handlers registers them with kopf
    reconcile,
)
from modeldeploy.controller.context import OperatorContext, Settings


@dataclass(frozen=True)
class Serving:
    """Where the operator runs: the namespaces it watches (none: all), its metrics and health ports."""

    namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    health_port: int = 8081
    bind: str = "0.0.0.0"
    crd_wait_seconds: float = 300.0
    verbose: bool = False


def wait_for_crd(kube: Any, timeout: float, interval: float = 2.0) -> bool:
    """Block until the ModelDeployment CRD is served (kopf only watches resources found at start)."""
    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            if kube.serves(api.GROUP, api.VERSION, api.PLURAL):
                return True
            reason = f"{api.PLURAL}.{api.GROUP}/{api.VERSION} is not served"
        except KubeError as exc:
            reason = str(exc)
        if time.monotonic() >= deadline:
            print(f"modeldeploy operator: the ModelDeployment CRD is not installed ({reason}); "
                  "install it with `kubectl apply -f crds/` (or the Helm chart)", file=sys.stderr)
            return False
        if not warned:
            print(f"modeldeploy operator: waiting for the ModelDeployment CRD ({reason})", file=sys.stderr, flush=True)
            warned = True
        time.sleep(interval)


def run(settings: Settings, serving: Serving) -> int:
    """Run until stopped; the exit status (2: no cluster configuration, 3: no CRD)."""
    kopf.configure(verbose=serving.verbose)
    if not serving.verbose:
        # kopf logs every handler call at INFO ("Handler ... succeeded"): one line per watch event.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        kube = Kube.from_environment()
    except (ConfigException, OSError) as exc:
        print(f"modeldeploy operator: no Kubernetes configuration (in-cluster or KUBECONFIG): {exc}", file=sys.stderr)
        return 2
    if not wait_for_crd(kube, serving.crd_wait_seconds):
        return 3
    context = OperatorContext(kube=kube, reconcile=reconcile.reconcile, settings=settings)
    if serving.metrics_port:
        prometheus_client.start_http_server(serving.metrics_port, addr=serving.bind)
    liveness = f"http://{serving.bind}:{serving.health_port}/healthz" if serving.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not serving.namespaces,
            namespaces=list(serving.namespaces),
            standalone=True,
            liveness_endpoint=liveness,
            memo=context,
        )
    )
    return 0
