"""Autoscaling in a closed loop (`make e2e`), on the local cluster with its real Prometheus scraping
real model-server pods: a load step of 8 concurrent clients through the Service raises the in-flight
requests per replica above the target, the operator scales up, the load spreads over the new pods;
the load drops to one client, and after the (shortened) scale-down window the operator scales back
down, with zero failed requests throughout. The time from the load step to the new pods serving is
printed.

(On this 2-core machine every pod shares the same two cores, so adding pods cannot bring a
CPU-bound latency down: the loop is shown on in-flight requests per replica, which more pods do
divide. The latency metrics go through the same algorithm; tests/operator/test_autoscale.py has it
table by table. The pods run every model call on their one model thread, `--inline_call_max_us=0`:
a call the server runs inline on its event loop is never seen in flight by a scrape.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from e2e_support import (
    READY_TIMEOUT,
    ClientThreads,
    Cluster,
    OperatorProcess,
    condition,
    half_plus_two,
    wait_for,
)

pytestmark = pytest.mark.e2e


class Clients(ClientThreads):
    """`n` clients, each sending predictions through the Service back to back (a connection each)."""

    def __init__(self, cluster: Cluster, ns: str, service: str, n: int):
        super().__init__(n)
        self.url = f"{cluster.service_url(ns, service)}/v1/models/half_plus_two:predict"

    def request(self, i: int, conn: Any) -> None:
        r = requests.post(self.url, json={"instances": [1.0, 2.0]}, timeout=30)
        r.raise_for_status()
        assert r.json() == {"predictions": [2.5, 3.0]}


def ready_pods(cluster: Cluster, ns: str, name: str) -> int:
    return sum(1 for p in cluster.pods(ns, name) if condition(p, "Ready").get("status") == "True"
               and not p["metadata"].get("deletionTimestamp"))


def test_replicas_follow_the_load_and_scale_down_fails_nothing(cluster: Cluster, namespace: str,
                                                               operator: OperatorProcess) -> None:
    prometheus = cluster.prometheus()
    cluster.create(half_plus_two("auto", namespace, autoscaling={
        "mode": "operator", "minReplicas": 1, "maxReplicas": 3, "metric": "inFlightRequests", "target": 1.5,
        "intervalSeconds": 2, "windowSeconds": 10, "prometheus": {"url": prometheus},
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}}, server={"extraArgs": ["--model_threads=1", "--inline_call_max_us=0"]}))
    wait_for(lambda: ready_pods(cluster, namespace, "auto") == 1 and condition(cluster.md(namespace, "auto"), "Ready")
             .get("status") == "True", READY_TIMEOUT, "1 pod ready")
    with Clients(cluster, namespace, "auto", 1) as base:
        wait_for(lambda: base.ok >= 20, 60, "light load flowing")
        started = time.monotonic()
        with Clients(cluster, namespace, "auto", 7) as step:
            wait_for(lambda: ready_pods(cluster, namespace, "auto") >= 2, READY_TIMEOUT, "a scale-up to a second ready pod")
            scaled_in = time.monotonic() - started
            st = cluster.md(namespace, "auto")["status"]["autoscaler"]
            assert st["desiredReplicas"] >= 2  # (its reason may already be ScaleDownStabilized: the load spread)
            served = step.ok
            wait_for(lambda: step.ok >= served + 100, 120, "the step's load served by the larger set")
        # back to one client: in flight per replica falls, and after the 10 s window the pods go
        wait_for(lambda: cluster.md(namespace, "auto")["status"]["autoscaler"].get("desiredReplicas") == 1, 180,
                 "a scale-down decision")
        wait_for(lambda: ready_pods(cluster, namespace, "auto") == 1 and len(cluster.pods(namespace, "auto")) == 1,
                 READY_TIMEOUT, "back to one pod")
        seen = base.ok
        wait_for(lambda: base.ok >= seen + 20, 60, "the light load still served")
    print(f"\nload step to a second pod ready: {scaled_in:.1f} s; "
          f"requests: {base.ok + step.ok} answered, {len(base.failures) + len(step.failures)} failed")
    assert not base.failures and not step.failures, (base.failures + step.failures)[:5]
    events = cluster.events(namespace, "auto")
    assert ("Normal", "ScaledUp") in events and ("Normal", "ScaledDown") in events
