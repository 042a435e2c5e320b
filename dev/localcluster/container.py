"""One container of a pod, run as a local process the way the kubelet runs it.

Start (the process plan from `podspec`), probes (startup first, then liveness and readiness),
restarts with CrashLoopBackOff after a crash or a failed liveness/startup probe (as the pod's
`restartPolicy` allows: Never, or OnFailure after a 0 exit, leaves it terminated), and on stop the
`preStop` hook, SIGTERM, the rest of the grace period (at least 2 s after the hook, as the kubelet
gives), then SIGKILL. The container's state, readiness and restart count are what the pod worker
publishes as its container status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from localcluster import podspec, probes, processes
from localcluster.objects import Obj, container_id, timestamp, utcnow
from localcluster.podstatus import restart_delay

log = logging.getLogger("localcluster.agent")
RESET_AFTER_SECONDS = 600  # a container that ran this long restarts at once after its next crash


class ContainerRunner:
    def __init__(self, worker: Any, spec: Obj):
        self.worker, self.spec, self.name = worker, spec, spec["name"]
        self.proc: asyncio.subprocess.Process | None = None
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.crashes = 0
        self.finished = False  # ended for good: its pod's restartPolicy does not restart it
        self.plan: podspec.ProcessPlan | None = None
        self._kill = asyncio.Event()  # a failed liveness/startup probe asks for a restart

    # -- what the pod reports --
    def status(self) -> Obj:
        running = "running" in self.state
        out: Obj = {"name": self.name, "state": self.state, "lastState": self.last_state, "ready": self.ready and running,
                    "restartCount": self.restart_count, "image": self.spec.get("image", ""),
                    "imageID": "", "started": running and self.started}
        if self.proc is not None:
            out["containerID"] = container_id(self.proc.pid)
        return out

    def _changed(self) -> None:
        self.worker.publish()

    # -- the lifecycle --
    async def run(self) -> None:
        """Start, supervise and restart until the pod stops; then stop the process gracefully."""
        stopping = self.worker.stopping
        while not stopping.is_set():
            if not await self._start():
                await self._back_off(stopping)
                continue
            ran_from = time.monotonic()
            outcome = await self._supervise()
            if outcome == "stop":
                break
            if self._ends_here():
                self.finished = True
                self._changed()
                return
            self.crashes = 1 if time.monotonic() - ran_from >= RESET_AFTER_SECONDS else self.crashes + 1
            self.restart_count += 1
            await self._back_off(stopping)
        await self.stop(self.worker.grace)

    async def _start(self) -> bool:
        try:
            self.plan = self.worker.plan_for(self.spec)
            self.proc = await processes.spawn(self.plan.argv, self.plan.env, self.plan.cwd, self.worker.log_path(self.name))
        except (podspec.PlanError, OSError) as exc:
            self.state = {"waiting": {"reason": "CreateContainerError", "message": str(exc)}}
            self.crashes += 1
            self.worker.event("Warning", "Failed", f"Error: {exc}")
            self._changed()
            return False
        self.state = {"running": {"startedAt": timestamp(utcnow())}}
        self.started, self.ready = not self.spec.get("startupProbe"), False
        self.worker.event("Normal", "Started", f"Started container {self.name}")
        self._changed()
        return True

    def _ends_here(self) -> bool:
        """restartPolicy Never, or OnFailure after a 0 exit: the container is not restarted."""
        policy = (self.worker.pod.get("spec") or {}).get("restartPolicy", "Always")
        code = (self.state.get("terminated") or {}).get("exitCode")
        return policy == "Never" or (policy == "OnFailure" and code == 0)

    async def _back_off(self, stopping: asyncio.Event) -> None:
        delay = restart_delay(self.crashes, self.worker.agent.config.crash_backoff_seconds)
        if delay <= 0 or stopping.is_set():
            return
        self.state = {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": f"back-off {delay:g}s restarting failed container={self.name} pod={self.worker.name}"}}
        self.worker.event("Warning", "BackOff", "Back-off restarting failed container")
        self._changed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)

    async def _supervise(self) -> str:
        """Wait for the process to exit ('crash'), a probe to fail ('kill'), or the pod to stop ('stop')."""
        assert self.proc is not None
        self._kill.clear()
        probe_task = asyncio.create_task(self._probe_all())
        exited = asyncio.create_task(self.proc.wait())
        killed = asyncio.create_task(self._kill.wait())
        stopping = asyncio.create_task(self.worker.stopping.wait())
        try:
            await asyncio.wait({exited, killed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (probe_task, killed, stopping):
                t.cancel()
        if self.worker.stopping.is_set() and not exited.done():
            exited.cancel()
            return "stop"
        if not exited.done():  # a failed liveness or startup probe
            exited.cancel()
            await self.stop(float(self.worker.pod_grace()))
        else:
            self._terminated(self.proc.returncode or 0)
        return "stop" if self.worker.stopping.is_set() else "crash"

    def _terminated(self, code: int) -> None:
        started = (self.state.get("running") or {}).get("startedAt", "")
        terminated: Obj = {"exitCode": code if code >= 0 else 128 - code, "reason": "Completed" if code == 0 else "Error",
                           "startedAt": started, "finishedAt": timestamp(utcnow())}
        if code < 0:
            terminated["signal"] = -code
        if self.proc is not None:
            terminated["containerID"] = container_id(self.proc.pid)
        if code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = log_tail(self.worker.log_path(self.name))
            if message:
                terminated["message"] = message
        self.last_state, self.state, self.ready = {"terminated": terminated}, {"terminated": terminated}, False
        self._changed()

    async def stop(self, grace: float) -> None:
        """preStop, SIGTERM, the rest of the grace period (at least 2 s after the hook), SIGKILL."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            if proc is not None and "running" in self.state:
                self._terminated(proc.returncode or 0)
            return
        self.worker.event("Normal", "Killing", f"Stopping container {self.name}")
        began = time.monotonic()
        await self._pre_stop(grace)
        remaining = max(2.0, grace - (time.monotonic() - began))
        code = await processes.stop(proc, remaining)
        self._terminated(code)

    async def _pre_stop(self, budget: float) -> None:
        hook = (self.spec.get("lifecycle") or {}).get("preStop") or {}
        try:
            if "sleep" in hook:
                await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), budget))
            elif "exec" in hook or "httpGet" in hook:
                probe = probes.parse_probe({**hook, "timeoutSeconds": budget}, self.worker.named_ports(self.spec),
                                           self.worker.host_ports, self._translate)
                if probe is not None:
                    ok, why = await probes.check(probe, self.worker.agent.session, self.plan.env if self.plan else None)
                    if not ok:
                        self.worker.event("Warning", "FailedPreStopHook", f"PreStopHook failed: {why}")
        except (ValueError, OSError) as exc:
            self.worker.event("Warning", "FailedPreStopHook", f"PreStopHook failed: {exc}")

    def _translate(self, text: str) -> str:
        return podspec.translate_paths(text, self.worker.mounts_for(self.spec))

    # -- probes --
    async def _probe_all(self) -> None:
        named, ports = self.worker.named_ports(self.spec), self.worker.host_ports
        parsed = {kind: probes.parse_probe(self.spec.get(f"{kind}Probe"), named, ports, self._translate)
                  for kind in ("startup", "liveness", "readiness")}
        if parsed["startup"] is not None:
            await self._probe_loop("startup", parsed["startup"], until_success=True)
        self.started = True
        if parsed["readiness"] is None:
            self.ready = True
        self._changed()
        loops = [self._probe_loop(kind, p) for kind in ("liveness", "readiness") if (p := parsed[kind]) is not None]
        if loops:
            await asyncio.gather(*loops)

    async def _probe_loop(self, kind: str, probe: probes.Probe, until_success: bool = False) -> None:
        counter = probes.ProbeCounter(probe.success_threshold, probe.failure_threshold)
        await asyncio.sleep(probe.initial_delay)
        env = self.plan.env if self.plan else None
        while True:
            ok, why = await probes.check(probe, self.worker.agent.session, env)
            flipped = counter.record(ok)
            if not ok and (flipped is False or kind != "readiness"):
                self.worker.event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {why}")
            if flipped is not None:
                self._on_probe(kind, flipped)
            if until_success and counter.result is True:
                return
            await asyncio.sleep(probe.period)

    def _on_probe(self, kind: str, passed: bool) -> None:
        if kind == "readiness":
            self.ready = passed
            self._changed()
        elif not passed:  # liveness or startup failed: restart the container
            self.worker.event("Normal", "Killing", f"Container {self.name} failed {kind} probe, will be restarted")
            self._kill.set()


def log_tail(path: Any, max_bytes: int = 2048, max_lines: int = 80) -> str:
    """The kubelet's termination message under FallbackToLogsOnError: the end of the container's
    log, at most 2048 bytes and 80 lines."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read()
    except OSError:
        return ""
    lines = tail.decode("utf-8", "replace").splitlines()[-max_lines:]
    return "\n".join(lines).strip()
