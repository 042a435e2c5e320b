"""`modeldeploy operator`: run the ModelDeployment operator (kopf).

Watches the cluster named by KUBECONFIG (or the in-cluster service account), in all namespaces
unless `--namespace` is given (repeatable). Serves liveness on `--health-port` (`/healthz`) and the
operator's Prometheus metrics on `--metrics-port` (`/metrics`).

The admin tokens of the ModelDeployments are derived from the key in `--token-key-file` (the chart
mounts it from a Secret of the operator's namespace). Without the flag, an operator run outside the
cluster keeps its key in `$XDG_STATE_HOME/modeldeploy/token-key` (default `~/.local/state/...`),
made with a random key the first time, so that a restart derives the same tokens.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from modeldeploy.clients import servers
from modeldeploy.decisions import admintoken


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch only this namespace (repeatable); default: all")
    parser.add_argument(
        "--server-image",
        default=os.environ.get("MODELDEPLOY_SERVER_IMAGE", ""),
        help="model-server image for pods whose spec names none (env MODELDEPLOY_SERVER_IMAGE)",
    )
    parser.add_argument("--resync-seconds", type=float, default=60.0, help="re-check every ModelDeployment this often")
    parser.add_argument(
        "--model-status-url",
        default=servers.DEFAULT_URL_TEMPLATE,
        help="REST base URL of a ModelDeployment's servers, for per-version states ({name}, {namespace}; '' = off)",
    )
    parser.add_argument("--workers", type=int, default=8, help="ModelDeployments reconciled at once")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port, /healthz (0: off)")
    parser.add_argument("--bind", default="0.0.0.0", help="address for the metrics and health endpoints")
    parser.add_argument(
        "--crd-wait-seconds", type=float, default=300.0,
        help="wait this long at start for the ModelDeployment CRD to be installed, then exit 3",
    )
    parser.add_argument(
        "--operator-namespace", default=os.environ.get("POD_NAMESPACE", ""),
        help="the operator's own namespace (env POD_NAMESPACE): with --operator-pod-labels, each ModelDeployment "
             "gets a NetworkPolicy admitting only the operator to its servers' admin port")
    parser.add_argument(
        "--operator-pod-labels", default=os.environ.get("OPERATOR_POD_LABELS", ""),
        help="the operator pods' labels, key=value,key=value (env OPERATOR_POD_LABELS)")
    parser.add_argument(
        "--prometheus-url", default=os.environ.get("PROMETHEUS_URL", ""),
        help="Prometheus for autoscaling and rollout analysis (env PROMETHEUS_URL); a ModelDeployment may name its own")
    parser.add_argument(
        "--pod-admin", action=argparse.BooleanOptionalAction, default=True,
        help="ask each ready pod on its admin port and push routing tables there (--no-pod-admin: ConfigMap only)")
    parser.add_argument(
        "--token-key-file", default=os.environ.get("MODELDEPLOY_TOKEN_KEY_FILE", ""),
        help="the key each ModelDeployment's admin token is derived from (env MODELDEPLOY_TOKEN_KEY_FILE; at least "
             f"{admintoken.MIN_KEY_BYTES} bytes); default: a key kept in $XDG_STATE_HOME/modeldeploy/token-key, made "
             "the first time")
    parser.add_argument(
        "--allow-host-path", action=argparse.BooleanOptionalAction, default=True,
        help="allow spec.model.storage.hostPath (a node's directory in the pods; the chart turns it off)")
    parser.add_argument(
        "--host-path-prefix", action="append", default=[],
        help="with --allow-host-path: only hostPath paths under this directory (repeatable; default: any)")
    parser.add_argument(
        "--prometheus-url-prefix", action="append", default=[],
        help="a ModelDeployment's own prometheus.url must be under one of these URLs (repeatable; default: any); "
             "the operator fetches that URL itself")
    parser.add_argument(
        "--activator-url", default=os.environ.get("MODELDEPLOY_ACTIVATOR_URL", ""),
        help="the activator's HTTP API (env MODELDEPLOY_ACTIVATOR_URL), which holds the requests of ModelDeployments "
             "scaled to zero (autoscaling.minReplicas 0); none: they never go below 1 replica")
    parser.add_argument(
        "--activator-token-file", default=os.environ.get("MODELDEPLOY_ACTIVATOR_TOKEN_FILE", ""),
        help="the bearer token of the activator's HTTP API (env MODELDEPLOY_ACTIVATOR_TOKEN_FILE)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key=value` as sorted pairs (empty text: none)."""
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"expected key=value, got {item!r}")
        out.append((key.strip(), value.strip()))
    return tuple(sorted(out))


def default_key_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "modeldeploy" / "token-key"


def load_token_key(path: str) -> bytes:
    """The key in `path` (surrounding whitespace removed: a Secret's value may end in a newline).
    No path: the default key file, made with a random key when it does not exist yet (atomically:
    operators started together agree on one key). OSError or ValueError when unusable."""
    if not path:
        file = default_key_file()
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}")
            tmp.write_text(secrets.token_hex(32) + "\n")
            tmp.chmod(0o600)
            try:
                os.link(tmp, file)  # fails if another operator made it first: then theirs is the key
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        path = str(file)
    key = Path(path).read_bytes().strip()
    if len(key) < admintoken.MIN_KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes; the key needs at least {admintoken.MIN_KEY_BYTES}")
    return key


def run(args: argparse.Namespace) -> int:
    from modeldeploy.controller import run as controller
    from modeldeploy.controller.context import Settings
    from modeldeploy.decisions import policy, render

    try:
        pod_labels = parse_labels(args.operator_pod_labels)
    except ValueError as exc:
        print(f"modeldeploy operator: --operator-pod-labels: {exc}", file=sys.stderr)
        return 2
    try:
        key = load_token_key(args.token_key_file)
    except (OSError, ValueError) as exc:
        print(f"modeldeploy operator: --token-key-file: {exc}", file=sys.stderr)
        return 2
    try:
        activator_token = Path(args.activator_token_file).read_text().strip() if args.activator_token_file else ""
    except OSError as exc:
        print(f"modeldeploy operator: --activator-token-file: {exc}", file=sys.stderr)
        return 2
    bad = [p for p in args.host_path_prefix if not p.startswith("/")] + [
        u for u in args.prometheus_url_prefix if not u.startswith(("http://", "https://"))]
    if bad:
        print(f"modeldeploy operator: not an absolute path or http(s) URL: {', '.join(bad)}", file=sys.stderr)
        return 2
    defaults = render.Defaults(server_image=args.server_image or render.DEFAULT_SERVER_IMAGE,
                               operator_namespace=args.operator_namespace, operator_pod_labels=pod_labels)
    admin = policy.Policy(allow_host_path=args.allow_host_path, host_path_prefixes=tuple(args.host_path_prefix),
                          prometheus_url_prefixes=tuple(args.prometheus_url_prefix))
    settings = Settings(defaults=defaults, resync_seconds=args.resync_seconds, model_status_url=args.model_status_url,
                        workers=args.workers, pod_admin=args.pod_admin, prometheus_url=args.prometheus_url,
                        token_key=key, policy=admin, activator_url=args.activator_url,
                        activator_token=activator_token)
    return controller.run(settings, controller.Serving(
        namespaces=tuple(args.namespace), metrics_port=args.metrics_port, health_port=args.health_port,
        bind=args.bind, crd_wait_seconds=args.crd_wait_seconds, verbose=args.verbose))
