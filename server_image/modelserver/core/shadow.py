"""Shadow traffic: judging a new version on real requests before any user sees its answers.

A routing table may give a model a `shadow` (routing.Shadow): after a request that the `source`
label (the stable version) answered, a sampled `percent` of them are run again, with the same
inputs and signature, on the version of the shadow's `label` (the candidate). The user's answer is
never delayed and never fails because of it: the shadow run starts after the answer is computed,
as a task of its own, and at most `max_in_flight` run at once (beyond: the request is not
mirrored, and counted as dropped). The shadow's answer is compared with the stable one and
discarded: per request, the largest absolute difference over the numeric outputs, how many rows
agree on their top-1 class (outputs of shape [rows, classes]), and both versions' times for the
same inputs (a paired comparison: the most sensitive latency test there is). The observations go
to the hooks (metrics: observability/metrics.py), which the operator's rollout analysis reads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager
from modelserver.core.request_context import RequestContext
from modelserver.core.runner import Tensors
from modelserver.core.servable import Servable, Signature

log = logging.getLogger("modelserver.shadow")


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_diff: float | None  # over the numeric outputs both answered (None: nothing comparable)
    rows: int = 0  # rows compared for the top-1 class
    agreed: int = 0  # of those, rows whose top-1 class is the same
    mismatched: bool = False  # an output missing on one side, or of another shape or type


@dataclass(frozen=True, slots=True)
class Observation:
    model: str
    version: int  # the shadow's
    result: str  # compared | failed | dropped
    comparison: Comparison | None = None
    primary_seconds: float | None = None
    shadow_seconds: float | None = None


ShadowHook = Callable[[Observation], None]


def compare(primary: Tensors, shadow: Tensors) -> Comparison:
    """Pure: how far the shadow's outputs are from the primary's, output by output."""
    worst: float | None = None
    rows = agreed = 0
    mismatched = set(primary) != set(shadow)
    for key in sorted(set(primary) & set(shadow)):
        a, b = np.asarray(primary[key]), np.asarray(shadow[key])
        if a.shape != b.shape or a.dtype.kind != b.dtype.kind:
            mismatched = True
            continue
        if a.dtype.kind in "fiub" and a.size:
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            worst = diff if worst is None or math.isnan(diff) else max(worst, diff)
            if a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f":
                rows += a.shape[0]
                agreed += int(np.sum(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        elif not np.array_equal(a, b):
            mismatched = True
    return Comparison(worst, rows, agreed, mismatched)


def seconds(ctx: RequestContext) -> float | None:
    """A request's time in the model, queue included (the same span for both sides of a pair)."""
    start = ctx.t_queue_start if ctx.t_queue_start is not None else ctx.t_compute_start
    if start is None or ctx.t_compute_end is None:
        return None
    return ctx.t_compute_end - start


class Plane(Protocol):
    """What a shadow run needs of the data plane (dataplane.DataPlane)."""

    manager: Manager | None

    def resolve_version(self, name: str, version: int, ctx: RequestContext) -> Servable: ...

    async def run(self, servable: Servable, sig: Signature, inputs: Tensors, ctx: RequestContext) -> Tensors: ...


class Shadower:
    """Starts the shadow runs of the requests a route mirrors; bounded, never awaited by them."""

    def __init__(self, plane: Plane, max_in_flight: int = 4, rng: random.Random | None = None) -> None:
        self.plane = plane
        self.max_in_flight = max_in_flight
        self.hooks: list[ShadowHook] = []
        self.in_flight = 0
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def maybe(self, servable: Servable, sig: Signature, inputs: Tensors, outputs: Tensors, ctx: RequestContext) -> None:
        """After a request was answered: mirror it if its route says so (cheap when it does not)."""
        manager = self.plane.manager
        rec = manager.models.get(ctx.model) if manager is not None else None
        shadow = rec.route.shadow if rec is not None and rec.route is not None else None
        if shadow is None or ctx.label != shadow.source or self._rng.random() * 100 >= shadow.percent:
            return
        assert rec is not None
        version = rec.labels.get(shadow.label)
        if version is None or version == servable.version:
            return
        if self.in_flight >= self.max_in_flight:
            self._emit(Observation(ctx.model, version, "dropped"))
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run(ctx, version, sig.name, inputs, outputs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, primary: RequestContext, version: int, signature: str, inputs: Tensors,
                   outputs: Tensors) -> None:
        ctx = RequestContext("shadow", primary.api)
        try:
            servable = self.plane.resolve_version(primary.model, version, ctx)
            answer = await self.plane.run(servable, servable.signature(signature), inputs, ctx)
        except ServingError as exc:
            log.debug("shadow run on %s version %d failed: %s", primary.model, version, exc)
            self._emit(Observation(primary.model, version, "failed"))
            return
        except Exception:  # a shadow must never take anything down
            log.exception("shadow run on %s version %d", primary.model, version)
            self._emit(Observation(primary.model, version, "failed"))
            return
        finally:
            self.in_flight -= 1
        self._emit(Observation(primary.model, version, "compared", compare(outputs, answer),
                               seconds(primary), seconds(ctx)))

    def _emit(self, obs: Observation) -> None:
        for hook in self.hooks:
            try:
                hook(obs)
            except Exception:
                log.exception("shadow hook %r failed", hook)

    async def drain(self, timeout: float = 5.0) -> None:
        """Waits for the shadow runs in flight (at shutdown), at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
