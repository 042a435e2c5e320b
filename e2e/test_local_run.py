"""`make run`'s path (scenario 1, part of `make test`): `python -m localcluster` with the canary example,
as the Makefile starts it, on this machine.

It must print `export` lines a shell can take (also written to `<state>/env`) and commands that
work, serve the operator's health and metrics at the printed addresses, have the example Ready only after warmup,
answer predictions (REST and gRPC) through the Service, be scraped by Prometheus with pod, namespace
and ModelDeployment labels, refuse a second run, idle lightly, and leave no process or listening
port behind after SIGTERM. The tests share one run and go in file order; the last one stops it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from e2e_support import KUBECTL, ROOT, LocalRun, build_models, process_alive, wait_for

EXAMPLE = ROOT / "examples" / "local-canary.yaml"
MODEL = "two_versions"
V1, V2 = [2.5, 3.0, 4.5], [4.0, 5.0, 8.0]  # 0.5x + 2 and x + 3 for [1, 2, 5]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    models = build_models(tmp_path_factory.mktemp("models"))
    state = tmp_path_factory.mktemp("state")
    lr = LocalRun(state, ["--mount", f"/models={models}", "--example", str(EXAMPLE)], state.parent / "localcluster.err").start()
    try:
        lr.wait_printed(timeout=600)
        yield lr
    finally:
        lr.stop()


def printed(run: LocalRun) -> dict[str, str]:
    """The variables of the printed `export` lines, by lower-case name (kubeconfig, rest, grpc, ...)."""
    out = {}
    for line in run.lines:
        if line.startswith("export "):
            for word in shlex.split(line)[1:]:
                name, _, value = word.partition("=")
                out[name.lower()] = value
    return out


def kubectl(run: LocalRun, *args: str) -> str:
    env = dict(os.environ, KUBECONFIG=printed(run)["kubeconfig"])
    p = subprocess.run([str(KUBECTL), *args], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_it_prints_export_lines_then_commands(run: LocalRun) -> None:
    lines = run.lines
    exports = [line for line in lines if line.startswith("export ")]
    assert exports == lines[:len(exports)] and len(exports) == 4, lines
    assert re.fullmatch(r'export KUBECONFIG=/\S+ PATH=/\S+/bin:"\$PATH"', exports[0])
    assert Path(printed(run)["kubeconfig"]).is_file()
    assert re.fullmatch(r"export REST=http://127\.0\.0\.1:\d+ GRPC=127\.0\.0\.1:\d+", exports[1])
    assert re.fullmatch(r"export PROMETHEUS=http://127\.0\.0\.1:\d+", exports[2])
    assert re.fullmatch(r"export OPERATOR_METRICS=http://127\.0\.0\.1:\d+/metrics OPERATOR_HEALTH=http://127\.0\.0\.1:\d+/healthz", exports[3])
    env_file = run.state_dir.resolve() / "env"
    assert env_file.read_text().splitlines() == exports and str(env_file) in lines[len(exports)]
    commands = [line.strip() for line in lines if line.startswith("  ")]
    assert commands[0] == "kubectl get md" and commands[1].startswith("curl ") and "$REST/" in commands[1]
    assert commands[2].startswith("kubectl patch md local-canary")


def test_the_operator_serves_health_and_metrics_at_the_printed_addresses(run: LocalRun) -> None:
    health = requests.get(printed(run)["operator_health"], timeout=5)
    assert health.status_code == 200
    metrics = requests.get(printed(run)["operator_metrics"], timeout=5)
    assert metrics.status_code == 200 and "modeldeploy_managed_models" in metrics.text


def test_the_example_is_ready_only_after_warmup(run: LocalRun) -> None:
    out = kubectl(run, "get", "md")
    header, row = out.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "READY", "MODEL", "VERSIONS"]
    assert row.split()[:7] == ["local-canary", "True", MODEL, "1,2", "1", "2", "canary=10%,stable=90%"]
    pod = json.loads(kubectl(run, "get", "pods", "-o", "json"))["items"][0]
    log = kubectl(run, "logs", pod["metadata"]["name"])
    warmed = [m for v in (1, 2) if (m := re.search(rf"^(\S+ \S+),\d+ INFO .*version {v} warmed up\b.*?8 record\(s\), 400 request", log, re.M))]
    assert len(warmed) == 2, log  # 8 records x requestIterations 50, each version, before...
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    ready_at = time.mktime(time.strptime(ready["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    for m in warmed:  # ...the pod turned Ready (the condition's time has whole seconds)
        assert ready_at >= int(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))), (ready, m.group(0))


def test_predictions_through_the_service_rest_and_grpc(run: LocalRun) -> None:
    rest = printed(run)["rest"]
    for label, expected in (("stable", V1), ("canary", V2)):
        url = f"{rest}/v1/models/{MODEL}/labels/{label}:predict"
        assert requests.post(url, json={"instances": [1.0, 2.0, 5.0]}, timeout=10).json() == {"predictions": expected}
    # no label: traffic.canary 10 splits 90/10 inside the server, and the answer says which label got it
    seen: dict[str, int] = {}
    with requests.Session() as s:
        for _ in range(200):
            r = s.post(f"{rest}/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0, 5.0]}, timeout=10)
            label = r.headers["X-Model-Label"]
            assert r.json() == {"predictions": V1 if label == "stable" else V2} and label in ("stable", "canary")
            seen[label] = seen.get(label, 0) + 1
    assert seen.get("canary", 0) >= 1 and seen["stable"] > seen.get("canary", 0), seen
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(printed(run)["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.version_label = "stable"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0, 2.0, 5.0], dtype=tf.float32))
        assert tf.make_ndarray(stub.Predict(request, 10.0).outputs["y"]).tolist() == V1


def test_prometheus_scrapes_the_pod_with_its_labels(run: LocalRun) -> None:
    prom = printed(run)["prometheus"]
    query = ':tensorflow:serving:request_count{model_name="two_versions"}'

    def series() -> list[dict]:
        return requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]

    found = wait_for(series, 30, "request counts scraped")
    labels = found[0]["metric"]
    assert labels["namespace"] == "default" and labels["pod"].startswith("local-canary-")
    assert labels["serving_modeldeploy_io_model_deployment"] == "local-canary" and labels["container"] == "model-server"
    targets = requests.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {"kubernetes-pods": "up", "modeldeploy-operator": "up",
                                                                  "modeldeploy-activator": "up"}
    cfg = requests.get(f"{prom}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
    assert "scrape_interval: 1s" in cfg


def test_a_second_run_says_one_is_running(run: LocalRun) -> None:
    p = subprocess.run(run.command(), env=run.env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 1
    assert "a local cluster is already running" in p.stderr and f"pid {run.proc.pid}" in p.stderr  # type: ignore[union-attr]
    assert printed(run)["kubeconfig"] in p.stderr


def test_the_printed_commands_work_and_flip_the_canary(run: LocalRun, tmp_path: Path) -> None:
    commands = [line.strip() for line in run.lines if line.startswith("  ")]
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "REST")}
    source = f"source {shlex.quote(str(run.state_dir.resolve() / 'env'))}"
    watch = subprocess.Popen(["bash", "-c", f"{source} && exec kubectl get md -w"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        script = " && ".join([source, *commands[:4]])
        p = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert '"predictions"' in p.stdout and "modeldeployment.serving.modeldeploy.io/local-canary patched" in p.stdout
        rest = printed(run)["rest"]
        wait_for(lambda: requests.post(f"{rest}/v1/models/{MODEL}/labels/stable:predict", json={"instances": [1.0, 2.0, 5.0]},
                                       timeout=10).json() == {"predictions": V2}, 30, "stable now answers with version 2")
        out = kubectl(run, "describe", "md", "local-canary")
        assert "Reconciled" in out and "applied generation 2" in out
    finally:
        watch.send_signal(signal.SIGTERM)
        rows = watch.communicate(timeout=10)[0]
    assert re.search(rf"local-canary\s+True\s+{MODEL}\s+1,2\s+2\s+2\s", rows), rows  # `get md -w` saw the flip


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _is_model_server(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"/model-server") for a in argv[:2])  # python .venv/bin/model-server ...


def test_the_idle_cluster_is_light(run: LocalRun) -> None:
    """The cluster itself (API server, controllers, agent, proxies, operator, Prometheus), without
    the model servers, under 10% of a core with the example running and no traffic."""
    assert run.proc is not None
    pids = [run.proc.pid, *(p for p in _descendants(run.proc.pid) if not _is_model_server(p))]
    before = {p: _cpu_seconds(p) for p in pids}
    start = time.monotonic()
    time.sleep(10)  # a measurement window, not a wait for an effect
    used = sum(_cpu_seconds(p) - before[p] for p in pids)
    assert used / (time.monotonic() - start) < 0.10, f"{used:.2f} CPU-seconds in 10 s"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_everything_and_frees_every_port(run: LocalRun) -> None:
    assert run.proc is not None
    info = run.info()
    pids = _descendants(run.proc.pid)
    assert len(pids) >= 3 and info["operator_pid"] in pids  # the operator, Prometheus, the model server
    ports = [int(u.rsplit(":", 1)[1]) for u in (printed(run)["rest"], printed(run)["grpc"], printed(run)["prometheus"],
                                                info["api"], info["http_proxy"])]
    pod = json.loads(kubectl(run, "get", "pods", "-o", "json"))["items"][0]
    ports += json.loads(pod["metadata"]["annotations"]["localcluster.modeldeploy.io/host-ports"]).values()
    assert all(_listening(p) for p in ports)
    assert run.stop(signal.SIGTERM, timeout=90) == 0
    assert [p for p in pids if process_alive(p)] == []
    assert [p for p in ports if _listening(p)] == []
    assert not (run.state_dir / "run.json").exists()
    assert list((run.state_dir / "pods").iterdir()) == []
