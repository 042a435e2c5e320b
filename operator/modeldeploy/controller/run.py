"""`modeldeploy operator`: run the ModelDeployment operator (kopf).

Watches the cluster named by KUBECONFIG (or the in-cluster service account), in all namespaces
unless `--namespace` is given (repeatable). Serves liveness on `--health-port` (`/healthz`) and the
operator's Prometheus metrics on `--metrics-port` (`/metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import Any

from modeldeploy.clients import modelstatus


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
        default=modelstatus.DEFAULT_URL_TEMPLATE,
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


def wait_for_crd(kube: Any, timeout: float, interval: float = 2.0) -> bool:
    """Block until the ModelDeployment CRD is served (kopf only watches resources found at start)."""
    from modeldeploy.api import v1alpha1 as api
    from modeldeploy.clients.kube import KubeError

    deadline = time.monotonic() + timeout
    warned = False
    while True:
        try:
            if kube.serves(api.GROUP, api.VERSION, api.PLURAL):
                return True
            reason = f"{api.PLURAL}.{api.GROUP}/{api.VERSION} is not served"
        except KubeError as exc:
            reason = str(exc)
        if time.monotonic() >= deadline:
            print(f"modeldeploy operator: the ModelDeployment CRD is not installed ({reason}); "
                  "install it with `kubectl apply -f crds/` (or the Helm chart)", file=sys.stderr)
            return False
        if not warned:
            print(f"modeldeploy operator: waiting for the ModelDeployment CRD ({reason})", file=sys.stderr, flush=True)
            warned = True
        time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    import kopf
    import prometheus_client
    from kubernetes.config import ConfigException

    from modeldeploy.clients.kube import Kube
    from modeldeploy.controller import handlers  # noqa: F401 - importing handlers registers them with kopf
    from modeldeploy.controller.context import OperatorContext
    from modeldeploy.decisions import render

    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # kopf logs every handler call at INFO ("Handler ... succeeded"): one line per watch event.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        kube = Kube.from_environment()
    except (ConfigException, OSError) as exc:
        print(f"modeldeploy operator: no Kubernetes configuration (in-cluster or KUBECONFIG): {exc}", file=sys.stderr)
        return 2
    if not wait_for_crd(kube, args.crd_wait_seconds):
        return 3
    try:
        pod_labels = parse_labels(args.operator_pod_labels)
    except ValueError as exc:
        print(f"modeldeploy operator: --operator-pod-labels: {exc}", file=sys.stderr)
        return 2
    defaults = render.Defaults(server_image=args.server_image or render.DEFAULT_SERVER_IMAGE,
                               operator_namespace=args.operator_namespace, operator_pod_labels=pod_labels)
    context = OperatorContext(
        kube=kube, defaults=defaults, resync_seconds=args.resync_seconds, model_status_url=args.model_status_url,
        workers=args.workers, pod_admin=args.pod_admin, prometheus_url=args.prometheus_url,
    )
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.bind)
    liveness = f"http://{args.bind}:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            liveness_endpoint=liveness,
            memo=context,
        )
    )
    return 0
