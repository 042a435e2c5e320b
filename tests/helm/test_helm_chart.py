"""The chart lints clean, renders, and every object it renders is valid Kubernetes (strict schemas),
with the default values, the full and namespaced sets, and every values file of its ci/ folder
(chart-testing's convention: one per optional feature)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
from chart_support import (
    CHART,
    CI_VALUES,
    FULL_VALUES,
    NAMESPACE,
    NAMESPACED_VALUES,
    RELEASE,
    by_kind,
    objects,
    one,
    operator_deployment,
    render,
)
from monitoring_schemas import SCHEMAS

# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
VALUE_SETS = {"default": {}, "full": FULL_VALUES, "namespaced": NAMESPACED_VALUES,
              **{f"ci/{name}": values for name, values in CI_VALUES.items()}}


def test_the_ci_folder_has_a_values_file_per_optional_feature() -> None:
    assert set(CI_VALUES) >= {"full-values.yaml", "namespaced-values.yaml", "hostpath-values.yaml",
                              "monitoring-values.yaml", "restricted-prometheus-values.yaml",
                              "existing-token-key-values.yaml"}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_strict_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_valid(name: str, kube_version: str) -> None:
    objs = objects(VALUE_SETS[name])
    assert objs
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # Not in kubernetes-validate's schemas: prometheus-operator's custom resources.
            jsonschema.validate(obj, SCHEMAS[obj["kind"]])
        else:
            try:
                kubernetes_validate.validate(obj, kube_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {e.message}")


def test_default_values_render_only_the_core(default_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in default_objects)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Secret",  # the admin-token key
        "ServiceAccount",
    ]


def test_full_values_render_every_option(full_objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in full_objects}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Service", "ConfigMap"} <= kinds
    cms = {o["metadata"]["name"]: o for o in by_kind(full_objects, "ConfigMap")}
    assert set(cms) == {f"{RELEASE}-modeldeploy-dashboard", f"{RELEASE}-modeldeploy-prometheus-adapter"}
    assert all(cm["metadata"]["namespace"] == "monitoring" for cm in cms.values())
    dep = one(full_objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "modeldeploy-operator"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["image"] == "registry.example.com/ml/modeldeploy-operator:0.1.0-rc1"
    assert pod["containers"][0]["args"] == [
        "--server-image=registry.example.com/ml/model-server:0.1.0-rc1",
        "--resync-seconds=30",
        "--prometheus-url=http://prometheus-operated.monitoring.svc:9090",
        "--prometheus-url-prefix=http://prometheus-operated.monitoring.svc:9090",
        "--prometheus-url-prefix=https://prometheus.team-a.example.com/",
        "--host-path-prefix=/models",
        "--host-path-prefix=/mnt/shared-models",
        "--token-key-file=/var/run/modeldeploy/token-key/key",
        "--model-status-url=http://{name}.{namespace}.svc.cluster.local:8501",
        "--health-port=8081",
        "--metrics-port=8080",
        "--verbose",
        "--bind=0.0.0.0",
    ]


def test_namespaced_objects_live_in_the_release_namespace(full_objects: list[dict[str, Any]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    for o in full_objects:
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"]
        elif o["kind"] != "ConfigMap":
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_pod_meets_the_restricted_pod_security_standard(name: str) -> None:
    for dep in by_kind(objects(VALUE_SETS[name]), "Deployment"):  # the operator's, and the activator's when enabled
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
        _restricted(dep["spec"]["template"]["spec"])


def _restricted(pod: dict) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        assert sc["readOnlyRootFilesystem"] is True
        assert "privileged" not in sc
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        assert c["livenessProbe"] and c["readinessProbe"]
    for v in pod.get("volumes", []):
        assert "hostPath" not in v


def test_release_namespace_and_names_follow_the_release() -> None:
    objs = objects({}, namespace="ml-platform")
    dep = one(objs, "Deployment")
    assert dep["metadata"]["namespace"] == "ml-platform"
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-modeldeploy", "namespace": "ml-platform"}
    ]


def test_notes_tell_the_user_what_to_do_next() -> None:
    notes = render({})["modeldeploy/templates/NOTES.txt"]
    for needle in (
        "rollout status deployment/md-modeldeploy",
        "kind: ModelDeployment",
        ":predict",
        "describe md my-model",
    ):
        assert needle in notes
    namespaced = render(NAMESPACED_VALUES)["modeldeploy/templates/NOTES.txt"]
    assert "team-a,team-b" in namespaced and "no cluster-scoped RBAC" in namespaced
    # every command of the example works in one namespace the operator watches
    for text, ns in ((notes, "default"), (namespaced, "team-a")):
        commands = [line for line in text.splitlines() if "kubectl" in line and ("my-model" in line or "kubectl apply -n" in line)]
        assert len(commands) == 4 and all(f"-n {ns} " in c for c in commands), commands


def test_packaged_chart_renders_the_same(tmp_path: Path) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.render(FULL_VALUES, name=RELEASE, namespace=NAMESPACE) == render(FULL_VALUES)
        assert {f["name"] for f in packaged.files} >= {"files/dashboards/modeldeploy-models.json"}
        assert len(packaged.crds) == 1


def test_model_status_probe_can_be_turned_off() -> None:
    (container,) = one(objects({"operator": {"modelStatus": {"enabled": False}}}), "Deployment")["spec"][
        "template"
    ]["spec"]["containers"]
    assert "--model-status-url=" in container["args"]
    (container,) = one(objects({}), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not any(a.startswith("--model-status-url") for a in container["args"])  # the operator's default


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_accepts_every_argument_the_chart_passes(name: str) -> None:
    """The rendered args parse with `modeldeploy operator`'s own argument parser."""
    import argparse

    from modeldeploy.cli import operator as operator_main

    parser = argparse.ArgumentParser(exit_on_error=False)
    operator_main.add_arguments(parser)
    (container,) = operator_deployment(objects(VALUE_SETS[name]))["spec"]["template"]["spec"]["containers"]
    args = parser.parse_args(container["args"])
    assert (
        container["livenessProbe"]["httpGet"]["port"]
        == container["readinessProbe"]["httpGet"]["port"]
        == "health"
    )
    assert any(p["name"] == "health" and p["containerPort"] == args.health_port for p in container["ports"])
    assert any(p["name"] == "metrics" and p["containerPort"] == args.metrics_port for p in container["ports"])
    values = VALUE_SETS[name]
    assert args.namespace == (values["scope"]["watchNamespaces"] if values.get("scope", {}).get("mode") == "namespaced" else [])
    host_path = values.get("operator", {}).get("hostPath", {})
    assert args.allow_host_path is bool(host_path.get("allowed")) and args.host_path_prefix == host_path.get("prefixes", [])
    assert args.prometheus_url_prefix == values.get("operator", {}).get("allowedPrometheusUrls", [])


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_the_token_key_is_a_mounted_file(name: str) -> None:
    """The operator reads the admin-token key from a file the kubelet mounts: its RBAC reads no Secret."""
    objs = objects(VALUE_SETS[name])
    pod = operator_deployment(objs)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "token-key")
    assert mount["readOnly"] is True and f"--token-key-file={mount['mountPath']}/key" in container["args"]
    volume = next(v for v in pod["volumes"] if v["name"] == "token-key")["secret"]
    existing = VALUE_SETS[name].get("operator", {}).get("tokenKey", {}).get("existingSecret")
    made = [o for o in by_kind(objs, "Secret") if o["metadata"]["name"] == volume["secretName"]]
    if existing:
        assert volume["secretName"] == existing and not made
    else:
        (secret,) = made
        assert secret["metadata"]["namespace"] == NAMESPACE and len(secret["data"]["key"]) >= 64
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
