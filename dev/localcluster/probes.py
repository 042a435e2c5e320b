"""Container probes as the kubelet runs them: the rendered startup, readiness and liveness probes.

`parse_probe` and `ProbeCounter` are pure (the probe's target after port mapping, and the
success/failure thresholds); `check` does one probe: `httpGet` (a status from 200 to 399 passes),
`tcpSocket` (the port accepts a connection) or `exec` (exit status 0), each within
`timeoutSeconds`. gRPC probes are checked as TCP connects (no grpc.health here).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace

import aiohttp

from localcluster.objects import Obj


@dataclass(frozen=True)
class Probe:
    kind: str  # http | tcp | exec
    port: int = 0
    path: str = "/"
    scheme: str = "http"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def _port(value: object, named: dict[str, int], host_ports: dict[int, int]) -> int:
    """A probe's port (number or container port name) as the host port it is mapped to."""
    if isinstance(value, str) and not value.isdigit():
        if value not in named:
            raise ValueError(f'probe port "{value}" names no container port')
        value = named[value]
    port = int(str(value))
    return host_ports.get(port, port)


def parse_probe(spec: Obj | None, named: dict[str, int], host_ports: dict[int, int],
                translate: object = None) -> Probe | None:
    """The probe of a container spec, its port mapped to the host; None when the container has none."""
    if not spec:
        return None
    timing = Probe("", initial_delay=float(spec.get("initialDelaySeconds", 0)), period=float(spec.get("periodSeconds", 10)),
                   timeout=float(spec.get("timeoutSeconds", 1)), success_threshold=int(spec.get("successThreshold", 1)),
                   failure_threshold=int(spec.get("failureThreshold", 3)))
    if "httpGet" in spec:
        h = spec["httpGet"]
        headers = tuple((x["name"], x["value"]) for x in h.get("httpHeaders") or [])
        return replace(timing, kind="http", port=_port(h.get("port"), named, host_ports), path=h.get("path", "/"),
                       scheme=h.get("scheme", "HTTP").lower(), headers=headers)
    if "tcpSocket" in spec or "grpc" in spec:
        target = spec.get("tcpSocket") or spec.get("grpc") or {}
        return replace(timing, kind="tcp", port=_port(target.get("port"), named, host_ports))
    if "exec" in spec:
        command = tuple(spec["exec"].get("command") or [])
        if callable(translate):
            command = tuple(translate(c) for c in command)
        return replace(timing, kind="exec", command=command)
    raise ValueError(f"unsupported probe: {sorted(spec)}")


@dataclass
class ProbeCounter:
    """Consecutive results against the thresholds; `result` is None until the first decision."""

    success_threshold: int = 1
    failure_threshold: int = 3
    result: bool | None = None
    _successes: int = field(default=0, repr=False)
    _failures: int = field(default=0, repr=False)

    def record(self, ok: bool) -> bool | None:
        """Count one probe; return the new result when it changes, else None."""
        if ok:
            self._successes, self._failures = self._successes + 1, 0
            flip = self.result is not True and self._successes >= self.success_threshold
        else:
            self._failures, self._successes = self._failures + 1, 0
            flip = self.result is not False and self._failures >= self.failure_threshold
        if flip:
            self.result = ok
            return ok
        return None


async def check(probe: Probe, session: aiohttp.ClientSession, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """One probe: (passed, what failed)."""
    try:
        if probe.kind == "http":
            url = f"{probe.scheme}://127.0.0.1:{probe.port}{probe.path}"
            timeout = aiohttp.ClientTimeout(total=probe.timeout)
            async with session.get(url, headers=dict(probe.headers), timeout=timeout, ssl=False) as resp:
                await resp.read()
                ok = 200 <= resp.status < 400
                return ok, "" if ok else f"HTTP probe failed with statuscode: {resp.status}"
        if probe.kind == "tcp":
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", probe.port), probe.timeout)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, ""
        proc = await asyncio.create_subprocess_exec(*probe.command, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            code = await asyncio.wait_for(proc.wait(), probe.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"command timed out after {probe.timeout:g}s"
        return code == 0, "" if code == 0 else f"command exited with {code}"
    except TimeoutError:
        return False, f"timeout after {probe.timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
