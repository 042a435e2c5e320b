"""Per-request traces (`--trace_file PATH --trace_sample_rate N`), the TensorBoard profiler
server (`--profiler_port N`), and `install`, which also starts OpenTelemetry tracing (otel.py)
and payload logging (payload.py).

Every Nth finished request is written as one JSON line: request id, model, version, label,
signature, protocol, API, status, batch size, and the wall-clock times (Unix seconds) at which it
was received, queued for batching, started and finished computing, and answered. `modeldeploy
trace-summary FILE` averages the phases per model and protocol.

Recording is cheap: unsampled requests cost one counter increment; sampled ones one small dict
and a buffered write (flushed at least once a second and on close).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelserver.core.request_context import RequestContext
from modelserver.observability import otel, payload


def _wall_offset() -> float:
    """Seconds to add to a perf_counter() reading to get Unix time."""
    return time.time() - time.perf_counter()


def trace_record(ctx: RequestContext, offset: float) -> dict[str, Any]:
    """The JSON object written for one request (pure)."""

    def wall(t: float | None) -> float | None:
        return None if t is None else round(t + offset, 6)

    return {
        "request_id": ctx.request_id,
        "model": ctx.model,
        "version": ctx.version,
        "label": ctx.label,
        "signature": ctx.signature,
        "protocol": ctx.protocol,
        "api": ctx.api,
        "status": ctx.status,
        "batch_size": ctx.batch_size,
        "receive": wall(ctx.t_receive),
        "queue_start": wall(ctx.t_queue_start),
        "compute_start": wall(ctx.t_compute_start),
        "compute_end": wall(ctx.t_compute_end),
        "send": wall(ctx.t_send if ctx.t_send is not None else time.perf_counter()),
    }


class TraceWriter:
    """Request-completion hook writing every `sample_rate`-th request to `path` (appending).

    Lines are kept and written whole, many per `write` on a descriptor opened with O_APPEND, so
    that several processes (front-end workers) can append to one file without splitting a line."""

    BUFFER_BYTES = 1 << 16

    def __init__(self, path: str | Path, sample_rate: int, flush_interval: float = 1.0) -> None:
        if sample_rate < 1:
            raise ValueError(f"--trace_sample_rate must be at least 1 when --trace_file is set; was {sample_rate}")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._seen = 0
        self._offset = _wall_offset()
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ValueError(f"cannot open --trace_file {path}: {e.strerror}") from None
        self._lines: list[str] = []
        self._pending = 0
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def finish(self, ctx: RequestContext) -> None:
        self._seen += 1
        if self._seen % self.sample_rate:
            return
        line = json.dumps(trace_record(ctx, self._offset), separators=(",", ":")) + "\n"
        with self._lock:
            if self._fd is None:
                return
            self._lines.append(line)
            self._pending += len(line)
            now = time.monotonic()
            if self._pending >= self.BUFFER_BYTES or now - self._last_flush >= self._flush_interval:
                self._write()

    def _write(self) -> None:
        """(under the lock) Writes the kept lines whole."""
        lines, self._lines, self._pending = self._lines, [], 0
        self._last_flush = time.monotonic()
        if lines and self._fd is not None:
            data = "".join(lines).encode("utf-8")
            while data:
                data = data[os.write(self._fd, data):]

    def flush(self) -> None:
        with self._lock:
            self._write()

    def flush_periodically(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flushes every `flush_interval` seconds on `loop` until closed, so that traces of a
        server gone quiet reach the file too."""

        def tick() -> None:
            if self._fd is None:
                return
            if time.monotonic() - self._last_flush >= self._flush_interval:
                self.flush()
            loop.call_later(self._flush_interval, tick)

        loop.call_later(self._flush_interval, tick)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._write()
                os.close(self._fd)
                self._fd = None


def start_profiler_server(port: int) -> None:
    """Starts TensorFlow's profiler gRPC service (what TensorBoard's Profile tab and
    `tf.profiler.experimental.client.trace` connect to) on `port`."""
    import tensorflow as tf

    tf.profiler.experimental.server.start(port)


class Observers:
    """What `install` started, closed in reverse order by `close()`."""

    def __init__(self) -> None:
        self.closes: list[Callable[[], None]] = []

    def close(self) -> None:
        while self.closes:
            self.closes.pop()()


def install(state: Any, server_metrics: Any = None) -> Observers | None:
    """Adds the request tracers to a ServerState's request hooks, in this order: the trace file
    (`--trace_file`), OpenTelemetry spans (otel.py) and payload logging (payload.py, which reads
    the span's trace id). Raises ValueError for unusable settings, which the server reports
    before starting; None when none is on."""
    flags = state.flags
    observers = Observers()
    try:
        if flags.trace_file:
            writer = TraceWriter(flags.trace_file, flags.trace_sample_rate or 1)
            state.request_hooks.append(writer.finish)
            writer.flush_periodically(asyncio.get_running_loop())
            observers.closes.append(writer.close)
        for started in (otel.install(state), payload.install(state, server_metrics)):
            if started is not None:
                observers.closes.append(started.close)
    except BaseException:
        observers.close()
        raise
    return observers if observers.closes else None
