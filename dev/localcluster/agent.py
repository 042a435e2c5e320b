"""The node agent: one node (`local`) that schedules pods onto itself and runs them as processes.

It plays the scheduler (binding every pod to the node, unless the pod asks for an extended resource
such as a GPU that the node does not have: then it stays Pending with a FailedScheduling event) and
the kubelet (a `PodWorker` per bound pod). It registers the Node object, serves `kubectl logs` from
the containers' log files, and on shutdown stops every pod as the kubelet's graceful node shutdown
does (preStop, SIGTERM, grace, SIGKILL), all pods at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from localcluster.client import Client
from localcluster.objects import Obj, name_of, namespace_of, terminating, timestamp, uid_of, utcnow
from localcluster.pod import PodWorker
from localcluster.podstatus import unschedulable

log = logging.getLogger("localcluster.agent")
KUBELET_VERSION = "v1.33.0-localcluster"


@dataclass
class AgentConfig:
    pods_dir: Path
    pvc_root: Path
    node_name: str = "local"
    node_mounts: list[tuple[str, str]] = field(default_factory=list)  # (node path prefix, local directory)
    search_dirs: list[str] = field(default_factory=list)  # where bare container commands are looked up first
    base_env: dict[str, str] = field(default_factory=dict)
    configmap_delay_seconds: float = 0.0
    crash_backoff_seconds: float = 10.0


class NodeAgent:
    def __init__(self, client: Client, loop: asyncio.AbstractEventLoop, config: AgentConfig):
        self.client, self.loop, self.config = client, loop, config
        self.workers: dict[str, PodWorker] = {}
        self.completed: dict[str, PodWorker] = {}  # pods that ran to completion, by uid: their logs until deletion
        self.session: aiohttp.ClientSession | None = None
        self._ports_in_use: set[int] = set()
        self._unsubscribe = lambda: None
        self._refused: set[str] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.client.create("", "nodes", self._node())
        self.client.api.log_source = self.read_log
        resources = {("", "pods"), ("", "configmaps"), ("", "secrets"), ("", "persistentvolumeclaims"), ("", "serviceaccounts")}
        self._unsubscribe = self.client.subscribe(resources, self.on_event, self.loop)
        for pod in self.client.list("", "pods"):
            self.on_event("ADDED", "pods", pod)

    def _node(self) -> Obj:
        stamp = timestamp(utcnow())
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_memory_kib()}Ki", "pods": "110"}
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.config.node_name, "labels": {
                "kubernetes.io/hostname": self.config.node_name, "kubernetes.io/os": "linux",
                "node-role.kubernetes.io/control-plane": ""}},
            "spec": {},
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": socket.gethostname()}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the local cluster's node agent is running",
                                "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
                "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": os.uname().machine,
                             "containerRuntimeVersion": "local-processes", "kernelVersion": os.uname().release,
                             "osImage": "this machine", "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": ""},
            },
        }

    # -- events from the store --
    def on_event(self, etype: str, plural: str, obj: Obj) -> None:
        if plural == "pods":
            self._on_pod(etype, obj)
        elif plural in ("configmaps", "secrets"):
            kind = "configMap" if plural == "configmaps" else "secret"
            for w in list(self.workers.values()):
                if w.ns == namespace_of(obj):
                    w.source_changed(kind, name_of(obj))
        else:
            for w in list(self.workers.values()):
                if w.ns == namespace_of(obj) and not w.volumes_ready:
                    w.wake()

    def _on_pod(self, etype: str, pod: Obj) -> None:
        uid = uid_of(pod)
        worker = self.workers.get(uid)
        if etype == "DELETED":
            self._forget(uid)
            if worker is not None:  # deleted at once (force, or its namespace): stop it quickly
                worker.request_stop(min(2.0, worker.grace))
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if worker is not None:
            worker.observe(pod)
        elif not node and not terminating(pod):
            self._schedule(pod)
        elif node == self.config.node_name and not terminating(pod):
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            worker = self.workers[uid] = PodWorker(self, pod)
            worker.start()
        elif node == self.config.node_name and terminating(pod):
            self.client.delete("", "pods", namespace_of(pod), name_of(pod), grace=0)  # nothing runs for it here

    def _schedule(self, pod: Obj) -> None:
        why = unschedulable(pod)
        if why:
            if uid_of(pod) not in self._refused:
                self._refused.add(uid_of(pod))
                status = {**(pod.get("status") or {}), "phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why,
                     "lastTransitionTime": timestamp(utcnow())}]}
                self.client.write_status("", "pods", pod, status)
                self.client.event(pod, "Warning", "FailedScheduling", why)
            return
        pod = copy.deepcopy(pod)  # the event's object is shared with other watchers
        pod["spec"]["nodeName"] = self.config.node_name
        try:
            bound = self.client.replace("", "pods", pod)
        except Exception as exc:  # noqa: BLE001 - changed meanwhile: the next event retries
            log.debug("binding %s failed: %s", name_of(pod), exc)
            return
        self.client.event(bound, "Normal", "Scheduled", f"Successfully assigned {namespace_of(pod)}/{name_of(pod)} to {self.config.node_name}")

    # -- what workers share --
    def allocate_port(self) -> int:
        """A free loopback port no other pod holds (the OS picks it)."""
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in self._ports_in_use:
                self._ports_in_use.add(port)
                return port

    def release(self, worker: PodWorker) -> None:
        self._ports_in_use -= set(worker.host_ports.values())
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]

    def keep_logs(self, worker: PodWorker) -> None:
        self.completed[worker.uid] = worker

    def _forget(self, uid: str) -> None:
        done = self.completed.pop(uid, None)
        if done is not None:
            shutil.rmtree(done.dir, ignore_errors=True)

    def read_log(self, namespace: str, name: str, container: str, tail: int | None) -> str | None:
        worker = next((w for w in [*self.workers.values(), *self.completed.values()] if w.ns == namespace and w.name == name), None)
        if worker is None:
            return None
        try:
            text = worker.log_path(container).read_text(errors="replace")
        except FileNotFoundError:
            return None
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
        return text

    async def shutdown(self) -> None:
        """Stop every pod gracefully and at once, then deregister the node."""
        self._unsubscribe()
        workers = list(self.workers.values())
        for w in workers:
            w.request_stop(float(w.pod_grace()))
        tasks = [w.task for w in workers if w.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for uid in list(self.completed):
            self._forget(uid)
        if self.session is not None:
            await self.session.close()
        self.client.api.log_source = None
        with contextlib.suppress(Exception):
            self.client.delete("", "nodes", "", self.config.node_name)

    def kill_all(self) -> None:
        """A second Ctrl-C: no more grace."""
        for w in list(self.workers.values()):
            w.request_stop(0.0)
            for r in w.runners:
                if r.proc is not None and r.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(r.proc.pid, 9)


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
