"""How a pod becomes a local process (localcluster.podspec, .probes, .podstatus): table-driven, and
on the operator's own rendering of a ModelDeployment's pod."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from localcluster import podspec, podstatus, probes
from localcluster.podspec import Mount, PlanError
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import render

MOUNTS = [Mount("/config", "/state/pod/volumes/config", True), Mount("/models/m", "/data/m", True), Mount("/tmp", "/state/pod/volumes/tmp")]


@pytest.mark.parametrize(("text", "expected"), [
    ("--model_config_file=/config/models.config", "--model_config_file=/state/pod/volumes/config/models.config"),
    ('base_path: "/models/m"', 'base_path: "/data/m"'),
    ("/models/m/1/saved_model.pb", "/data/m/1/saved_model.pb"),
    ("/models/mm", "/models/mm"),            # not a whole path prefix
    ("/tmpfile /tmp", "/tmpfile /state/pod/volumes/tmp"),
    ("/x/config", "/x/config"),              # a mount path inside another path
    ("--a=/config,/tmp", "--a=/state/pod/volumes/config,/state/pod/volumes/tmp"),
    ("nothing here", "nothing here"),
])
def test_translate_paths(text: str, expected: str) -> None:
    assert podspec.translate_paths(text, MOUNTS) == expected


@pytest.mark.parametrize(("args", "expected"), [
    (["--port=8500", "--rest_api_port=8501"], ["--port=41000", "--rest_api_port=41001"]),
    (["--port", "8500"], ["--port", "8500"]),        # only --flag=N is rewritten
    (["--workers=8501x", "--n=7"], ["--workers=8501x", "--n=7"]),
    (["-p=8500"], ["-p=41000"]),
])
def test_rewrite_ports(args: list[str], expected: list[str]) -> None:
    assert podspec.rewrite_ports(args, {8500: 41000, 8501: 41001}) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("$(A)-$(B)", "1-$(B)"), ("$$(A)", "$(A)"), ("$A", "$A"),
])
def test_expand_refs(text: str, expected: str) -> None:
    assert podspec.expand_refs(text, {"A": "1"}) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/models/half_plus_two", "/home/u/demo_models/half_plus_two"), ("/models", "/home/u/demo_models"),
    ("/modelsx", "/modelsx"), ("/srv/data", "/srv/data"),
])
def test_node_mounts(path: str, expected: str) -> None:
    assert podspec.node_path(path, [("/models", "/home/u/demo_models")]) == expected


def test_volumes_and_mounts() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"volumes": [
        {"name": "e", "emptyDir": {}}, {"name": "c", "configMap": {"name": "cm", "items": [{"key": "k", "path": "f"}]}},
        {"name": "s", "secret": {"secretName": "sec"}}, {"name": "h", "hostPath": {"path": "/models/x", "type": "Directory"}},
        {"name": "v", "persistentVolumeClaim": {"claimName": "claim"}}]}}
    vols = podspec.volumes_of(pod, "/pods/p", "/pvc", [("/models", "/local")])
    assert {n: (v.kind, v.path, v.source) for n, v in vols.items()} == {
        "e": ("emptyDir", "/pods/p/volumes/e", ""), "c": ("configMap", "/pods/p/volumes/c", "cm"),
        "s": ("secret", "/pods/p/volumes/s", "sec"), "h": ("hostPath", "/local/x", ""),
        "v": ("persistentVolumeClaim", "/pvc/ns/claim", "claim")}
    assert vols["c"].items == (("k", "f"),)
    container = {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/data", "subPath": "m1"}, {"name": "e", "mountPath": "/tmp/"}]}
    assert podspec.mounts_of(container, vols) == [Mount("/data", "/pvc/ns/claim/m1"), Mount("/tmp", "/pods/p/volumes/e")]
    with pytest.raises(PlanError, match='no such volume'):
        podspec.mounts_of({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, vols)
    with pytest.raises(PlanError, match="image volumes are not supported"):
        podspec.volumes_of({"metadata": {}, "spec": {"volumes": [{"name": "m", "image": {"reference": "x"}}]}}, "/p", "/pvc", [])


def rendered_pod() -> tuple[dict, dict]:
    spec = api.ModelDeploymentSpec.model_validate({"model": {"name": "hp2", "storage": {"hostPath": {"path": "/models/hp2"}}},
                                                   "batching": {"maxBatchSize": 8}})
    children = render.render_all(spec, render.Owner("hp2", "ml", "uid-1"))
    deployment = next(c for c in children if c["kind"] == "Deployment")
    pod = {"metadata": {"name": "hp2-abc-x", "namespace": "ml", "uid": "u"}, "spec": deployment["spec"]["template"]["spec"]}
    return pod, next(c for c in children if c["kind"] == "ConfigMap")


def test_the_operators_pod_becomes_a_loopback_model_server() -> None:
    pod, _ = rendered_pod()
    container = pod["spec"]["containers"][0]
    vols = podspec.volumes_of(pod, "/pods/x", "/pvc", [("/models", "/repo/demo_models")])
    mounts = podspec.mounts_of(container, vols)
    ports = {8500: 41000, 8501: 41001}
    venv_bin = str(Path(sys.executable).parent)
    plan = podspec.plan_process(pod, container, mounts, ports, [venv_bin], {"PATH": venv_bin}, lambda *a: None, "/pods/x")
    assert plan.argv[0] == f"{venv_bin}/model-server"  # this checkout's model-server is the image
    assert "--port=41000" in plan.argv and "--rest_api_port=41001" in plan.argv
    assert plan.argv[-1] == "--bind_address=127.0.0.1"
    assert "--model_config_file=/pods/x/volumes/config/models.config" in plan.argv
    assert "--batching_parameters_file=/pods/x/volumes/config/batching.config" in plan.argv
    assert plan.env["HOME"] == "/pods/x/volumes/tmp" and plan.env["HOSTNAME"] == "hp2-abc-x"
    assert plan.cwd == "/pods/x"


def test_projected_config_points_at_the_node_mount() -> None:
    pod, configmap = rendered_pod()
    container = pod["spec"]["containers"][0]
    mounts = podspec.mounts_of(container, podspec.volumes_of(pod, "/pods/x", "/pvc", [("/models", "/repo/demo_models")]))
    files = podspec.projected_files(configmap["data"], {}, (), mounts)
    assert b'base_path: "/repo/demo_models/hp2"' in files["models.config"]
    assert set(files) == {"models.config", "routing.json", "batching.config", "monitoring.config"}


@pytest.mark.parametrize("image", ["ghcr.io/modeldeploy/operator:0.1.0", "modeldeploy/operator:latest",
                                   "registry.example.com:5000/ml/modeldeploy-operator@sha256:abc"])
def test_the_charts_operator_container_runs_the_images_entrypoint_on_loopback(image: str) -> None:
    """The chart's operator Deployment gives args only: the image's ENTRYPOINT (operator/Dockerfile)
    is `modeldeploy operator`; its ports become host ports and it binds loopback."""
    from chart_support import objects, one

    dep = one(objects({}), "Deployment")
    container = {**dep["spec"]["template"]["spec"]["containers"][0], "image": image}
    pod = {"metadata": {"name": "op", "namespace": "modeldeploy-system", "uid": "u"}, "spec": dep["spec"]["template"]["spec"]}
    venv_bin = str(Path(sys.executable).parent)
    plan = podspec.plan_process(pod, container, [], {8080: 41080, 8081: 41081}, [venv_bin], {}, lambda *a: None, "/pods/op")
    assert plan.argv[:2] == [f"{venv_bin}/modeldeploy", "operator"]
    assert "--metrics-port=41080" in plan.argv and "--health-port=41081" in plan.argv
    assert plan.argv[-1] == "--bind=127.0.0.1"
    assert plan.env["POD_NAMESPACE"] == "modeldeploy-system"
    extra = {**container, "args": [*container["args"], "--bind=0.0.0.0", "--bind", "0.0.0.0"]}  # the chart's extraArgs
    argv = podspec.plan_process(pod, extra, [], {8080: 41080, 8081: 41081}, [venv_bin], {}, lambda *a: None, "/p").argv
    assert [a for a in argv if "0.0.0.0" in a or a.startswith("--bind")] == ["--bind=127.0.0.1"]
    other = {"name": "c", "image": "modeldeploy/operator:1", "command": ["modeldeploy", "promote"]}
    assert "--bind=127.0.0.1" not in podspec.plan_process(pod, other, [], {}, [venv_bin], {}, lambda *a: None, "/p").argv


def test_a_missing_command_or_executable_is_a_clear_error() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {}}
    with pytest.raises(PlanError, match="has no command"):
        podspec.plan_process(pod, {"name": "c", "image": "nginx"}, [], {}, [], {}, lambda *a: None, "/p")
    with pytest.raises(PlanError, match='"no-such-binary-here" not found'):
        podspec.plan_process(pod, {"name": "c", "command": ["no-such-binary-here"]}, [], {}, ["/nonexistent"], {}, lambda *a: None, "/p")


def test_env_from_config_maps_secrets_and_fields() -> None:
    data = {("configMap", "cm"): {"A": "1"}, ("secret", "s"): {"TOKEN": "t"}}
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"nodeName": "local"}}
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}], "env": [
        {"name": "B", "value": "$(CM_A)-b"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}},
        {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "missing", "optional": True}}}]}
    env = podspec.env_of(pod, container, lambda kind, ns, name: data.get((kind, name)), "127.0.0.1")
    assert env == {"CM_A": "1", "B": "1-b", "POD": "p", "T": "t"}
    container["env"].append({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "missing"}}})
    with pytest.raises(PlanError, match='has no key "missing"'):
        podspec.env_of(pod, container, lambda kind, ns, name: data.get((kind, name)), "127.0.0.1")


def test_probes_of_the_rendered_pod_use_the_host_ports() -> None:
    pod, _ = rendered_pod()
    c = pod["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    readiness = probes.parse_probe(c["readinessProbe"], named, {8501: 41001})
    assert readiness == probes.Probe("http", 41001, "/v1/health/ready", period=2, timeout=2, failure_threshold=2)
    assert probes.parse_probe({"tcpSocket": {"port": 8500}}, named, {8500: 41000}).port == 41000  # type: ignore[union-attr]
    assert probes.parse_probe(None, named, {}) is None
    with pytest.raises(ValueError, match="names no container port"):
        probes.parse_probe({"httpGet": {"port": "nope"}}, named, {})


@pytest.mark.parametrize(("success", "failure", "results", "flips"), [
    (1, 3, [True], [True]),
    (1, 3, [False, False, False, True], [None, None, False, True]),
    (2, 1, [True, True, False, True, True], [None, True, False, None, True]),
    (1, 2, [True, False, True, False, False], [True, None, None, None, False]),
])
def test_probe_thresholds(success: int, failure: int, results: list[bool], flips: list[bool | None]) -> None:
    counter = probes.ProbeCounter(success, failure)
    assert [counter.record(r) for r in results] == flips


@pytest.mark.parametrize(("crashes", "delay"), [(0, 0), (1, 0), (2, 10), (3, 20), (4, 40), (7, 300), (50, 300)])
def test_crash_loop_back_off(crashes: int, delay: float) -> None:
    assert podstatus.restart_delay(crashes, 10) == delay


def test_pod_status_and_scheduling() -> None:
    running = {"name": "c", "state": {"running": {"startedAt": "t"}}, "ready": True, "restartCount": 0}
    status = podstatus.pod_status({}, [running], "t0", "2026-01-01T00:00:00Z")
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert status["phase"] == "Running" and conds == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    waiting = {"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}, "ready": False, "restartCount": 0}
    status = podstatus.pod_status(status, [waiting], "t0", "2026-01-01T00:00:05Z")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Pending" and ready["status"] == "False" and ready["lastTransitionTime"] == "2026-01-01T00:00:05Z"
    gpu = {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}}}]}}
    assert podstatus.unschedulable(gpu) == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    assert podstatus.unschedulable({"spec": {"containers": [{"resources": {"requests": {"cpu": "1"}}}]}}) is None
