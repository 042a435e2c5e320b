"""`python -m localcluster` (what `make run` starts): the local cluster, in the foreground.

Starts the cluster (see `cluster`), applies the example (`--example`, default
examples/local-canary.yaml), waits until it is Ready, sends a few predictions through its Service,
then prints `export` lines a shell can take (KUBECONFIG and PATH; REST, GRPC, PROMETHEUS; the
operator's OPERATOR_METRICS and OPERATOR_HEALTH), writes the same lines to `<state>/env` (for
`source .localcluster/env` in another shell; removed at stop), and prints commands to try. Progress
goes to stderr, the lines to stdout. Ctrl-C or SIGTERM stops everything (a second Ctrl-C skips the
pods' grace periods); a second run from the same state directory says that one is already running
and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from localcluster.cluster import ROOT, ClusterConfig, LocalCluster
from localcluster.lock import AlreadyRunning, StateLock
from localcluster.objects import (
    SERVICE_PORTS_ANNOTATION,
    Obj,
    annotations_of,
    condition,
    name_of,
    namespace_of,
)
from localcluster.printers import pod_status_text

SAMPLE_ANNOTATION = "localcluster.modeldeploy.io/sample-request"
DEFAULT_EXAMPLE = ROOT / "examples" / "local-canary.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", type=Path, default=ROOT / ".localcluster", help="kubeconfig, logs, volumes, the lock (default .localcluster/)")
    p.add_argument("--example", type=Path, default=DEFAULT_EXAMPLE, help="manifests to apply once the cluster runs")
    p.add_argument("--no-example", action="store_true", help="apply nothing; print KUBECONFIG and Prometheus only")
    p.add_argument("--mount", action="append", default=[], metavar="NODEPATH=DIR",
                   help="a directory of this machine seen at NODEPATH by hostPath volumes, as kind's extraMounts (repeatable)")
    p.add_argument("--no-operator", action="store_true", help="do not start the operator (tests start their own)")
    p.add_argument("--operator-arg", action="append", default=[], help="extra `modeldeploy operator` argument (repeatable)")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--scrape-interval", type=float, default=1.0, help="Prometheus scrape interval in seconds (default 1)")
    p.add_argument("--configmap-delay", type=float, default=0.0,
                   help="seconds before a changed ConfigMap reaches pods' volumes (the kubelet takes up to about 60)")
    p.add_argument("--crash-backoff", type=float, default=10.0, help="first CrashLoopBackOff delay in seconds (kubelet: 10)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the example to be Ready")
    args = p.parse_args(argv)
    for m in args.mount:
        node, sep, local = m.partition("=")
        if not sep or not node.startswith("/") or not local:
            p.error(f"--mount {m!r}: expected NODEPATH=DIR with an absolute NODEPATH, e.g. /models=./demo_models")
        if not Path(local).is_dir():
            p.error(f"--mount {m!r}: {local} is not a directory (for the demo models: make demo-models)")
    if not args.no_example and not args.example.is_file():
        p.error(f"--example {args.example}: no such file")
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def config_from(args: argparse.Namespace) -> ClusterConfig:
    mounts = [(m.partition("=")[0], str(Path(m.partition("=")[2]).resolve())) for m in args.mount]
    return ClusterConfig(state_dir=args.state_dir, node_mounts=mounts, operator=not args.no_operator,
                         operator_args=list(args.operator_arg), prometheus=not args.no_prometheus,
                         scrape_interval=args.scrape_interval, configmap_delay_seconds=args.configmap_delay,
                         crash_backoff_seconds=args.crash_backoff)


def apply_example(cluster: LocalCluster, path: Path) -> list[Obj]:
    assert cluster.api is not None
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for d in docs:
        d.setdefault("metadata", {}).setdefault("namespace", "default")
        cluster.api.add_object(d)
    return docs


async def wait_ready(cluster: LocalCluster, md: Obj, timeout: float) -> Obj:
    """Until the ModelDeployment is Ready and its Service listens; progress on stderr."""
    assert cluster.api is not None
    ns, name = namespace_of(md), name_of(md)
    group, _, _ = md["apiVersion"].partition("/")
    plural = next(r.plural for r in cluster.api.resources.values() if r.group == group and r.kind == md["kind"])
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        live = cluster.api.get(group, plural, ns, name)
        svc = cluster.api.get("", "services", ns, name)
        ready = condition(live, "Ready")
        pods = [p for p in cluster.api.list_objects("", "pods", ns) if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/instance") == name]
        seen = f"{name}: Ready={ready.get('status', '?')} ({ready.get('reason', '')}); pods: " + (
            ", ".join(f"{name_of(p)} {pod_status_text(p)}" for p in pods) or "none yet")
        if seen != last:
            say(seen)
            last = seen
        if live and ready.get("status") == "True" and svc and annotations_of(svc).get(SERVICE_PORTS_ANNOTATION):
            return live
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{ns}/{name} was not Ready within {timeout:g}s; see `kubectl describe md {name}` and {cluster.logs}")


async def predictions(rest: str, model: str, labels: list[str], body: Obj) -> list[str]:
    """A prediction through the Service for each label and one naming none: what they answered."""
    out = []
    async with aiohttp.ClientSession() as session:
        for label in [*labels, ""]:
            url = f"{rest}/v1/models/{model}" + (f"/labels/{label}" if label else "") + ":predict"
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                answer = await resp.text()
            out.append(f"{label or 'no label'} -> {resp.status} {answer.strip()}")
    return out


def env_lines(cluster: LocalCluster, urls: dict[str, str]) -> list[str]:
    """`export` lines for a shell: what the printed commands and the docs' walkthroughs use."""
    q = shlex.quote
    lines = [f'export KUBECONFIG={q(str(cluster.kubeconfig))} PATH={q(str(cluster.config.venv_bin))}:"$PATH"']
    if urls.get("rest"):
        lines.append(f"export REST={q(urls['rest'])} GRPC={q(urls['grpc'])}")
    if urls.get("prometheus"):
        lines.append(f"export PROMETHEUS={q(urls['prometheus'])}")
    else:
        lines.append(f"# Prometheus is not running: {cluster.prometheus_problem or 'disabled'}")
    summary = cluster.summary()
    if summary["operator_metrics"]:
        lines.append(f"export OPERATOR_METRICS={q(summary['operator_metrics'])} OPERATOR_HEALTH={q(summary['operator_health'])}")
    return lines


def lines_for(cluster: LocalCluster, md: Obj | None, urls: dict[str, str]) -> list[str]:
    """What `make run` prints: the export lines, where they are kept, then commands to try."""
    lines = [*env_lines(cluster, urls), f"(also in {cluster.env_file}: `source {cluster.env_file}` in another shell)", "",
             "Try it from another shell (after the export lines):"]
    if md is not None:
        name, model = name_of(md), (md.get("spec", {}).get("model") or {}).get("name") or name_of(md)
        sample = annotations_of(md).get(SAMPLE_ANNOTATION, '{"instances": [1.0, 2.0, 5.0]}')
        labels = sorted((md.get("spec") or {}).get("versionLabels") or {})
        lines += [
            "  kubectl get md",
            f'  curl -s -d {shlex.quote(sample)} "$REST/v1/models/{model}:predict"',
        ]
        if "stable" in labels and "canary" in labels:
            canary = md["spec"]["versionLabels"]["canary"]
            patch = json.dumps({"spec": {"versionLabels": {"stable": canary}}}, separators=(",", ":"))
            lines += [f"  kubectl patch md {name} --type=merge -p {shlex.quote(patch)}",
                      f'  curl -s "$REST/v1/models/{model}/labels/stable"']
    else:
        lines += ["  kubectl get nodes"]
    lines += [f"Service names resolve through the HTTP proxy {urls['http_proxy']} "
              f"(curl -x {urls['http_proxy']} http://<service>.<namespace>.svc:8501/...)",
              f"Logs in {cluster.logs}/ (pods: kubectl logs). Stop with Ctrl-C."]
    return lines


async def bring_up(cluster: LocalCluster, args: argparse.Namespace, lock: StateLock) -> None:
    say(f"starting the local cluster (state in {cluster.state})")
    await cluster.start()
    say(f"API server {cluster.api.url if cluster.api else ''}, operator pid {cluster.operator.pid if cluster.operator else '-'}, "
        f"Prometheus {cluster.prometheus.url if cluster.prometheus else '(' + (cluster.prometheus_problem or 'off') + ')'}")
    urls = {"prometheus": cluster.prometheus.url if cluster.prometheus else "", "http_proxy": cluster.dns.url if cluster.dns else ""}
    md = None
    if not args.no_example:
        docs = apply_example(cluster, args.example)
        md = next((d for d in docs if d["kind"] == "ModelDeployment"), None)
        say(f"applied {args.example}")
    if md is not None:
        live = await wait_ready(cluster, md, args.ready_timeout)
        assert cluster.api is not None, "the cluster has started"
        svc = cluster.api.get("", "services", namespace_of(md), name_of(md)) or {}  # wait_ready saw its ports
        ports = json.loads(annotations_of(svc)[SERVICE_PORTS_ANNOTATION])
        urls.update(rest=f"http://127.0.0.1:{ports['http']}", grpc=f"127.0.0.1:{ports['grpc']}")
        model = (live["spec"].get("model") or {}).get("name") or name_of(live)
        body = json.loads(annotations_of(md).get(SAMPLE_ANNOTATION, '{"instances": [1.0, 2.0, 5.0]}'))
        try:
            for answer in await predictions(urls["rest"], model, sorted(live["spec"].get("versionLabels") or {}), body):
                say(f"prediction through the Service ({answer})")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            say(f"warning: a prediction through the Service failed: {exc}")
    lock.record({**cluster.summary(), **urls, "children": cluster.child_pids()})
    cluster.env_file.write_text("\n".join(env_lines(cluster, urls)) + "\n")
    print("\n".join(lines_for(cluster, md, urls)), flush=True)


async def run(args: argparse.Namespace, lock: StateLock) -> int:
    loop = asyncio.get_running_loop()
    cluster = LocalCluster(config_from(args))
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            say("stopping now (no more grace)")
            if cluster.agent is not None:
                cluster.agent.kill_all()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        loop.add_signal_handler(sig, on_signal)
    flow = asyncio.create_task(bring_up(cluster, args, lock))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({flow, waiter}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if flow.done() and flow.exception() is not None:
        say(f"error: {flow.exception()}")
        code = 1
    elif flow.done():
        await waiter
    else:
        flow.cancel()
        await asyncio.gather(flow, return_exceptions=True)
    waiter.cancel()
    say("stopping the local cluster (pods first: preStop, SIGTERM, grace)")
    await cluster.stop()
    cluster.env_file.unlink(missing_ok=True)
    say("stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = StateLock(args.state_dir.resolve())
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        print(f"python -m localcluster: {exc}", file=sys.stderr)
        for key in ("kubeconfig", "rest", "grpc", "prometheus"):
            if exc.info.get(key):
                print(f"  {key}: {exc.info[key]}", file=sys.stderr)
        return 1
    (lock.state_dir / "logs").mkdir(exist_ok=True)
    logging.basicConfig(level=logging.INFO, filename=lock.state_dir / "logs" / "localcluster.log",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args, lock))
    finally:
        lock.release()

