"""The real operator (kopf, in a subprocess) against the fake API server.

Relies on these kube-apiserver behaviours of the fake (each covered in tests/localcluster/test_fakeapi.py): discovery,
CRUD, server-side apply, merge and JSON patch, label selectors, resourceVersion conflicts, watch with
resume, the status subresource, generation, ownerReference cascade, CRD schema validation.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes_validate
import yaml
from localcluster.fakeapi import FakeKubeAPI
from modeldeploy.decisions import render
from operator_support import (
    EXAMPLES,
    GROUP,
    PLURAL,
    RESYNC_SECONDS,
    OperatorProcess,
    kubectl,
    make_namespace,
    md,
)
from support import condition, free_port, wait_for

CHILDREN = [("", "secrets", "-admin-token"), ("", "configmaps", "-config"), ("apps", "deployments", ""),
            ("", "services", ""), ("", "services", "-admin"), ("policy", "poddisruptionbudgets", "")]


def get_md(fake: FakeKubeAPI, ns: str, name: str) -> dict | None:
    return fake.get(GROUP, PLURAL, ns, name)


def ready(fake: FakeKubeAPI, ns: str, name: str, generation: int | None = None) -> dict | None:
    obj = get_md(fake, ns, name)
    if not obj or condition(obj, "Ready").get("status") != "True":
        return None
    gen = generation or obj["metadata"]["generation"]
    return obj if obj["status"].get("observedGeneration") == gen else None


def deployment(fake: FakeKubeAPI, ns: str, name: str) -> dict:
    dep = fake.get("apps", "deployments", ns, name)
    assert dep is not None
    return dep


def pod_hash(dep: dict) -> str:
    return dep["spec"]["template"]["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]


def events(fake: FakeKubeAPI, ns: str, name: str) -> list[tuple[str, str]]:
    return [(e.get("type"), e.get("reason")) for e in fake.list_objects("", "events", ns) if e.get("involvedObject", {}).get("name") == name]


def patch_spec(fake: FakeKubeAPI, ns: str, name: str, spec_patch: dict) -> int:
    from localcluster.fakeapi import merge_patch

    obj = get_md(fake, ns, name)
    assert obj
    obj["spec"] = merge_patch(obj["spec"], spec_patch)
    out = fake.update(fake.resources[(GROUP, PLURAL)], ns, name, obj)
    return out["metadata"]["generation"]


def test_create_renders_valid_children_and_truthful_status(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("clf", "ml", model={"storage": {"pvc": {"claimName": "models"}}, "versions": [1, 2]}, versionLabels={"stable": 1}, resources={"gpu": 1}))
    obj = wait_for(lambda: ready(fake, "ml", "clf"), what="Ready")
    uid = obj["metadata"]["uid"]
    for group, plural, suffix in CHILDREN:
        child = fake.get(group, plural, "ml", "clf" + suffix)
        assert child is not None, plural
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
        kubernetes_validate.validate(child, "1.33", strict=True)
    st = obj["status"]
    assert st["readyReplicas"] == 1 and st["modelName"] == "clf" and st["versionsSummary"] == "1,2"
    assert st["versions"] == [{"version": 1, "state": "Available", "labels": ["stable"]}, {"version": 2, "state": "Available"}]
    assert condition(obj, "Progressing")["status"] == "False" and condition(obj, "Degraded")["status"] == "False"
    assert st["configHash"] == pod_hash(deployment(fake, "ml", "clf"))
    wait_for(lambda: ("Normal", "Reconciled") in events(fake, "ml", "clf"), what="Reconciled event")
    assert ("Normal", "Created") in events(fake, "ml", "clf")
    # kopf's bookkeeping stays in annotations; status belongs to us alone.
    assert set(st) <= {"observedGeneration", "conditions", "replicas", "desiredReplicas", "readyReplicas", "updatedReplicas", "modelName",
                       "versions", "versionsSummary", "versionLabels", "labelsSummary", "configHash", "selector",
                       "routing", "trafficSummary"}
    # no pod the operator can ask (a fake API server: no EndpointSlices): the table goes by ConfigMap, as status says
    assert st["routing"]["labels"] == {"stable": 1} and st["routing"]["delivery"] == "ConfigMap"


def test_status_follows_pod_readiness(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.set_deployment_ready("ml", "slow", 0)
    fake.add_object(md("slow", "ml", replicas=2))
    wait_for(lambda: condition(get_md(fake, "ml", "slow"), "Progressing").get("status") == "True", what="Progressing")
    obj = get_md(fake, "ml", "slow")
    assert condition(obj, "Ready")["status"] == "False" and condition(obj, "Ready")["reason"] == "PodsNotReady"
    assert "0/2 pods ready" in condition(obj, "Ready")["message"]
    fake.set_deployment_ready("ml", "slow", 2)
    wait_for(lambda: ready(fake, "ml", "slow"), what="Ready after pods became ready")


def test_update_of_each_field_group(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("m", "ml", model={"storage": {"pvc": {"claimName": "models"}}, "versions": [1, 2]}, versionLabels={"stable": 1}))
    wait_for(lambda: ready(fake, "ml", "m"), what="Ready")
    h0 = pod_hash(deployment(fake, "ml", "m"))

    # versions and labels: models.config changes, the pods do not restart
    gen = patch_spec(fake, "ml", "m", {"model": {"versions": [1, 2, 3]}, "versionLabels": {"stable": 2, "canary": 3}})
    wait_for(lambda: ready(fake, "ml", "m", gen), what="labels applied")
    cm = fake.get("", "configmaps", "ml", "m-config")
    assert "versions: 3" in cm["data"]["models.config"]
    assert json.loads(cm["data"]["routing.json"])["models"]["m"]["labels"] == {"stable": 2, "canary": 3}
    assert pod_hash(deployment(fake, "ml", "m")) == h0
    assert get_md(fake, "ml", "m")["status"]["labelsSummary"] == "canary=3,stable=2"

    steps = [
        ({"batching": {"maxBatchSize": 16}}, lambda d, c: "--enable_batching=true" in d["spec"]["template"]["spec"]["containers"][0]["args"] and "max_batch_size { value: 16 }" in c["data"]["batching.config"]),
        ({"warmup": {"requestIterations": 4}}, lambda d, c: "--num_request_iterations_for_warmup=4" in d["spec"]["template"]["spec"]["containers"][0]["args"]),
        ({"resources": {"gpu": 2, "memory": "6Gi"}}, lambda d, c: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"memory": "6Gi", "nvidia.com/gpu": "2"}),
        ({"placement": {"nodeSelector": {"pool": "a100"}}}, lambda d, c: d["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a100"}),
        ({"server": {"image": "example.com/ms:2"}}, lambda d, c: d["spec"]["template"]["spec"]["containers"][0]["image"] == "example.com/ms:2"),
        ({"model": {"storage": {"pvc": {"subPath": "other"}}}}, lambda d, c: any(m.get("subPath") == "other" for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"])),
    ]
    last = pod_hash(deployment(fake, "ml", "m"))
    for spec_patch, check in steps:
        gen = patch_spec(fake, "ml", "m", spec_patch)
        wait_for(lambda gen=gen: ready(fake, "ml", "m", gen), what=f"update {spec_patch}")
        dep, cm = deployment(fake, "ml", "m"), fake.get("", "configmaps", "ml", "m-config")
        assert check(dep, cm), spec_patch
        assert pod_hash(dep) != last, f"{spec_patch} must roll the pods"
        last = pod_hash(dep)

    gen = patch_spec(fake, "ml", "m", {"replicas": 3})
    wait_for(lambda: ready(fake, "ml", "m", gen), what="scaled")
    assert deployment(fake, "ml", "m")["spec"]["replicas"] == 3 and pod_hash(deployment(fake, "ml", "m")) == last
    # autoscaling without a Prometheus to ask: missing data never scales, the 3 pods stay (within
    # the bounds), and status says why; bounds apply without data
    gen = patch_spec(fake, "ml", "m", {"autoscaling": {"minReplicas": 2, "maxReplicas": 4, "target": 100}})
    obj = wait_for(lambda: ready(fake, "ml", "m", gen) and (ready(fake, "ml", "m", gen)["status"].get("autoscaler") or {})
                   .get("reason") == "MetricUnavailable" and ready(fake, "ml", "m", gen), what="autoscaler holding")
    assert deployment(fake, "ml", "m")["spec"]["replicas"] == 3 and obj["status"]["desiredReplicas"] == 3
    assert "no Prometheus URL" in obj["status"]["autoscaler"]["message"]
    assert condition(obj, "ScalingActive")["status"] == "False"
    gen = patch_spec(fake, "ml", "m", {"autoscaling": {"minReplicas": 4}})
    wait_for(lambda: ready(fake, "ml", "m", gen) and deployment(fake, "ml", "m")["spec"]["replicas"] == 4,
             what="raised to minReplicas")
    gen = patch_spec(fake, "ml", "m", {"autoscaling": None})
    wait_for(lambda: ready(fake, "ml", "m", gen), what="autoscaling off")
    assert deployment(fake, "ml", "m")["spec"]["replicas"] == 3
    # removing a field group removes what it rendered (server-side apply drops fields we no longer own)
    gen = patch_spec(fake, "ml", "m", {"batching": None, "placement": None})
    wait_for(lambda: ready(fake, "ml", "m", gen), what="batching removed")
    dep = deployment(fake, "ml", "m")
    assert "nodeSelector" not in dep["spec"]["template"]["spec"]
    assert not any("batching" in a for a in dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "batching.config" not in fake.get("", "configmaps", "ml", "m-config")["data"]


def test_delete_cascades_to_children(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("gone", "ml"))
    wait_for(lambda: ready(fake, "ml", "gone"), what="Ready")
    mark = len(fake.audit())
    fake.delete(fake.resources[(GROUP, PLURAL)], "ml", "gone")
    wait_for(lambda: get_md(fake, "ml", "gone") is None, what="deleted")
    deleted_at = time.monotonic()
    # garbage collection is asynchronous, as in a real cluster
    wait_for(lambda: all(fake.get(g, p, "ml", "gone" + s) is None for g, p, s in CHILDREN), what="children collected")
    # and the operator does not resurrect them: not in answer to the collection's events (a
    # ModelDeployment created after it is Ready: its children's events come on the same watches,
    # after the deletions'), nor at a periodic re-check of a stale object (one re-check period)
    fake.add_object(md("next", "ml"))
    wait_for(lambda: ready(fake, "ml", "next"), what="the next ModelDeployment Ready")
    time.sleep(max(0.0, deleted_at + RESYNC_SECONDS * 1.1 + 0.5 - time.monotonic()))
    children = {p for _, p, _ in CHILDREN}
    rewritten = [a for a in fake.audit()[mark:] if a.resource in children and a.name.startswith("gone")
                 and a.verb in ("create", "update", "patch")]
    assert rewritten == [] and all(fake.get(g, p, "ml", "gone" + s) is None for g, p, s in CHILDREN), rewritten


def test_drift_is_corrected(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("d", "ml", replicas=2))
    wait_for(lambda: ready(fake, "ml", "d"), what="Ready")
    deploys = fake.resources[("apps", "deployments")]

    def recreated(group: str, plural: str, name: str) -> Callable[[], bool]:
        """A check that the object was deleted and another one (a new uid) stands in its place."""
        uid = fake.get(group, plural, "ml", name)["metadata"]["uid"]  # type: ignore[index]
        return lambda: (fake.get(group, plural, "ml", name) or {"metadata": {"uid": uid}})["metadata"]["uid"] != uid

    deployment_recreated = recreated("apps", "deployments", "d")
    fake.delete(deploys, "ml", "d")
    wait_for(deployment_recreated, what="Deployment re-created")
    dep = deployment(fake, "ml", "d")
    dep["spec"]["replicas"] = 7
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    fake.update(deploys, "ml", "d", dep)
    wait_for(lambda: deployment(fake, "ml", "d")["spec"]["replicas"] == 2, what="replicas restored")
    assert deployment(fake, "ml", "d")["spec"]["template"]["spec"]["containers"][0]["image"] == render.DEFAULT_SERVER_IMAGE
    cms = fake.resources[("", "configmaps")]
    cm = fake.get("", "configmaps", "ml", "d-config")
    cm["data"]["models.config"] = "garbage"
    fake.update(cms, "ml", "d-config", cm)
    wait_for(lambda: fake.get("", "configmaps", "ml", "d-config")["data"]["models.config"].startswith("model_config_list"), what="config restored")
    service_recreated = recreated("", "services", "d")
    fake.delete(fake.resources[("", "services")], "ml", "d")
    wait_for(service_recreated, what="Service re-created")
    wait_for(lambda: ("Normal", "DriftCorrected") in events(fake, "ml", "d"), what="DriftCorrected event")


def test_invalid_specs_are_reported_and_nothing_is_half_applied(fake: FakeKubeAPI, operator: OperatorProcess, kubeconfig: Path, tmp_path: Path) -> None:
    make_namespace(fake, "ml", pvc=None)
    # schema-rejected: the API server refuses it with the CEL rule's message
    bad = md("bad", "ml", model={"storage": {"pvc": {"claimName": "models"}}, "versions": [1]}, versionLabels={"stable": 9})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    p = kubectl(kubeconfig, "apply", "-f", str(tmp_path / "bad.yaml"), check=False)
    assert p.returncode != 0 and "every versionLabels entry must name a version listed in model.versions" in p.stderr
    # passes the schema but cannot work: status and a Warning event, no children
    fake.add_object(md("nostore", "ml"))
    fake.add_object(md("steps", "ml", rollout={"steps": [50, 10]}))
    obj = wait_for(lambda: condition(get_md(fake, "ml", "nostore"), "Degraded").get("status") == "True" and get_md(fake, "ml", "nostore"), what="StorageNotFound")
    assert condition(obj, "Ready")["reason"] == "StorageNotFound" and 'PersistentVolumeClaim "models" not found' in condition(obj, "Ready")["message"]
    obj = wait_for(lambda: condition(get_md(fake, "ml", "steps"), "Degraded").get("reason") == "InvalidSpec" and get_md(fake, "ml", "steps"), what="InvalidSpec")
    assert "strictly increasing" in condition(obj, "Degraded")["message"] and obj["status"]["observedGeneration"] == 1
    wait_for(lambda: ("Warning", "StorageNotFound") in events(fake, "ml", "nostore"), what="Warning event")
    # Events of different objects are posted independently: wait for each one's own.
    wait_for(lambda: ("Warning", "InvalidSpec") in events(fake, "ml", "steps"), what="InvalidSpec event")
    for name in ("nostore", "steps"):
        for group, plural, suffix in CHILDREN:
            assert fake.get(group, plural, "ml", name + suffix) is None
    # fixing the cluster (the PVC appears) or the spec converges without further action
    make_namespace_pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": "ml"},
                          "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}}
    fake.add_object(make_namespace_pvc)
    gen = patch_spec(fake, "ml", "steps", {"rollout": {"steps": [10, 50]}})
    wait_for(lambda: ready(fake, "ml", "nostore"), timeout=30, what="nostore Ready after PVC appeared")
    wait_for(lambda: ready(fake, "ml", "steps", gen), what="steps Ready after fix")
    # an update that breaks a working deployment changes nothing; status says why, and counts the old pods
    before = deployment(fake, "ml", "steps")
    gen = patch_spec(fake, "ml", "steps", {"rollout": {"steps": [10, 5]}, "replicas": 4})
    obj = wait_for(lambda: (o := get_md(fake, "ml", "steps")) and o["status"]["observedGeneration"] == gen and o, what="InvalidSpec again")
    assert condition(obj, "Ready")["reason"] == "InvalidSpec" and obj["status"]["readyReplicas"] == 1
    assert deployment(fake, "ml", "steps")["spec"] == before["spec"]


def test_operator_restart_mid_reconcile_converges(fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> None:
    make_namespace(fake, "ml")
    # The API server fails every Deployment write (its create, and an apply): the operator gets as far as the ConfigMap.
    fake.fail_next.extend([("create", "deployments", 500), ("patch", "deployments", 500)] * 1000)
    op = OperatorProcess(kubeconfig, tmp_path / "op1.log").start()
    try:
        fake.add_object(md("r", "ml", replicas=2))
        wait_for(lambda: fake.get("", "configmaps", "ml", "r-config"), what="ConfigMap applied")
        assert fake.get("apps", "deployments", "ml", "r") is None
    finally:
        op.stop(signal.SIGKILL)  # dies mid-reconcile, with no chance to clean up
    fake.fail_next.clear()
    gen = patch_spec(fake, "ml", "r", {"replicas": 3})  # the spec changes while no operator runs
    op2 = OperatorProcess(kubeconfig, tmp_path / "op2.log").start()
    try:
        obj = wait_for(lambda: ready(fake, "ml", "r", gen), timeout=30, what="converged after restart")
        assert deployment(fake, "ml", "r")["spec"]["replicas"] == 3 and obj["status"]["readyReplicas"] == 3
    finally:
        op2.stop()


def test_conflicts_and_transient_errors_are_retried(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "ml")
    fake.fail_next.extend([("patch", "services", 409), ("patch", "deployments", 503), ("patch", PLURAL, 409)])
    fake.add_object(md("c", "ml"))
    wait_for(lambda: ready(fake, "ml", "c"), timeout=30, what="Ready despite conflicts")
    assert not [f for f in fake.fail_next if f[1] in ("services", "deployments")]


def test_many_model_deployments_at_once_and_one_broken_blocks_none(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    make_namespace(fake, "team-a")
    make_namespace(fake, "team-b")
    names = [(ns, f"m{i}") for i in range(12) for ns in ("team-a", "team-b")]
    fake.add_object(md("broken", "team-a", model={"storage": {"pvc": {"claimName": "missing"}}}))
    for ns, name in names:
        fake.add_object(md(name, ns, replicas=1 + len(name) % 2))
    wait_for(lambda: all(ready(fake, ns, n) for ns, n in names), timeout=60, what="all Ready")
    assert condition(get_md(fake, "team-a", "broken"), "Ready").get("reason") == "StorageNotFound"
    assert len(fake.list_objects("apps", "deployments")) == len(names)


def test_kubectl_apply_examples_and_get_md(fake: FakeKubeAPI, operator: OperatorProcess, kubeconfig: Path, tmp_path: Path) -> None:
    fake.add_object({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": "default"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    examples = sorted(EXAMPLES.glob("*.yaml"))
    for path in examples:
        kubectl(kubeconfig, "apply", "-f", str(path))
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in examples]
    wait_for(lambda: all(ready(fake, "default", n) for n in names), timeout=30, what="examples Ready")
    out = kubectl(kubeconfig, "get", "md").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "MODEL", "VERSIONS", "STABLE", "CANARY", "TRAFFIC", "ROLLOUT",
                                "WEIGHT", "AUTOSCALER", "REPLICAS", "AVAILABLE", "AGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    # (an integer column with no value, WEIGHT here, prints empty)
    assert rows["ranker"][1:11] == ["True", "ranker", "3,4", "3", "4", "<none>", "<none>", "<none>", "2", "2"]
    assert rows["half-plus-two"][1:4] == ["True", "half_plus_two", "latest:1"]
    assert rows["classifier"][1:4] == ["True", "classifier", "latest:1"]
    wide = kubectl(kubeconfig, "get", "md", "ranker", "-o", "wide").stdout
    assert "REASON" in wide and "Available" in wide
    # a second `kubectl apply` of an edited file updates the resource (client-side apply's merge patch)
    edited = tmp_path / "ranker.yaml"
    edited.write_text((EXAMPLES / "versions-and-labels.yaml").read_text().replace("replicas: 2", "replicas: 3"))
    kubectl(kubeconfig, "apply", "-f", str(edited))
    wait_for(lambda: ready(fake, "default", "ranker", 2), what="generation 2 reconciled")
    assert deployment(fake, "default", "ranker")["spec"]["replicas"] == 3
    described = kubectl(kubeconfig, "describe", "md", "ranker").stdout
    assert "Reconciled" in described and "modeldeploy-operator" in described and "created Deployment ranker" in described
    # a label flip through kubectl: a merge patch on the custom resource
    kubectl(kubeconfig, "patch", "md", "ranker", "--type=merge", "-p", '{"spec":{"versionLabels":{"stable":4}}}')
    wait_for(lambda: "canary=4,stable=4" in kubectl(kubeconfig, "get", "md", "ranker", "-o", "wide").stdout,
             what="label flip visible")
    routing = json.loads(fake.get("", "configmaps", "default", "ranker-config")["data"]["routing.json"])
    assert routing["models"]["ranker"]["labels"] == {"canary": 4, "stable": 4}
    kubectl(kubeconfig, "delete", "md", "ranker")
    wait_for(lambda: fake.get("apps", "deployments", "default", "ranker") is None, what="children deleted")


def test_audit_log_records_what_the_operator_calls(fake: FakeKubeAPI, operator: OperatorProcess, tmp_path: Path) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("a", "ml"))
    wait_for(lambda: ready(fake, "ml", "a"), what="Ready")
    rules = fake.audit_rules("modeldeploy-operator/") | fake.audit_rules("kopf/")
    assert ("patch", "apps", "deployments", "") in rules
    assert ("patch", GROUP, PLURAL, "status") in rules
    assert ("watch", GROUP, PLURAL, "") in rules
    assert ("get", "", "persistentvolumeclaims", "") in rules
    assert ("create", "", "events", "") in rules
    # nothing outside what the chart's RBAC is meant to grant
    allowed_resources = {(GROUP, PLURAL), ("", "configmaps"), ("", "services"), ("apps", "deployments"),
                         ("policy", "poddisruptionbudgets"), ("", "persistentvolumeclaims"), ("", "events"),
                         ("", "secrets"), ("discovery.k8s.io", "endpointslices"), ("networking.k8s.io", "networkpolicies"),
                         ("autoscaling", "horizontalpodautoscalers"), ("", "pods")}
    assert {(g, r) for _, g, r, _ in rules} <= allowed_resources
    assert {v for v, g, r, _ in rules if (g, r) == ("", "pods")} <= {"list", "watch"}  # pods: read-only
    fake.write_audit(tmp_path / "audit.json")
    assert (tmp_path / "audit.json").read_text().startswith("[")


def test_namespaced_operator_ignores_other_namespaces(fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> None:
    make_namespace(fake, "mine")
    make_namespace(fake, "theirs")
    op = OperatorProcess(kubeconfig, tmp_path / "op.log", ["--namespace", "mine"]).start()
    try:
        fake.add_object(md("x", "theirs"))
        fake.add_object(md("x", "mine"))
        wait_for(lambda: ready(fake, "mine", "x"), what="Ready in watched namespace")
        time.sleep(1)
        assert fake.get("apps", "deployments", "theirs", "x") is None
        assert all(a.namespace in ("mine", "") for a in fake.audit() if a.userAgent.startswith(("kopf/", "modeldeploy-operator/")))
    finally:
        op.stop()


def test_operator_serves_health_and_metrics(fake: FakeKubeAPI, kubeconfig: Path, tmp_path: Path) -> None:
    import requests

    make_namespace(fake, "ml")
    metrics_port, health_port = free_port(), free_port()
    op = OperatorProcess(kubeconfig, tmp_path / "op.log", ["--metrics-port", str(metrics_port), "--health-port", str(health_port), "--bind", "127.0.0.1"])
    op.start()
    try:
        fake.add_object(md("h", "ml"))
        fake.add_object(md("broken", "ml", model={"storage": {"pvc": {"claimName": "absent"}}}))
        wait_for(lambda: ready(fake, "ml", "h"), what="Ready")

        def scrape() -> str:
            try:
                return requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
            except requests.ConnectionError:
                return ""

        text = wait_for(lambda: (t := scrape()) and 'modeldeploy_reconciles_total{result="problem"}' in t and t, what="metrics")
        assert 'modeldeploy_reconciles_total{result="ok"}' in text
        assert "modeldeploy_reconcile_duration_seconds_count" in text and "modeldeploy_managed_models 2.0" in text
        health = wait_for(lambda: requests.get(f"http://127.0.0.1:{health_port}/healthz", timeout=2), what="healthz")
        assert health.status_code == 200
    finally:
        op.stop()


def test_operator_started_before_the_crd_waits_for_it(tmp_path: Path) -> None:
    from operator_support import CRD_FILE

    with FakeKubeAPI() as bare:
        kubeconfig = bare.write_kubeconfig(tmp_path / "kubeconfig")
        quick = OperatorProcess(kubeconfig, tmp_path / "quick.log", ["--crd-wait-seconds", "1"]).start()
        assert quick.proc is not None and quick.proc.wait(60) == 3
        assert "the ModelDeployment CRD is not installed" in quick.logs()
        op = OperatorProcess(kubeconfig, tmp_path / "op.log").start()
        try:
            # Install the CRD only once the operator says it is waiting for it (a fixed sleep
            # races with a slow start on a loaded machine).
            wait_for(lambda: "waiting for the ModelDeployment CRD" in op.logs(), timeout=60,
                     what="the operator waiting for the CRD")
            bare.apply_yaml(CRD_FILE.read_text())
            make_namespace(bare, "ml")
            bare.add_object(md("late", "ml"))
            wait_for(lambda: ready(bare, "ml", "late"), timeout=30, what="Ready once the CRD exists")
        finally:
            op.stop()


def _server_pod(name: str, owner: str, ns: str, state: dict, last: dict | None = None, restarts: int = 0) -> dict:
    """A server pod as the kubelet reports it (the fake API server runs no pods here)."""
    status = {"name": "model-server", "ready": "running" in state, "restartCount": restarts, "image": "x", "imageID": "",
              "state": state, "lastState": last or {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {
        "app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": owner,
        "app.kubernetes.io/managed-by": "modeldeploy", render.OWNER_LABEL: owner}},
        "spec": {"containers": [{"name": "model-server", "image": "x"}]},
        "status": {"phase": "Running", "containerStatuses": [status]}}


def test_a_crash_looping_server_is_degraded_with_its_last_message(fake: FakeKubeAPI, operator: OperatorProcess) -> None:
    """Issue: a pod that crash-loops showed only Ready=False RollingOut. Now: Degraded ContainerFailing
    with the kubelet's reason, the exit code and the last log line, status.lastFailureInfo, an Event;
    all gone once the container runs again."""
    make_namespace(fake, "ml")
    fake.add_object(md("crash", "ml"))
    wait_for(lambda: ready(fake, "ml", "crash"), what="Ready")
    message = "model-server: starting\nmodel-server: cannot open --trace_file /tmp/traces/t.jsonl: No such file or directory"
    fake.add_object(_server_pod("crash-abc", "crash", "ml", {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                                {"terminated": {"exitCode": 2, "reason": "Error", "message": message,
                                                "finishedAt": "2026-12-06T00:00:00Z"}}, restarts=3))
    obj = wait_for(lambda: (o := get_md(fake, "ml", "crash")) and condition(o, "Degraded").get("reason") == "ContainerFailing"
                   and o, what="Degraded ContainerFailing")
    assert condition(obj, "Degraded")["status"] == "True"
    assert condition(obj, "Degraded")["message"] == ("pod crash-abc, container model-server: CrashLoopBackOff (exit code 2): "
                                                     "model-server: cannot open --trace_file /tmp/traces/t.jsonl: No such file or directory")
    info = obj["status"]["lastFailureInfo"]
    assert (info["pod"], info["reason"], info["exitCode"], info["restartCount"]) == ("crash-abc", "CrashLoopBackOff", 2, 3)
    assert info["message"] == message
    wait_for(lambda: ("Warning", "ContainerFailing") in events(fake, "ml", "crash"), what="the ContainerFailing Event")
    running = _server_pod("crash-abc", "crash", "ml", {"running": {"startedAt": "2026-12-06T00:01:00Z"}},
                          {"terminated": {"exitCode": 2, "reason": "Error", "message": message}}, restarts=4)
    fake.update(fake.resources[("", "pods")], "ml", "crash-abc", {**fake.get("", "pods", "ml", "crash-abc"),
                                                                  "status": running["status"]}, subresource="status")
    obj = wait_for(lambda: (o := get_md(fake, "ml", "crash")) and condition(o, "Degraded").get("status") == "False" and o,
                   what="Degraded cleared once it runs")
    assert "lastFailureInfo" not in obj["status"]


def test_kubectl_scale_sets_the_replicas_through_the_scale_subresource(fake: FakeKubeAPI, operator: OperatorProcess,
                                                                        kubeconfig: Path) -> None:
    make_namespace(fake, "ml")
    fake.add_object(md("scaled", "ml"))
    wait_for(lambda: ready(fake, "ml", "scaled"), what="Ready")
    kubectl(kubeconfig, "scale", "-n", "ml", "md/scaled", "--replicas=3")
    assert get_md(fake, "ml", "scaled")["spec"]["replicas"] == 3
    wait_for(lambda: deployment(fake, "ml", "scaled")["spec"]["replicas"] == 3, what="the Deployment scaled")
    wait_for(lambda: (get_md(fake, "ml", "scaled") or {}).get("status", {}).get("replicas") == 3, what="status.replicas")
    scale = json.loads(kubectl(kubeconfig, "get", "-n", "ml", "md/scaled", "--subresource=scale", "-o", "json").stdout)
    assert scale["spec"]["replicas"] == 3 and scale["status"] == {
        "replicas": 3, "selector": "app.kubernetes.io/name=model-server,app.kubernetes.io/instance=scaled"}
