"""`helm install` on the local cluster (issue 26), with Helm's own SDK (helm-python-sdk: Helm 4's Go
SDK) and the chart's operator Deployment running as a pod under its enforced RBAC.

- install with default values and with each `helm/modeldeploy/ci/*-values.yaml`: the operator pod is
  Ready, and a ModelDeployment applied afterwards becomes Ready and answers through its Service;
- `helm test`: the chart's test hook (templates/tests) runs as a pod and passes;
- `helm upgrade` to a changed chart (a new value that changes the operator's pod, a CRD change
  applied first with `kubectl apply --server-side` as docs/operations.md says): the model keeps
  answering (0 failed requests under load) while the operator pod is replaced, the new operator
  reconciles a spec change, and the CRD's new column is served; `helm rollback` goes back;
- `helm uninstall`: the operator, its RBAC and ServiceAccount go; the CRD, the token key Secret
  (`helm.sh/resource-policy: keep`) and the model stay and keep serving; deleting the model then
  waits on the operator's finalizer until it is removed by hand (docs/operations.md's command).

Every request of the operator pod is made with its ServiceAccount's token and authorized by the
chart's (Cluster)Role: a denial fails the test. Releases keep their records in Secrets (Helm's
default driver). Local cluster only: the chart's images are not pulled here (the node agent runs
this checkout's `modeldeploy operator`), where a real cluster would need them pushed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from e2e_support import MD_API, ROOT, ClientThreads, Cluster, build_models, condition, wait_for
from modeldeploy.clients.kube import KubeError

pytestmark = pytest.mark.e2e
CHART = ROOT / "helm" / "modeldeploy"
RELEASE, NS = "modeldeploy", "modeldeploy-system"
CI_VALUES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture(scope="module")
def local(cluster: Cluster) -> Cluster:
    if cluster.local is None:
        pytest.skip("installs the chart whose images the local cluster does not need; on a real cluster push them first")
    return cluster


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models(tmp_path_factory.mktemp("helm-models"))


@pytest.fixture
def helm_cfg(local: Cluster) -> Iterator[helm.Config]:
    with helm.Config(kubeconfig_path=local.kubeconfig, namespace=NS) as cfg:
        yield cfg


def raw(cluster: Cluster, path: str) -> dict[str, Any] | None:
    """GET an object by its path (None if it does not exist)."""
    try:
        return cluster.kube.request("GET", path)
    except KubeError as exc:
        if exc.status == 404:
            return None
        raise


def ensure_namespace(cluster: Cluster, ns: str) -> None:
    if raw(cluster, f"/api/v1/namespaces/{ns}") is None:
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})


def model_namespace(cluster: Cluster, ns: str, models: Path) -> None:
    """A namespace with a claim `models` holding half_plus_two (the local cluster binds each claim
    to a directory of its state, which the test fills as `kubectl cp` would)."""
    ensure_namespace(cluster, ns)
    if raw(cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/models") is None:
        cluster.kube.request("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", body={"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": ns},
                             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    wait_for(lambda: (raw(cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/models") or {}).get("status", {}).get("phase") == "Bound",
             what="the claim to be bound")
    assert cluster.local is not None
    target = Path(cluster.local["kubeconfig"]).parent / "volumes" / "pvc" / ns / "models" / "half_plus_two"
    if not target.exists():
        shutil.copytree(models / "half_plus_two", target)


def model(name: str, ns: str) -> dict[str, Any]:
    return {"apiVersion": MD_API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"model": {"name": "half_plus_two", "storage": {"pvc": {"claimName": "models", "subPath": "half_plus_two"}}},
                     "resources": {"cpu": "100m", "memory": "512Mi"}, "warmup": {"enabled": False}}}


def operator_pods(cluster: Cluster, ns: str = NS) -> list[dict[str, Any]]:
    out = cluster.kube.request("GET", f"/api/v1/namespaces/{ns}/pods", query={"labelSelector": "app.kubernetes.io/component=operator"})
    return [p for p in out.get("items", []) if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def operator_ready(cluster: Cluster, ns: str = NS) -> dict[str, Any] | None:
    pods = operator_pods(cluster, ns)
    return pods[0] if len(pods) == 1 and ready(pods[0]) else None


def model_ready(cluster: Cluster, ns: str, name: str) -> bool:
    md = cluster.md(ns, name)
    return bool(md) and condition(md, "Ready").get("status") == "True" and md["status"].get("observedGeneration") == md["metadata"]["generation"]


def api_log(cluster: Cluster) -> Path:
    assert cluster.local is not None
    return Path(cluster.local["logs"]) / "localcluster.log"


def denials(cluster: Cluster, since: int) -> list[str]:
    """What the API server refused since the log had `since` bytes: it logs every 401 and 403 (only
    pods' ServiceAccount tokens can be refused: the tests' own kubeconfig is the admin's)."""
    with api_log(cluster).open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if "localcluster.api" in line and (" 403 " in line or " 401 " in line)]


def operator_log(cluster: Cluster, ns: str = NS) -> str:
    p = cluster.kubectl("-n", ns, "logs", "-l", "app.kubernetes.io/component=operator", "--tail=60", check=False)
    return p.stdout + p.stderr


def answers(cluster: Cluster, ns: str, name: str) -> bool:
    return cluster.predict(ns, name, "half_plus_two", [1.0, 2.0, 5.0]) == [2.5, 3.0, 4.5]


def install_and_serve(cluster: Cluster, cfg: helm.Config, values: dict[str, Any], model_ns: str, models: Path,
                      chart: Path = CHART) -> dict[str, Any]:
    """helm install; the operator pod Ready; a ModelDeployment Ready and answering; nothing denied."""
    since = api_log(cluster).stat().st_size
    release = cfg.install(str(chart), RELEASE, values, namespace=NS, create_namespace=True, timeout=180, wait="watcher")
    assert release["status"] == "deployed"
    try:
        wait_for(lambda: operator_ready(cluster), 120, "the operator pod Ready")
        model_namespace(cluster, model_ns, models)
        cluster.create(model("half-plus-two", model_ns))
        wait_for(lambda: model_ready(cluster, model_ns, "half-plus-two"), 180, "the ModelDeployment Ready")
        wait_for(lambda: answers(cluster, model_ns, "half-plus-two"), 60, "an answer through its Service")
        assert not denials(cluster, since), denials(cluster, since)
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- operator log ---\n{operator_log(cluster)}") from None
    return dict(release)


def remove(cluster: Cluster, cfg: helm.Config, model_ns: str) -> None:
    """Delete the model while the operator runs (its finalizer goes), then the release."""
    cluster.delete(MD_API, "ModelDeployment", model_ns, "half-plus-two")
    wait_for(lambda: cluster.md(model_ns, "half-plus-two") is None, 60, "the ModelDeployment to go")
    cfg.uninstall(RELEASE, timeout=120, wait="watcher")
    wait_for(lambda: not operator_pods(cluster), 60, "the operator pod to go")


class Predictions(ClientThreads):
    def __init__(self, cluster: Cluster, ns: str):
        super().__init__(2, join_timeout=30)
        self.cluster, self.ns = cluster, ns

    def request(self, i: int, conn: Any) -> None:
        assert self.cluster.predict(self.ns, "half-plus-two", "half_plus_two", [1.0, 2.0], timeout=10) == [2.5, 3.0]
        time.sleep(0.02)


def changed_chart(tmp: Path) -> Path:
    """The chart with a new value (an annotation on the operator's pod: it rolls) and a CRD change
    (a new printer column, GENERATION)."""
    chart = tmp / "modeldeploy"
    shutil.copytree(CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["operator"]["rolloutTag"] = "v2"
    (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    schema = json.loads((chart / "values.schema.json").read_text())
    schema["properties"]["operator"]["properties"]["rolloutTag"] = {"type": "string"}
    (chart / "values.schema.json").write_text(json.dumps(schema, indent=2))
    dep = (chart / "templates" / "deployment.yaml").read_text()
    dep = dep.replace("    metadata:\n      labels:\n", "    metadata:\n      annotations:\n        example.com/rollout-tag: "
                      "{{ .Values.operator.rolloutTag | quote }}\n      labels:\n", 1)
    (chart / "templates" / "deployment.yaml").write_text(dep)
    (crd_file,) = (chart / "crds").glob("*.yaml")
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0].setdefault("additionalPrinterColumns", []).append(
        {"name": "Generation", "type": "integer", "jsonPath": ".metadata.generation"})
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def test_install_test_upgrade_rollback_uninstall(local: Cluster, helm_cfg: helm.Config, models: Path, tmp_path: Path) -> None:
    ml = "helm-ml"
    since = api_log(local).stat().st_size
    install_and_serve(local, helm_cfg, {}, ml, models)
    first = operator_ready(local)
    assert first is not None
    assert first["spec"]["serviceAccountName"] == RELEASE

    # helm test: the chart's hook pod asks the operator's health and metrics ports.
    result = helm_cfg.test(RELEASE, timeout=180)
    assert result["release"]["status"] == "deployed"
    assert raw(local, f"/api/v1/namespaces/{NS}/pods/{RELEASE}-test") is None  # hook-succeeded: removed

    # helm upgrade to a changed chart, under load: the CRD first (Helm never upgrades CRDs).
    chart = changed_chart(tmp_path)
    local.kubectl("apply", "--server-side", "-f", str(chart / "crds"))
    with Predictions(local, ml) as load:
        wait_for(lambda: load.ok > 20, 60, "requests answered before the upgrade")
        release = helm_cfg.upgrade(str(chart), RELEASE, namespace=NS, timeout=180, wait="watcher")
        assert release["revision"] == 2
        second = wait_for(lambda: (p := operator_ready(local)) and p["metadata"]["uid"] != first["metadata"]["uid"] and p,
                          120, "a new operator pod Ready")
        assert second["metadata"]["annotations"]["example.com/rollout-tag"] == "v2"
        local.patch_spec(ml, "half-plus-two", {"versionLabels": {"stable": 123}})
        wait_for(lambda: model_ready(local, ml, "half-plus-two"), 120, "the model reconciled by the new operator")
        before = load.ok
        wait_for(lambda: load.ok > before + 20, 60, "requests answered after the upgrade")
    assert load.ok and not load.failures, load.failures[:5]
    assert "GENERATION" in local.kubectl("-n", ml, "get", "md", "half-plus-two").stdout  # the CRD change is served
    assert not denials(local, since), denials(local, since)

    # helm rollback: revision 3 is the first chart again.
    helm_cfg.rollback(RELEASE, version=1, timeout=180, wait="watcher")
    third = wait_for(lambda: (p := operator_ready(local)) and p["metadata"]["uid"] != second["metadata"]["uid"] and p,
                     120, "the operator pod of revision 1's chart")
    assert "example.com/rollout-tag" not in (third["metadata"].get("annotations") or {})
    assert helm_cfg.status(RELEASE)["revision"] == 3

    # helm uninstall: what docs/operations.md says.
    helm_cfg.uninstall(RELEASE, timeout=120, wait="watcher")
    wait_for(lambda: not operator_pods(local), 60, "the operator pod to go")
    assert local.get("apps/v1", "Deployment", NS, RELEASE) is None
    assert raw(local, f"/api/v1/namespaces/{NS}/serviceaccounts/{RELEASE}") is None
    assert raw(local, f"/apis/{RBAC}/v1/clusterroles/{RELEASE}") is None
    assert raw(local, f"/api/v1/namespaces/{NS}/secrets/{RELEASE}-token-key") is not None  # helm.sh/resource-policy: keep
    local.kubectl("get", "crd", "modeldeployments.serving.modeldeploy.io")
    assert answers(local, ml, "half-plus-two")  # the model keeps serving, unreconciled
    # Deleting it now waits on the finalizer; the docs' patch removes it, and its children go.
    local.kubectl("-n", ml, "delete", "md", "half-plus-two", "--wait=false")
    md = local.md(ml, "half-plus-two")
    assert md is not None and md["metadata"]["deletionTimestamp"]
    local.kubectl("-n", ml, "patch", "md", "half-plus-two", "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    wait_for(lambda: local.md(ml, "half-plus-two") is None, 60, "the ModelDeployment to go")
    wait_for(lambda: local.get("apps/v1", "Deployment", ml, "half-plus-two") is None, 60, "its Deployment to be collected")


MONITORING_CRDS = {"servicemonitors": "ServiceMonitor", "podmonitors": "PodMonitor", "prometheusrules": "PrometheusRule"}


def preconditions(cluster: Cluster, name: str) -> str:
    """What a values file needs first (as its comments say); the namespace the test's model lives in."""
    values = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    if ((values.get("operator") or {}).get("tokenKey") or {}).get("existingSecret"):
        ensure_namespace(cluster, NS)
        if raw(cluster, f"/api/v1/namespaces/{NS}/secrets/{values['operator']['tokenKey']['existingSecret']}") is None:
            cluster.kube.request("POST", f"/api/v1/namespaces/{NS}/secrets", body={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": values["operator"]["tokenKey"]["existingSecret"], "namespace": NS},
                            "stringData": {"key": "an-existing-key-of-at-least-16-bytes"}})
    if any((values.get("monitoring") or {}).get(k, {}).get("enabled") for k in ("serviceMonitor", "podMonitor", "prometheusRule")):
        for plural, kind in MONITORING_CRDS.items():  # the Prometheus Operator's CRDs, their schemas left open
            name_ = f"{plural}.monitoring.coreos.com"
            if raw(cluster, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name_}") is None:
                crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": name_},
                       "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                                "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                                "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
                cluster.kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd)
    for ns in ((values.get("monitoring") or {}).get("grafanaDashboard") or {}).get("namespace"), \
              ((values.get("monitoring") or {}).get("prometheusAdapter") or {}).get("namespace"):
        if ns:
            ensure_namespace(cluster, ns)
    watched = (values.get("scope") or {}).get("watchNamespaces") or []
    for ns in watched:
        ensure_namespace(cluster, ns)
    return watched[0] if watched else "helm-ci"


@pytest.mark.parametrize("name", CI_VALUES)
def test_install_with_each_ci_values_file(local: Cluster, helm_cfg: helm.Config, models: Path, name: str) -> None:
    values = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    if ((values.get("operator") or {}).get("hostPath") or {}).get("allowed") is False:
        pytest.fail(f"{name} turns hostPath off; the test's model lives on a claim and needs nothing else")
    ml = preconditions(local, name)
    install_and_serve(local, helm_cfg, values, ml, models)
    try:
        result = helm_cfg.test(RELEASE, timeout=180)
        assert result["release"]["status"] == "deployed"
    finally:
        remove(local, helm_cfg, ml)
