"""Pure: what the cluster admin allows a ModelDeployment to ask of the operator (its flags, the
chart's values), and the problem that refuses a spec asking for more.

- `spec.model.storage.hostPath` mounts a node's directory into the server pods, readable with any
  `spec.server.image`: allowed only with `--allow-host-path` and, when `--host-path-prefix` lists
  prefixes, only under one of them (compared on the normalised path, whole path components only:
  `/models` admits `/models/a`, not `/models-private`). The check is lexical: a symlink on the node
  is followed by the kubelet, so list prefixes whose trees hold no links out.
- `spec.autoscaling.prometheus.url` and `spec.rollout.prometheus.url` are fetched by the operator
  itself (from inside the cluster, with the operator's network reach): with
  `--prometheus-url-prefix`, only URLs under one of the prefixes: the same scheme, host and port,
  and a path inside the prefix's (so `http://prom:9090@elsewhere/` or `http://prom:9090.evil/` do
  not pass as `http://prom:9090`); no user or password in the URL. The operator's own
  `--prometheus-url` is the admin's choice and always allowed.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions.status import Problem


@dataclass(frozen=True)
class Policy:
    allow_host_path: bool = True
    host_path_prefixes: tuple[str, ...] = ()  # empty: any absolute path (when allowed)
    prometheus_url_prefixes: tuple[str, ...] = ()  # empty: any URL


def under(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or inside it, after normalising both (`..` and `//` resolved)."""
    p, root = posixpath.normpath("/" + path.lstrip("/")), posixpath.normpath("/" + prefix.lstrip("/"))
    return root == "/" or p == root or p.startswith(root + "/")


def url_under(url: str, prefix: str) -> bool:
    """Whether `url` is on the prefix's scheme, host and port, with a path inside the prefix's."""
    try:
        u, p = urllib.parse.urlsplit(url), urllib.parse.urlsplit(prefix)
        ports = [x.port or {"http": 80, "https": 443}.get(x.scheme.lower()) for x in (u, p)]
    except ValueError:
        return False
    if u.username is not None or u.password is not None or not u.hostname:
        return False
    return (u.scheme.lower() == p.scheme.lower() and u.hostname == p.hostname and ports[0] == ports[1]
            and under(u.path or "/", p.path or "/"))


def problem(spec: api.ModelDeploymentSpec, policy: Policy) -> Problem | None:
    """Why the admin's policy refuses this spec, if it does (nothing is applied then)."""
    host_path = spec.model.storage.host_path
    if host_path is not None:
        if not policy.allow_host_path:
            return Problem("HostPathNotAllowed", "spec.model.storage.hostPath is not allowed by this operator (it mounts a "
                           "node's directory into the pods; the cluster admin allows it with the chart value "
                           "operator.hostPath.allowed, flag --allow-host-path); use storage.pvc or storage.image")
        if policy.host_path_prefixes and not any(under(host_path.path, p) for p in policy.host_path_prefixes):
            return Problem("HostPathNotAllowed", f"spec.model.storage.hostPath.path {host_path.path} is not under a "
                           f"directory this operator allows ({', '.join(policy.host_path_prefixes)}: the chart value "
                           "operator.hostPath.prefixes, flag --host-path-prefix)")
    if policy.prometheus_url_prefixes:
        for where, section in (("autoscaling", spec.autoscaling), ("rollout", spec.rollout)):
            prom = section.prometheus if section is not None else None
            if prom is not None and not any(url_under(prom.url, p) for p in policy.prometheus_url_prefixes):
                return Problem("PrometheusURLNotAllowed", f"spec.{where}.prometheus.url {prom.url} is not under a "
                               f"URL this operator may query ({', '.join(policy.prometheus_url_prefixes)}: the chart value "
                               "operator.allowedPrometheusUrls, flag --prometheus-url-prefix); the operator fetches "
                               "that URL itself, so the cluster admin lists the ones it may reach")
    return None
