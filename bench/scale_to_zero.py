"""The scale-to-zero benchmark: cold starts of the demo model (half_plus_two, warmed up) on the local
cluster, and what a request pays through the Service when the model is warm.

On a local cluster started as `make run` starts it (the operator pointed at the activator), one
ModelDeployment with `autoscaling.minReplicas: 0` and a short idle window:

- warm: the same sequential REST predictions sent through the Service (the operator's EndpointSlice:
  the pod, directly, the activator not in the path) and to the pod's own port; the medians and p99s
  and their difference (the Service's local proxy is a TCP splice, as kube-proxy's NAT is a hop);
- cold, `--cycles` times: wait until it is at zero, send one REST request through the Service, time
  it to its answer, then read the cold start's parts from `status.scaleToZero.lastColdStart`
  (held -> scheduled -> model loaded -> warmed up -> first answer).

    python bench/scale_to_zero.py [--cycles 3] [--warm 300] [--out bench/results/scale_to_zero.json]

Writes its section of bench/RESULTS.md between the scale-to-zero markers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "e2e"))  # the local cluster's runner and client helpers (e2e_support)

NS, NAME, IDLE = "default", "coldstart", 10
START, END = "<!-- scale-to-zero -->", "<!-- /scale-to-zero -->"
PARTS = ("scheduledSeconds", "loadedSeconds", "warmedUpSeconds", "firstAnswerSeconds")


def spec() -> dict[str, Any]:
    return {"model": {"name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}}},
            "resources": {"cpu": "1", "memory": "1Gi"}, "warmup": {"generate": {"batchSizes": [1]}},
            "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "metric": "inFlightRequests", "target": 100,
                            "intervalSeconds": 2, "scaleToZero": {"idleSeconds": IDLE, "holdTimeoutSeconds": 300}}}


def timed(session: requests.Session, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = session.post(url, json={"instances": [1.0, 2.0]}, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    return out


def quantiles(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"p50": round(statistics.median(s), 3), "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 3)}


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(what)


def cold_start(cluster: Any) -> Any:
    return (((cluster.md(NS, NAME) or {}).get("status") or {}).get("scaleToZero") or {}).get("lastColdStart")


def section(out: dict[str, Any]) -> str:
    w, colds = out["warm"], out["cold"]
    L = [START, "## Scale to zero (bench/scale_to_zero.py)", "",
         f"Run {out['when']} on the local cluster: half_plus_two with warmup (`warmup.generate`), "
         f"`minReplicas: 0`, `idleSeconds: {IDLE}`. Cold: one REST request through the Service while at zero, "
         "timed to its answer; its parts from `status.scaleToZero.lastColdStart` (seconds; pod condition times "
         "have 1 s resolution).", "",
         "| cycle | request to answer s | held -> scheduled | scheduled -> loaded | warmed up | released -> answer |",
         "|---:|---:|---:|---:|---:|---:|"]
    for i, c in enumerate(colds, 1):
        parts = c.get("parts") or {}
        L.append(f"| {i} | {c['seconds']:.2f} | " + " | ".join(f"{parts.get(k, float('nan')):.2f}" for k in PARTS) + " |")
    L += ["", f"Warm, {w['n']} sequential REST predictions each way (ms): through the Service (its EndpointSlice "
          f"names the pod; the activator is not in the path) p50 {w['service']['p50']}, p99 {w['service']['p99']}; "
          f"to the pod's own port p50 {w['pod']['p50']}, p99 {w['pod']['p99']}"
          + (f"; through the same Service with scale to zero off (a selector, Kubernetes' own slices) p50 "
             f"{w['plainService']['p50']}, p99 {w['plainService']['p99']}" if w.get("plainService") else "")
          + ". The difference to the pod is the Service's hop (here the local proxy's TCP splice), which every "
          "Service has; the activator is not in the path.", "", END]
    return "\n".join(L)


def write_section(results: Path, text: str) -> None:
    body = results.read_text()
    if START in body and END in body:
        body = body[:body.index(START)] + text + body[body.index(END) + len(END):]
    elif "\n## Reproduce" in body:
        i = body.index("\n## Reproduce") + 1
        body = body[:i] + text + "\n\n" + body[i:]
    else:
        body = body.rstrip("\n") + "\n\n" + text + "\n"
    results.write_text(body)


def main(argv: list[str] | None = None) -> int:
    from e2e_support import MD_API, Cluster, LocalRun, build_models, condition, wait_local_ready

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale_to_zero.json")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scale-to-zero-"))
    models = build_models(work / "models")
    run = LocalRun(work / "state", ["--no-example", "--mount", f"/models={models}"], work / "localcluster.log").start()
    try:
        cluster = Cluster(Path(wait_local_ready(run)["kubeconfig"]), local=run.info())
        cluster.create({"apiVersion": MD_API, "kind": "ModelDeployment",
                        "metadata": {"name": NAME, "namespace": NS}, "spec": spec()})
        wait(lambda: condition(cluster.md(NS, NAME), "Ready").get("status") == "True", 300, "Ready")
        url = f"{cluster.service_url(NS, NAME)}/v1/models/half_plus_two:predict"
        pod = cluster.pods(NS, NAME)[0]
        host = json.loads(pod["metadata"]["annotations"]["localcluster.modeldeploy.io/host-ports"])["8501"]
        with requests.Session() as s:
            timed(s, url, 20)
            service = timed(s, url, args.warm)
        with requests.Session() as s:
            direct = timed(s, f"http://127.0.0.1:{host}/v1/models/half_plus_two:predict", args.warm)
        out: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "warm": {"n": args.warm, "service": quantiles(service), "pod": quantiles(direct)},
                               "cold": []}
        for i in range(args.cycles):
            wait(lambda: condition(cluster.md(NS, NAME), "ScaledToZero").get("status") == "True"
                 and not cluster.pods(NS, NAME), 300, "at zero")
            before = cold_start(cluster)
            t0 = time.perf_counter()
            r = requests.post(url, json={"instances": [1.0, 2.0]}, timeout=300)
            seconds = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            parts = wait(lambda prev=before: (c := cold_start(cluster)) != prev and c, 60, "the cold start in status")
            out["cold"].append({"seconds": round(seconds, 3), "parts": parts})
            print(f"cold start {i + 1}: {seconds:.2f} s {parts}", flush=True)
        # the same Service without scale to zero (its selector back, the EndpointSlice controller's slices)
        cluster.patch_spec(NS, NAME, {"autoscaling": {"minReplicas": 1}})
        wait(lambda: "selector" in (cluster.get("v1", "Service", NS, NAME) or {}).get("spec", {})
             and condition(cluster.md(NS, NAME), "Ready").get("status") == "True" and not [
                 s for s in cluster.kube.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices")
                 .get("items", []) if s["metadata"]["name"].startswith(f"{NAME}-md-")], 300, "scale to zero off")
        with requests.Session() as s:
            timed(s, url, 20)
            out["warm"]["plainService"] = quantiles(timed(s, url, args.warm))
        print(json.dumps(out["warm"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        if str(args.results):
            write_section(args.results, section(out))
    finally:
        run.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
