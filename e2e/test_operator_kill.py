"""The operator killed (SIGKILL) at 20 random points while ModelDeployments are created, their canary
flipped, a progressive rollout runs and replicas change, on the local cluster (`make e2e`):

- every ModelDeployment converges (Ready at its current generation, the spec's labels and replicas in
  force), each with exactly one of each child, all owned by it, and no child left without an owner;
- the requests sent the whole time through a Service never fail: a killed operator only stops
  reconciling, and the pods keep serving (a label flip waits for the restart, it does not break).

The kill points are random (a fixed seed, printed, so a failure can be replayed): 20 kills spread over
the operations, each followed at once by a restart, as a Deployment's restart policy would do.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
from e2e_support import (
    CHILDREN,
    READY_TIMEOUT,
    Cluster,
    Load,
    OperatorProcess,
    condition,
    half_plus_two,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SEED = int(os.environ.get("E2E_KILL_SEED", "20261206"))
KILLS = 20


def converged(cluster: Cluster, ns: str, name: str) -> dict | None:
    md = cluster.md(ns, name)
    if not md or condition(md, "Ready").get("status") != "True":
        return None
    st = md.get("status") or {}
    if st.get("observedGeneration") != md["metadata"]["generation"]:
        return None
    labels = (md["spec"].get("versionLabels") or {})
    if labels and (st.get("versionLabels") or {}) != labels:
        return None
    rollout = st.get("rollout") or {}
    if rollout and rollout.get("phase") not in ("Succeeded",):
        return None
    return md


def children_of(cluster: Cluster, ns: str) -> dict[tuple[str, str], list[dict]]:
    """Every managed child in the namespace, by (kind, name)."""
    out: dict[tuple[str, str], list[dict]] = {}
    for api_version, kind, _suffix in CHILDREN:
        plural = {"ConfigMap": "configmaps", "Deployment": "deployments", "Service": "services",
                  "PodDisruptionBudget": "poddisruptionbudgets"}[kind]
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        items = cluster.kube.request("GET", f"{base}/namespaces/{ns}/{plural}",
                                     query={"labelSelector": "app.kubernetes.io/managed-by=modeldeploy"})["items"]
        for obj in items:
            out.setdefault((kind, obj["metadata"]["name"]), []).append(obj)
    return out


def test_the_operator_killed_at_20_random_points_converges_and_no_request_fails(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nkill seed {SEED} (E2E_KILL_SEED replays it)")
    op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log", cluster.operator_env()).start()
    kills = 0

    def kill_soon(max_delay: float) -> None:
        """Sleep a random part of `max_delay`, then SIGKILL the operator and start it again."""
        nonlocal op, kills
        time.sleep(rng.uniform(0, max_delay))
        assert op.proc is not None
        op.proc.send_signal(signal.SIGKILL)
        op.proc.wait(10)
        kills += 1
        op = OperatorProcess(cluster.kubeconfig, namespace, tmp_path / "operator.log", cluster.operator_env()).start()

    def must_converge(name: str, timeout: float) -> None:
        try:
            wait_for(lambda: converged(cluster, namespace, name), timeout, f"{name} converged")
        except AssertionError as exc:
            md = cluster.md(namespace, name) or {}
            pods = [(p["metadata"]["name"], (p.get("status") or {}).get("phase"),
                     [c.get("state") for c in (p.get("status") or {}).get("containerStatuses") or []])
                    for p in cluster.pods(namespace, name)]
            log = (tmp_path / "operator.log").read_text()[-4000:]
            pod_logs = "\n".join(f"--- {p[0]}:\n" + cluster.kubectl("logs", "-n", namespace, p[0], "--tail=40",
                                                                       check=False).stdout for p in pods)
            cm = (cluster.get("v1", "ConfigMap", namespace, f"{name}-config") or {}).get("data") or {}
            state = Path((cluster.local or {}).get("logs", "/nonexistent")).parent
            files = "\n".join(f"--- {f}:\n{f.read_text()}" for f in sorted(state.glob(
                f"pods/{namespace}_{name}-*/volumes/config/*")) if f.name in ("models.config", "routing.json"))
            raise AssertionError(f"{exc}\nspec: {md.get('spec')}\nstatus: {md.get('status')}\npods: {pods}\n"
                                 f"operator log tail:\n{log}\npod logs:\n{pod_logs}\nConfigMap: {cm}\n"
                                 f"the pods' config files:\n{files}") from None

    try:
        # creates: a base model that serves the whole time, and three more created between kills
        cluster.create(half_plus_two("base", namespace, replicas=1))
        must_converge("base", READY_TIMEOUT)
        with Load(cluster, namespace, "base", "half_plus_two", threads=2) as load:
            names = ["k1", "k2", "k3"]
            for name in names:
                cluster.create(half_plus_two(name, namespace, model={
                    "name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}},
                    "versions": [1, 123]}, versionLabels={"stable": 1, "canary": 123}))
                kill_soon(1.5)
            # canary flips and traffic changes
            for i in range(6):
                name = names[i % 3]
                cluster.patch_spec(namespace, name, {"versionLabels": {"stable": 123 if i % 2 == 0 else 1}})
                kill_soon(1.5)
            # replicas
            for name, replicas in (("k1", 2), ("k2", 2), ("k1", 1), ("base", 2)):
                cluster.patch_spec(namespace, name, {"replicas": replicas})
                kill_soon(2.0)
            # a progressive rollout on base, killed in the middle of it
            prometheus = cluster.prometheus()
            cluster.patch_spec(namespace, "base", {
                "model": {"name": "half_plus_two", "storage": {"hostPath": {"path": "/models/half_plus_two"}},
                          "versions": [1, 123]},
                "versionLabels": {"stable": 1}})
            must_converge("base", READY_TIMEOUT)
            cluster.patch_spec(namespace, "base", {
                "versionLabels": {"stable": 123},
                "rollout": {"steps": [50, 100], "stepSeconds": 4, "prometheus": {"url": prometheus},
                            "analysis": {"intervalSeconds": 3, "minRequests": 20}}})
            while kills < KILLS:
                kill_soon(3.0)
            for name in ["base", *names]:
                must_converge(name, 300)
            failures = load.failures
        assert kills == KILLS
        assert failures == [], failures[:5]
        children = children_of(cluster, namespace)
        uids = {n: cluster.md(namespace, n)["metadata"]["uid"] for n in ["base", *names]}
        for name in ["base", *names]:
            for kind, suffix in [(kind, suffix) for _api, kind, suffix in CHILDREN] + [("Service", "-admin")]:
                found = children.pop((kind, name + suffix), [])
                assert len(found) == 1, (kind, name + suffix, len(found))
                assert [r["uid"] for r in found[0]["metadata"].get("ownerReferences", [])] == [uids[name]]
        assert not children, sorted(children)  # nothing orphaned, nothing extra
        assert cluster.md(namespace, "base")["status"]["rollout"]["phase"] == "Succeeded"
        assert cluster.get("apps/v1", "Deployment", namespace, "k2")["spec"]["replicas"] == 2
    finally:
        op.stop()
