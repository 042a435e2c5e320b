"""How the node agent runs a pod's container as a local process (pure): volumes, paths, ports, env.

There are no container images, mount namespaces or network namespaces here, so a pod becomes a
process of this machine, and what the container would have seen is translated:

- **Volumes** become directories: `emptyDir`, `configMap` and `secret` ones under the pod's own
  directory, `persistentVolumeClaim` ones at `<pvc root>/<namespace>/<claim>`, `hostPath` ones at the
  path itself, after the node's mounts (`/models=./demo_models`, as kind's `extraMounts`).
- **Paths**: every occurrence of a volumeMount's `mountPath` (as a whole path prefix) in the
  command, args, env values, workingDir and the files projected from ConfigMaps is replaced by the
  directory that backs it (a mount with `subPath` by that subdirectory).
- **Ports**: every pod shares 127.0.0.1, so each declared `containerPort` gets a free host port;
  an argument whose value is exactly a declared container port (`--port=8500`) is rewritten to the
  host port, and probes, Services and Prometheus use the host ports. `model-server` also gets
  `--bind_address=127.0.0.1` and `modeldeploy operator` `--bind=127.0.0.1` (replacing any such
  flag given), so pods never listen beyond loopback.
- **Command**: `command` + `args` (with `$(VAR)` expanded from the container's env); a bare name is
  looked up first in this checkout's virtualenv (`.venv/bin`: the "image" is this checkout), then
  in PATH. A container without a `command` runs its image's ENTRYPOINT, known for the images this
  repository builds (`IMAGE_ENTRYPOINTS`: the operator image's `modeldeploy operator`, as
  operator/Dockerfile says; any registry and tag); other images need a `command`.
- **Identity**: a pod's ServiceAccount token (the node agent asks the API server for one) is where
  the kubelet projects it, `/var/run/secrets/kubernetes.io/serviceaccount/token` as a path in
  arguments, and a client finds it through `KUBECONFIG` (a kubeconfig beside the token, naming the
  API server): no process here can see that fixed path.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from localcluster.objects import Obj, name_of, namespace_of

# Flags appended for known servers so that they listen on loopback only, by the command's first words.
LOOPBACK_FLAGS = {("model-server",): ["--bind_address=127.0.0.1"], ("modeldeploy", "operator"): ["--bind=127.0.0.1"]}
# The ENTRYPOINT of the images this repository builds, by the repository's last path component.
IMAGE_ENTRYPOINTS = {"operator": ["modeldeploy", "operator"], "modeldeploy-operator": ["modeldeploy", "operator"]}
# Where the kubelet projects a pod's ServiceAccount token, CA and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
UNSUPPORTED_VOLUMES = ("image", "csi", "ephemeral", "nfs", "iscsi", "projected", "downwardAPI")


@dataclass(frozen=True)
class Volume:
    """Where a pod volume lives on this machine; `source` names what fills it (configMap, secret)."""

    name: str
    kind: str
    path: str
    source: str = ""
    items: tuple[tuple[str, str], ...] = ()  # (key, relative path) of a configMap/secret volume's items
    host_type: str = ""  # hostPath type (Directory, DirectoryOrCreate, File, ...)


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool = False


@dataclass
class ProcessPlan:
    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> host port


class PlanError(ValueError):
    """The pod cannot run here; the message says why (shown as a pod event and container reason)."""


def node_path(path: str, node_mounts: list[tuple[str, str]]) -> str:
    """A path on the node, after the node's mounts (node prefix -> local directory)."""
    for prefix, local in sorted(node_mounts, key=lambda m: -len(m[0])):
        prefix = prefix.rstrip("/") or "/"
        if path == prefix or path.startswith(prefix + "/"):
            return local.rstrip("/") + path[len(prefix):]
    return path


def volumes_of(pod: Obj, pod_dir: str, pvc_root: str, node_mounts: list[tuple[str, str]]) -> dict[str, Volume]:
    out: dict[str, Volume] = {}
    for v in (pod.get("spec") or {}).get("volumes") or []:
        name = v["name"]
        local = os.path.join(pod_dir, "volumes", name)
        if "emptyDir" in v:
            out[name] = Volume(name, "emptyDir", local)
        elif "configMap" in v or "secret" in v:
            kind = "configMap" if "configMap" in v else "secret"
            src = v[kind]
            items = tuple((i["key"], i.get("path", i["key"])) for i in src.get("items") or [])
            out[name] = Volume(name, kind, local, src.get("name") or src.get("secretName", ""), items)
        elif "hostPath" in v:
            out[name] = Volume(name, "hostPath", node_path(v["hostPath"]["path"], node_mounts),
                               host_type=v["hostPath"].get("type", ""))
        elif "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]["claimName"]
            out[name] = Volume(name, "persistentVolumeClaim", os.path.join(pvc_root, namespace_of(pod), claim), claim)
        else:
            kind = next((k for k in v if k != "name"), "unknown")
            raise PlanError(f'volume "{name}": {kind} volumes are not supported by the local cluster')
    return out


def mounts_of(container: Obj, volumes: dict[str, Volume]) -> list[Mount]:
    out = []
    for m in container.get("volumeMounts") or []:
        vol = volumes.get(m["name"])
        if vol is None:
            raise PlanError(f'volumeMount "{m["name"]}": no such volume in the pod')
        host = os.path.join(vol.path, m["subPath"]) if m.get("subPath") else vol.path
        out.append(Mount(m["mountPath"].rstrip("/") or "/", host, bool(m.get("readOnly"))))
    return out


def translate_paths(text: str, mounts: list[Mount]) -> str:
    """Container paths -> host paths, for each mountPath found as a whole path prefix in `text`."""
    usable = sorted((m for m in mounts if m.container_path != "/"), key=lambda m: -len(m.container_path))
    if not usable:
        return text
    by_path = {m.container_path: m.host_path for m in usable}
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m.container_path) for m in usable) + r")(?![\w.-])")
    return pattern.sub(lambda mt: by_path[mt.group(1)], text)


def expand_refs(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$(VAR) escapes, others stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def rewrite_ports(args: list[str], ports: dict[int, int]) -> list[str]:
    """`--flag=N` with N a declared container port -> `--flag=<host port>`."""
    out = []
    for a in args:
        m = re.fullmatch(r"(-{1,2}[\w.-]+=)(\d+)", a)
        out.append(f"{m.group(1)}{ports[int(m.group(2))]}" if m and int(m.group(2)) in ports else a)
    return out


def resolve_executable(name: str, search_dirs: list[str]) -> str:
    if os.path.isabs(name):
        if not os.access(name, os.X_OK):
            raise PlanError(f'executable "{name}" not found')
        return name
    for d in search_dirs:
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise PlanError(f'executable "{name}" not found in {", ".join(search_dirs)} or PATH')
    return found


# (kind, namespace, name) -> the ConfigMap's or Secret's data as text (None if missing); kind is
# "configMap" or "secret".
Lookup = Callable[[str, str, str], dict[str, str] | None]


def env_of(pod: Obj, container: Obj, lookup: Lookup, pod_ip: str) -> dict[str, str]:
    """The container's environment: envFrom, then env (values with $(VAR) expanded, fieldRefs,
    configMapKeyRef and secretKeyRef)."""
    env: dict[str, str] = {}
    fields = {"metadata.name": name_of(pod), "metadata.namespace": namespace_of(pod), "status.podIP": pod_ip,
              "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""), "status.hostIP": pod_ip,
              "metadata.uid": (pod.get("metadata") or {}).get("uid", "")}
    for src in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in src else "secret"
        ref: Obj = src.get("configMapRef") or src.get("secretRef") or {}
        data = lookup(kind, namespace_of(pod), ref.get("name", ""))
        if data is None and not ref.get("optional"):
            raise PlanError(f'envFrom: {kind} "{ref.get("name", "")}" not found')
        env.update({src.get("prefix", "") + k: v for k, v in (data or {}).items()})
    for e in container.get("env") or []:
        if "value" in e:
            env[e["name"]] = expand_refs(str(e["value"]), env)
            continue
        ref = e.get("valueFrom") or {}
        if "fieldRef" in ref:
            env[e["name"]] = fields.get(ref["fieldRef"].get("fieldPath", ""), "")
        elif "configMapKeyRef" in ref or "secretKeyRef" in ref:
            kind = "configMap" if "configMapKeyRef" in ref else "secret"
            r: Obj = ref.get("configMapKeyRef") or ref.get("secretKeyRef") or {}
            value = (lookup(kind, namespace_of(pod), r["name"]) or {}).get(r["key"])
            if value is None and not r.get("optional"):
                raise PlanError(f'env {e["name"]}: {kind} "{r["name"]}" has no key "{r["key"]}"')
            if value is not None:
                env[e["name"]] = value
        else:
            env[e["name"]] = ""
    return env


def image_entrypoint(image: str) -> list[str]:
    """The ENTRYPOINT of one of this repository's images (`registry/path/operator:tag`), else []."""
    repository = image.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return list(IMAGE_ENTRYPOINTS.get(repository.rsplit("/", 1)[-1], []))


def loopback(argv: list[str]) -> list[str]:
    """A known server's command with the flags that keep it on loopback, replacing any such flag it
    was given (`--bind=0.0.0.0` in the chart's extraArgs): pods never listen beyond loopback."""
    words = [os.path.basename(argv[0]), *argv[1:]] if argv else []
    flags = next((flags for prefix, flags in LOOPBACK_FLAGS.items() if tuple(words[:len(prefix)]) == prefix), [])
    names = {f.split("=")[0] for f in flags}
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in names:  # `--bind 0.0.0.0`
            skip = True
        elif a.split("=")[0] not in names:
            out.append(a)
    return out + flags


def plan_process(pod: Obj, container: Obj, mounts: list[Mount], ports: dict[int, int], search_dirs: list[str],
                 base_env: dict[str, str], lookup: Lookup, pod_dir: str) -> ProcessPlan:
    command = list(container.get("command") or []) or image_entrypoint(container.get("image", ""))
    if not command:
        raise PlanError(f'container "{container["name"]}" has no command: the local cluster runs the container\'s '
                        "command (there are no images to take an entrypoint from, except this repository's own: "
                        f"{', '.join(sorted(IMAGE_ENTRYPOINTS))})")
    env = env_of(pod, container, lookup, "127.0.0.1")
    env = {k: translate_paths(v, mounts) for k, v in env.items()}
    argv = [translate_paths(expand_refs(a, env), mounts) for a in command + list(container.get("args") or [])]
    argv = rewrite_ports(argv, ports)
    argv[0] = resolve_executable(argv[0], search_dirs)
    argv = loopback(argv)
    cwd = translate_paths(container["workingDir"], mounts) if container.get("workingDir") else pod_dir
    full_env = {**base_env, "HOSTNAME": name_of(pod), **env}
    return ProcessPlan(container["name"], argv, full_env, cwd, dict(ports))


def declared_ports(container: Obj) -> list[int]:
    return [int(p["containerPort"]) for p in container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]


def projected_files(data: dict[str, str], binary: dict[str, str], items: tuple[tuple[str, str], ...],
                    mounts: list[Mount]) -> dict[str, bytes]:
    """The files of a configMap/secret volume: every key (or just `items`), text with paths translated."""
    values: dict[str, bytes] = {k: translate_paths(v, mounts).encode() for k, v in data.items()}
    values.update({k: base64.b64decode(v) for k, v in binary.items()})
    if not items:
        return values
    return {path: values[key] for key, path in items if key in values}
