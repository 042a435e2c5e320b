"""One pod on the local node: host ports, volumes, its containers, its status, its graceful end.

The worker assigns the pod's host ports (recorded in the annotation
`localcluster.modeldeploy.io/host-ports`, containerPort -> host port), prepares its volumes (waiting,
with a FailedMount event, for a missing ConfigMap, Secret, claim or ServiceAccount, as the kubelet
does), projects its ServiceAccount's token (`_project_token`), runs its containers (a pod whose
`restartPolicy` lets them end finishes Succeeded or Failed), and publishes the pod's status on every change. ConfigMap and Secret volumes are
projected the kubelet's way (files are symlinks into a `..data` directory swapped atomically) and
follow changes of their source after the agent's `configmap_delay_seconds`. When the pod is deleted
the containers stop (preStop, SIGTERM, grace, SIGKILL), the pod's directory is removed, and the pod
object is deleted with grace 0, which ends its graceful deletion.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from localcluster import podspec
from localcluster.apimachinery import ApiError
from localcluster.container import ContainerRunner
from localcluster.objects import (
    HOST_PORTS_ANNOTATION,
    Obj,
    name_of,
    namespace_of,
    terminating,
    timestamp,
    uid_of,
    utcnow,
)
from localcluster.podstatus import pod_status

log = logging.getLogger("localcluster.agent")


class PodWorker:
    def __init__(self, agent: Any, pod: Obj):
        self.agent, self.pod = agent, pod
        self.uid, self.ns, self.name = uid_of(pod), namespace_of(pod), name_of(pod)
        self.dir = Path(agent.config.pods_dir) / f"{self.ns}_{self.name}_{self.uid[:8]}"
        self.stopping = asyncio.Event()
        self.grace = float(self.pod_grace())
        self.host_ports: dict[int, int] = {}
        self.volumes: dict[str, podspec.Volume] = {}
        self.volumes_ready = False
        self.identity: dict[str, str] = {}  # KUBECONFIG and the kubernetes Service's env, once a token is projected
        self.runners = [ContainerRunner(self, c) for c in (pod.get("spec") or {}).get("containers") or []]
        self.start_time = timestamp(utcnow())
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"pod {self.ns}/{self.name}")

    def pod_grace(self) -> int:
        return int((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    def request_stop(self, grace: float) -> None:
        if not self.stopping.is_set():
            self.grace = grace
        self.stopping.set()
        self._wake.set()

    def observe(self, pod: Obj) -> None:
        """A newer version of the pod object (from the watch)."""
        self.pod = pod
        if terminating(pod):
            self.request_stop(float(pod["metadata"].get("deletionGracePeriodSeconds", self.pod_grace())))

    # -- the lifecycle --
    async def run(self) -> None:
        try:
            self._assign_ports()
            self.publish()
            await self._mount_volumes()
            if not self.stopping.is_set():
                await asyncio.gather(*(r.run() for r in self.runners))
        except Exception:
            log.exception("pod %s/%s failed", self.ns, self.name)
            for r in self.runners:
                with contextlib.suppress(Exception):
                    await r.stop(0)
        finally:
            self._finish()

    def _finish(self) -> None:
        self.agent.release(self)
        live = self.agent.client.get("", "pods", self.ns, self.name)
        completed = bool(self.runners) and all(r.finished for r in self.runners)
        if completed and live is not None and uid_of(live) == self.uid and not terminating(live):
            self.agent.keep_logs(self)  # a completed pod's logs stay readable until it is deleted, as the kubelet keeps them
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if live is not None and uid_of(live) == self.uid and terminating(live):
            self.agent.client.delete("", "pods", self.ns, self.name, grace=0)

    def _assign_ports(self) -> None:
        for c in (self.pod.get("spec") or {}).get("containers") or []:
            for port in podspec.declared_ports(c):
                self.host_ports.setdefault(port, self.agent.allocate_port())
        value = json.dumps({str(k): v for k, v in sorted(self.host_ports.items())})
        for _ in range(10):  # the operator or a user may write the pod meanwhile: re-read and retry
            live = self.agent.client.get("", "pods", self.ns, self.name)
            if live is None or uid_of(live) != self.uid:
                return
            live["metadata"].setdefault("annotations", {})[HOST_PORTS_ANNOTATION] = value
            try:
                self.pod = self.agent.client.replace("", "pods", live)
                return
            except ApiError as exc:
                if exc.code != 409:
                    raise

    async def _mount_volumes(self) -> None:
        reported = ""
        while not self.stopping.is_set():
            self._wake.clear()
            try:
                self.volumes = podspec.volumes_of(self.pod, str(self.dir), str(self.agent.config.pvc_root), self.agent.config.node_mounts)
                problem = self._prepare_volumes()
            except podspec.PlanError as exc:
                problem = str(exc)
            if not problem:
                self.volumes_ready = True
                self.publish()
                return
            if problem != reported:
                self.event("Warning", "FailedMount", problem)
                reported = problem
            await self._wake.wait()

    def _prepare_volumes(self) -> str:
        problem = self._project_token()
        if problem:
            return problem
        for vol in self.volumes.values():
            if vol.kind == "emptyDir":
                os.makedirs(vol.path, exist_ok=True)
            elif vol.kind in ("configMap", "secret"):
                if not self._project(vol):
                    return f'MountVolume.SetUp failed for volume "{vol.name}" : {vol.kind.lower()} "{vol.source}" not found'
            elif vol.kind == "hostPath":
                if vol.host_type == "DirectoryOrCreate":
                    os.makedirs(vol.path, exist_ok=True)
                elif vol.host_type == "Directory" and not os.path.isdir(vol.path):
                    return f'MountVolume.SetUp failed for volume "{vol.name}" : hostPath type check failed: {vol.path} is not a directory'
                elif vol.host_type == "File" and not os.path.isfile(vol.path):
                    return f'MountVolume.SetUp failed for volume "{vol.name}" : hostPath type check failed: {vol.path} is not a file'
            elif vol.kind == "persistentVolumeClaim":
                if self.agent.client.get("", "persistentvolumeclaims", self.ns, vol.source) is None:
                    return f'persistentvolumeclaim "{vol.source}" not found'
                os.makedirs(vol.path, exist_ok=True)
        return ""

    def _project_token(self) -> str:
        """The kubelet's token projection: a token for the pod's ServiceAccount (bound to the pod),
        with its namespace and a kubeconfig naming the API server, unless automounting is off."""
        spec = self.pod.get("spec") or {}
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        sa = self.agent.client.get("", "serviceaccounts", self.ns, account)
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = (sa or {}).get("automountServiceAccountToken", True)
        if not automount or self.identity:
            return ""
        if sa is None:
            return f'MountVolume.SetUp failed for volume "kube-api-access" : serviceaccounts "{account}" not found'
        api = self.agent.client.api
        token = api.tokens.issue(self.ns, account, self.pod)
        folder = self.dir / "serviceaccount"
        kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "pod",
                      "clusters": [{"name": "local", "cluster": {"server": getattr(api, "url", "")}}],
                      "users": [{"name": account, "user": {"token": token}}],
                      "contexts": [{"name": "pod", "context": {"cluster": "local", "user": account, "namespace": self.ns}}]}
        write_atomically(folder, {"token": token.encode(), "namespace": self.ns.encode(),
                                  "kubeconfig": json.dumps(kubeconfig).encode()})
        host, _, port = getattr(api, "url", "").removeprefix("http://").partition(":")
        self.identity = {"KUBECONFIG": str(folder / "kubeconfig"), "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
        return ""

    def _source(self, kind: str, name: str) -> tuple[dict[str, str], dict[str, str]] | None:
        """(text data, base64 data) of a ConfigMap or Secret, None if it does not exist."""
        obj = self.agent.client.get("", "configmaps" if kind == "configMap" else "secrets", self.ns, name)
        if obj is None:
            return None
        if kind == "configMap":
            return dict(obj.get("data") or {}), dict(obj.get("binaryData") or {})
        return {}, dict(obj.get("data") or {})

    def _project(self, vol: podspec.Volume) -> bool:
        source = self._source(vol.kind, vol.source)
        if source is None:
            return False
        mounts = [m for c in self.runners for m in self.mounts_for(c.spec)]
        write_atomically(Path(vol.path), podspec.projected_files(*source, vol.items, mounts))
        return True

    def source_changed(self, kind: str, name: str) -> None:
        """A ConfigMap or Secret changed: refresh the volumes projected from it (after the delay)."""
        if not self.volumes_ready:
            self._wake.set()
            return
        for vol in self.volumes.values():
            if vol.kind == kind and vol.source == name:
                loop = asyncio.get_running_loop()
                loop.call_later(self.agent.config.configmap_delay_seconds, self._refresh, vol)

    def _refresh(self, vol: podspec.Volume) -> None:
        if not self.stopping.is_set():
            self._project(vol)

    def wake(self) -> None:
        self._wake.set()

    # -- what the containers need --
    def mounts_for(self, spec: Obj) -> list[podspec.Mount]:
        mounts = podspec.mounts_of(spec, self.volumes)
        if self.identity:
            mounts.append(podspec.Mount(podspec.SERVICE_ACCOUNT_DIR, str(self.dir / "serviceaccount"), True))
        return mounts

    def named_ports(self, spec: Obj) -> dict[str, int]:
        return {p["name"]: int(p["containerPort"]) for p in spec.get("ports") or [] if p.get("name")}

    def plan_for(self, spec: Obj) -> podspec.ProcessPlan:
        ports = {p: self.host_ports[p] for p in podspec.declared_ports(spec)}
        cfg = self.agent.config
        return podspec.plan_process(self.pod, spec, self.mounts_for(spec), ports, cfg.search_dirs,
                                    {**cfg.base_env, **self.identity}, self._lookup, str(self.dir))

    def _lookup(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        source = self._source(kind, name)
        if source is None:
            return None
        text, binary = source
        return {**text, **{k: base64.b64decode(v).decode(errors="replace") for k, v in binary.items()}}

    def log_path(self, container: str) -> Path:
        return self.dir / f"{container}.log"

    # -- reporting --
    def publish(self) -> None:
        now = timestamp(utcnow())
        status = pod_status(self.pod.get("status") or {}, [r.status() for r in self.runners], self.start_time, now, self.volumes_ready,
                            finished=bool(self.runners) and all(r.finished for r in self.runners))
        written = self.agent.client.write_status("", "pods", self.pod, status)
        if written is not None:
            self.pod = written

    def event(self, etype: str, reason: str, message: str) -> None:
        self.agent.client.event(self.pod, etype, reason, message)


def write_atomically(directory: Path, files: dict[str, bytes]) -> None:
    """The kubelet's AtomicWriter: files in a fresh timestamped directory, `..data` swapped to it by
    a rename, each file a symlink through `..data`; readers never see a half-written volume."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
    target = directory / stamp
    for rel, content in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    tmp = directory / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(stamp)
    os.replace(tmp, directory / "..data")
    tops = {rel.split("/")[0] for rel in files}
    for top in tops:
        link = directory / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in directory.iterdir():
        if entry.name.startswith("..") and entry.name not in ("..data", stamp) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif not entry.name.startswith("..") and entry.name not in tops and entry.is_symlink():
            entry.unlink()
