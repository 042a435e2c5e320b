"""The activator's Prometheus metrics (served on its admin port at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REQUESTS = Counter(
    "modeldeploy_activator_requests_total",
    "requests that reached the activator, by what became of them: forwarded (a ready pod was there), released "
    "(held, then forwarded), refused (over maxHeldRequests), timed_out (holdTimeoutSeconds), deadline (the "
    "client's deadline first), gone (the client left while held), failed (the pod could not be reached)",
    ["namespace", "name", "protocol", "result"],
)
HELD = Gauge("modeldeploy_activator_held_requests", "requests waiting for a ready pod now", ["namespace", "name"])
