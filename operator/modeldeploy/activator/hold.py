"""The hold gate of one ModelDeployment: at most `max_held` requests wait for a ready pod, each at
most `hold_timeout` seconds or until its client's deadline, whichever comes first.

`Gate.wait(deadline)` returns the endpoint list to forward to (at once when there are ready pods),
or raises `Refused` (the cap: REST 429 / gRPC RESOURCE_EXHAUSTED), `TimedOut` (the hold timeout:
503 / UNAVAILABLE, "the model is starting") or `DeadlineExceeded` (the client's own deadline came
first). `set_endpoints` releases every waiting request at once. The gate keeps the figures the
operator reads: how many wait now, since when the oldest waits, the last cold start (first held
request -> release -> its first answer), and the demand sequence the operator long-polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from modeldeploy.activator import metrics


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    grpc_port: int
    http_port: int


@dataclass(frozen=True, slots=True)
class Limits:
    max_held: int = 100
    hold_timeout: float = 300.0


class HoldError(Exception):
    """Why a held request is answered by the activator itself; `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Refused(HoldError):
    """Over the cap of held requests."""


class TimedOut(HoldError):
    """No ready pod within the hold timeout."""


class DeadlineExceeded(HoldError):
    """The client's deadline came before a ready pod."""


@dataclass
class ColdStart:
    held_at: float  # Unix time of the first request held while there was no ready pod
    released_at: float | None = None  # the first ready pod arrived
    answered_at: float | None = None  # the first released request's answer went back

    def to_json(self) -> dict[str, float | None]:
        return {"heldAt": self.held_at, "releasedAt": self.released_at, "answeredAt": self.answered_at}


@dataclass
class Gate:
    namespace: str
    name: str
    limits: Limits = field(default_factory=Limits)
    endpoints: tuple[Endpoint, ...] = ()
    held: int = 0
    waiting_since: float | None = None  # Unix time of the oldest waiting request's arrival
    last_cold_start: ColdStart | None = None
    _current: ColdStart | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    on_demand: list[Callable[[], None]] = field(default_factory=list)  # called when demand begins

    def set_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints
        if endpoints:
            if self._current is not None and self._current.released_at is None:
                self._current.released_at = time.time()
            self._released.set()
        else:
            self._released.clear()  # the same event: requests already waiting on it stay held

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the last cold start's length, else 5."""
        c = self.last_cold_start
        if c is not None and c.released_at is not None:
            return max(1, round(c.released_at - c.held_at))
        return 5

    async def wait(self, protocol: str, deadline: float | None = None) -> tuple[tuple[Endpoint, ...], bool]:
        """The endpoints to forward to, and whether this request was held (it waited for them).
        `deadline`: the client's, in loop time (None: none)."""
        if self.endpoints:
            return self.endpoints, False
        if self.held >= self.limits.max_held:
            metrics.REQUESTS.labels(self.namespace, self.name, protocol, "refused").inc()
            raise Refused(f"model {self.name} is starting (scaled to zero) and {self.held} requests already wait "
                          f"for it (scaleToZero.maxHeldRequests); retry later", self.retry_after())
        loop = asyncio.get_running_loop()
        hold_end = loop.time() + self.limits.hold_timeout
        end = hold_end if deadline is None else min(deadline, hold_end)
        self._enter()
        try:
            await asyncio.wait_for(self._released.wait(), max(0.0, end - loop.time()))
        except TimeoutError:
            if deadline is not None and deadline < hold_end:
                metrics.REQUESTS.labels(self.namespace, self.name, protocol, "deadline").inc()
                raise DeadlineExceeded(f"model {self.name} is starting (scaled to zero): the request's deadline "
                                       "came before its first pod was ready", self.retry_after()) from None
            metrics.REQUESTS.labels(self.namespace, self.name, protocol, "timed_out").inc()
            raise TimedOut(f"model {self.name} is starting (scaled to zero): no pod was ready within "
                           f"{self.limits.hold_timeout:g} s (scaleToZero.holdTimeoutSeconds); retry later",
                           self.retry_after()) from None
        finally:
            self._leave()
        metrics.REQUESTS.labels(self.namespace, self.name, protocol, "released").inc()
        return self.endpoints, True

    def answered(self) -> None:
        """A released request's answer went back: the first one closes the cold start."""
        c = self._current
        if c is not None and c.released_at is not None and c.answered_at is None:
            c.answered_at = time.time()
            self.last_cold_start, self._current = c, None

    def _enter(self) -> None:
        self.held += 1
        metrics.HELD.labels(self.namespace, self.name).set(self.held)
        if self.waiting_since is None:
            self.waiting_since = time.time()
        if self._current is None:
            self._current = ColdStart(time.time())
            for callback in self.on_demand:
                callback()

    def _leave(self) -> None:
        self.held -= 1
        metrics.HELD.labels(self.namespace, self.name).set(self.held)
        if self.held == 0:
            self.waiting_since = None
            c = self._current
            if c is not None and c.released_at is None:
                self._current = None  # every held request gave up before a pod was ready: no cold start

    def report(self) -> dict[str, object]:
        return {"namespace": self.namespace, "name": self.name, "held": self.held,
                "waitingSince": self.waiting_since, "ready": len(self.endpoints),
                "lastColdStart": self.last_cold_start.to_json() if self.last_cold_start else None}
