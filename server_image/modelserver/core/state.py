"""What the front ends share: the manager, the data plane, the runner choice, and the hooks.

Hooks (for batching, warmup, metrics, tracing):
- `runner_for(model)`: the runner of a model's computations (`default_runner`: a `DirectRunner`,
  or the batching.Batcher with `--enable_batching`).
- `request_hooks`: callables run by `finish(ctx)` once per request, right after its answer.
- `rest_routes`: extra aiohttp routes registered on the REST server (e.g. the metrics path).
- `manager.on_version_loaded`: called between LOADING and AVAILABLE (see manager.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from modelserver.config.flags import Flags
from modelserver.core.dataplane import DataPlane
from modelserver.core.manager import Manager
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import Runner

log = logging.getLogger("modelserver")

RequestHook = Callable[[RequestContext], None]


@dataclass
class ServerState:
    flags: Flags
    manager: Manager
    default_runner: Runner
    request_hooks: list[RequestHook] = field(default_factory=list)
    rest_routes: list[web.RouteDef] = field(default_factory=list)
    monitoring_config: Any = None  # monitoring_config_pb2.MonitoringConfig or None
    draining: bool = False
    drain_gate: asyncio.Event | None = None  # set while draining: new gRPC calls wait on it
    trace_context: bool = False  # the front ends read the client's traceparent (observability/tracing)
    render_metrics: Callable[[], Awaitable[bytes]] | None = None  # a front-end worker: the pod's metrics
    capture_payloads: bool = False  # the front ends keep request and answer payloads on the context
    plane: DataPlane = field(init=False)

    def __post_init__(self) -> None:
        self.plane = DataPlane(self.manager, self.runner_for, self.finish)
        self.plane.max_tensor_bytes = self.flags.max_request_tensor_bytes or None

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered, over every front end."""
        return self.plane.in_flight

    def runner_for(self, model: str) -> Runner:
        return self.default_runner

    def finish(self, ctx: RequestContext) -> None:
        """Called exactly once per request, when its answer (or error) is sent."""
        ctx.t_send = time.perf_counter()
        for hook in self.request_hooks:
            try:
                hook(ctx)
            except Exception:  # a broken hook must never fail a request
                log.exception("request hook %r failed", hook)
