"""The pure renderers, case by case; every manifest passes kubernetes-validate --strict and the
server config files parse with TF Serving's own protos."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import render, serverconfig
from tensorflow_serving.config import model_server_config_pb2

OWNER = render.Owner(name="clf", namespace="ml", uid="0b7c5a52-5f2e-4bb4-a2a5-3b7d1c0f0c11")
K8S_VERSIONS = ["1.30", "1.33"]  # 1.30: the oldest with the preStop sleep action (README); image volumes 1.31+


def spec(**kw: Any) -> api.ModelDeploymentSpec:
    body: dict[str, Any] = {"model": {"storage": {"pvc": {"claimName": "models", "subPath": "clf"}}}}
    body.update(kw)
    return api.ModelDeploymentSpec.model_validate(body)


def kinds(objs: list[dict]) -> dict[str, dict]:
    """By kind; the admin Service (headless, `<name>-admin`) as "AdminService"."""
    return {("AdminService" if o["metadata"]["name"].endswith("-admin") else o["kind"]): o for o in objs}


def _proto_class(name: str, fields: list[tuple[str, int, int, str | None]]) -> Any:
    """A message class from a descriptor mirroring TF Serving's .proto (these are not shipped in
    tensorflow-serving-api): (field name, number, type, message type or None), repeated if type<0."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"{name}.proto", package="tensorflow.serving", syntax="proto3")
    fdp.dependency.append("google/protobuf/wrappers.proto")
    msg = fdp.message_type.add(name=name)
    for fname, number, ftype, tname in fields:
        f = msg.field.add(name=fname, number=number, type=abs(ftype))
        f.label = f.LABEL_REPEATED if ftype < 0 else f.LABEL_OPTIONAL
        if tname:
            f.type_name = tname
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


T = descriptor_pb2.FieldDescriptorProto
BatchingParameters = _proto_class(  # tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    "BatchingParameters",
    [
        ("max_batch_size", 1, T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, T.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, -T.TYPE_INT64, None),
        ("pad_variable_length_inputs", 7, T.TYPE_BOOL, None),
        ("enable_large_batch_splitting", 8, T.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, T.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ],
)
PrometheusConfig = _proto_class("PrometheusConfig", [("enable", 1, T.TYPE_BOOL, None), ("path", 2, T.TYPE_STRING, None)])


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


# --- server config files -------------------------------------------------------------------------------


def test_models_config_latest_policy_by_default() -> None:
    cfg = parse_models_config(serverconfig.models_config(spec(), "clf"))
    (model,) = cfg.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("clf", "/models/clf", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1
    assert dict(model.version_labels) == {}


def test_models_config_specific_versions_and_labels() -> None:
    s = spec(model={"name": "ranker", "storage": {"hostPath": {"path": "/m"}}, "versions": [4, 3]},
             versionLabels={"stable": 3, "canary": 4})
    cfg = parse_models_config(serverconfig.models_config(s, "ranker"))
    (model,) = cfg.model_config_list.config
    assert list(model.model_version_policy.specific.versions) == [3, 4]
    # labels live in routing.json (the server's routing table), not in TF Serving's file
    assert dict(model.version_labels) == {}
    widened = parse_models_config(serverconfig.models_config(s, "ranker", versions=(2, 3, 4)))
    assert list(widened.model_config_list.config[0].model_version_policy.specific.versions) == [2, 3, 4]


def test_routing_json_carries_labels_and_the_split_in_the_servers_format() -> None:
    import json

    from modelserver.core.routing import parse_table

    s = spec(model={"name": "ranker", "storage": {"hostPath": {"path": "/m"}}, "versions": [3, 4]},
             versionLabels={"stable": 3, "canary": 4}, traffic={"canary": 10})
    cm = kinds(render.render_all(s, OWNER))["ConfigMap"]
    doc = json.loads(cm["data"]["routing.json"])
    table = parse_table(doc)  # the server's own parser accepts it
    route = table.models["ranker"]
    assert dict(route.labels) == {"stable": 3, "canary": 4} and route.weights == (("stable", 90), ("canary", 10))


def test_text_proto_quoting_survives_odd_characters() -> None:
    odd = 'a"b\\c\n\x01é'
    parsed = text_format.Parse(f"name: {serverconfig.quote(odd)}", model_server_config_pb2.ModelConfig())
    assert parsed.name == odd


def test_batching_config_parses_as_batching_parameters() -> None:
    b = api.Batching(max_batch_size=32, batch_timeout_micros=1500, num_batch_threads=3, max_enqueued_batches=50,
                     allowed_batch_sizes=[4, 8, 16], pad_variable_length_inputs=True,
                     enable_large_batch_splitting=True, max_execution_batch_size=16)
    msg = text_format.Parse(serverconfig.batching_config(b), BatchingParameters())
    assert msg.max_batch_size.value == 32 and msg.batch_timeout_micros.value == 1500
    assert msg.num_batch_threads.value == 3 and msg.max_enqueued_batches.value == 50
    assert list(msg.allowed_batch_sizes) == [4, 8, 16] and msg.pad_variable_length_inputs
    assert msg.enable_large_batch_splitting.value and msg.max_execution_batch_size.value == 16


@pytest.mark.parametrize("batching", [
    {},
    {"allowed_batch_sizes": [8, 16, 32]},
    {"max_batch_size": 64, "allowed_batch_sizes": [4, 16], "enable_large_batch_splitting": True,
     "max_execution_batch_size": 16},
    {"max_batch_size": 8, "max_execution_batch_size": 8},
])
def test_every_batching_spec_the_operator_accepts_the_server_accepts(batching: dict[str, object]) -> None:
    """The operator's rules and the server's must agree, or an accepted spec crash-loops its pods."""
    from modelserver.batching.options import parse_batching_parameters

    b = api.Batching(**batching)  # type: ignore[arg-type]
    options = parse_batching_parameters(serverconfig.batching_config(b))
    assert options.max_batch_size == b.max_batch_size


def test_monitoring_config_enables_prometheus_on_the_documented_path() -> None:
    text = serverconfig.monitoring_config()
    inner = text.split("{", 1)[1].rsplit("}", 1)[0]
    msg = text_format.Parse(inner, PrometheusConfig())
    assert text.startswith("prometheus_config {") and msg.enable and msg.path == "/monitoring/prometheus/metrics"


def test_server_args_follow_the_spec() -> None:
    plain = serverconfig.server_args(spec(warmup={"enabled": False}))
    assert "--enable_model_warmup=false" in plain and not any(a.startswith("--enable_batching") for a in plain)
    assert "--model_config_file=/config/models.config" in plain and "--port=8500" in plain and "--rest_api_port=8501" in plain
    full = serverconfig.server_args(spec(batching={}, warmup={"requestIterations": 3}, server={"configPollSeconds": 2, "extraArgs": ["--rest_api_timeout_in_ms=5000"]}))
    assert "--enable_batching=true" in full and "--batching_parameters_file=/config/batching.config" in full
    assert "--num_request_iterations_for_warmup=3" in full and "--model_config_file_poll_wait_seconds=2" in full
    assert full[-1] == "--rest_api_timeout_in_ms=5000"


@pytest.mark.parametrize(("server", "profiler", "reload"), [
    ({}, False, False),  # the gRPC port is every client's: neither unless asked
    ({"enableProfiler": True}, True, False),
    ({"enableReloadConfigRpc": True}, False, True),
])
def test_the_profiler_and_the_reload_rpc_are_off_unless_the_spec_asks(server: dict, profiler: bool, reload: bool) -> None:
    from modelserver.config.flags import parse_args

    flags = parse_args(serverconfig.server_args(spec(server=server))).values
    assert flags["enable_profiler"] is profiler and flags["enable_reload_config_rpc"] is reload


@pytest.mark.parametrize(("workers", "flag"), [(None, None), (2, "2"), ("3", "3"), ("auto", "auto")])
def test_front_end_workers_from_the_spec(workers: int | str | None, flag: str | None) -> None:
    from modelserver.config.flags import parse_args

    rendered = serverconfig.server_args(spec(server={} if workers is None else {"frontendWorkers": workers}))
    assert parse_args(rendered).values["frontend_workers"] == (flag or "1")  # unset: the server's default
    assert serverconfig.args_problem(spec(server={"extraArgs": ["--frontend_workers=4"]})) == (
        "spec.server.extraArgs: --frontend_workers is set by the operator (ports, config files, warmup, batching, "
        "the profiler, the reload RPC and front-end workers come from the spec); remove it")


def test_a_model_from_object_storage() -> None:
    """storage.uri: the server reads the URI itself (base_path, checked by its own config parser)
    and downloads into an emptyDir; the Secret is referenced (envFrom), never read."""
    from modelserver.config.flags import parse_args
    from modelserver.config.model_config import model_configs_from_proto

    s = spec(**CASES["objectStorage"])
    (model,) = model_configs_from_proto(parse_models_config(serverconfig.models_config(s, "clf")))
    assert model.base_path == "s3://models/clf"
    assert parse_args(serverconfig.server_args(s)).values["model_cache_dir"] == serverconfig.MODEL_CACHE_DIR
    pod = kinds(render.render_all(s, OWNER))["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-reader"}}] and pod["serviceAccountName"] == "model-reader"
    assert {"name": "model-cache", "emptyDir": {"sizeLimit": "20Gi"}} in pod["volumes"]
    assert {"name": "model-cache", "mountPath": "/model-cache"} in container["volumeMounts"]
    assert not any(v["name"] == "model" for v in pod["volumes"])  # nothing mounted at /models
    plain = kinds(render.render_all(spec(model={"storage": {"uri": "gs://models/clf"}}), OWNER))["Deployment"]
    pod = plain["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and "envFrom" not in pod["containers"][0]
    assert {"name": "model-cache", "emptyDir": {}} in pod["volumes"]


@pytest.mark.parametrize("extra", [[], ["--rest_api_timeout_in_ms=5000", "--tensorflow_intra_op_parallelism=2"],
                                   ["--enable_grpc_healthcheck_service"], ["--trace_sample_rate=10"]])
def test_rendered_args_parse_with_the_servers_own_parser(extra: list[str]) -> None:
    from modelserver.config.flags import parse_args

    s = spec(batching={}, server={"extraArgs": extra})
    assert serverconfig.args_problem(s) is None
    flags = parse_args(serverconfig.server_args(s))
    assert flags.values["port"] == render.GRPC_PORT and flags.values["rest_api_port"] == render.HTTP_PORT
    assert flags.values["monitoring_config_file"] == "/config/monitoring.config" and flags.values["enable_batching"]


@pytest.mark.parametrize("grace", [1, 7, 30, 60, 3600])
def test_the_drain_ends_before_the_grace_period_does(grace: int) -> None:
    """preStop pause + model-server's drain fit in terminationGracePeriodSeconds: no request is cut by SIGKILL."""
    from modelserver.config.flags import parse_args

    s = spec(server={"terminationGracePeriodSeconds": grace})
    pod = kinds(render.render_all(s, OWNER))["Deployment"]["spec"]["template"]["spec"]
    drain = parse_args(pod["containers"][0]["args"]).values["drain_timeout_seconds"]
    pause = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] == grace and drain >= 1
    if grace > pause + 1:
        assert pause + drain < grace and drain == grace - pause - 1


@pytest.mark.parametrize(("extra", "says"), [
    (["--rest_api_port=9000"], "--rest_api_port is set by the operator"),
    (["--nobind_address"], "--bind_address is set by the operator"),
    (["--model_base_path=/elsewhere"], "--model_base_path is set by the operator"),
    (["--drain_timeout_seconds=600"], "--drain_timeout_seconds is set by the operator"),
    (["--enable_profiler=true"], "--enable_profiler is set by the operator"),  # spec.server.enableProfiler
    (["--enable_reload_config_rpc"], "--enable_reload_config_rpc is set by the operator"),
    (["--enable_batchin=true"], "Unknown argument --enable_batchin=true"),
    (["--tensorflow_intra_op_parallelism=two"], "Illegal value 'two'"),
    (["--rest_api_timeout_in_ms"], "Missing value for flag --rest_api_timeout_in_ms"),
])
def test_extra_args_the_server_would_refuse_are_an_invalid_spec(extra: list[str], says: str) -> None:
    from modeldeploy.controller.reconcile import parse_spec
    from modeldeploy.decisions.status import Problem

    body = {"metadata": {"name": "clf"}, "spec": {"model": {"storage": {"hostPath": {"path": "/m"}}}, "server": {"extraArgs": extra}}}
    problem = parse_spec(body)
    assert isinstance(problem, Problem) and problem.reason == "InvalidSpec", problem
    assert problem.message.startswith("spec.server.extraArgs: ") and says in problem.message


# --- manifests -----------------------------------------------------------------------------------------

CASES = {
    "minimal": {},
    "gpu+placement": {"resources": {"gpu": 2, "cpu": 4, "memory": "16Gi", "cpuLimit": "8"},
                      "placement": {"nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}]}}}}},
    "hostPath": {"model": {"storage": {"hostPath": {"path": "/models/x"}}}},
    "image": {"model": {"storage": {"image": {"reference": "reg/models/x:1", "subPath": "x"}}}},
    "batching+labels": {"model": {"storage": {"pvc": {"claimName": "m"}}, "versions": [1, 2]}, "versionLabels": {"stable": 1}, "batching": {"allowedBatchSizes": [16, 32]}},
    "autoscaling": {"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 5, "target": 100}},
    "tracing+logging": {"observability": {"tracing": {"endpoint": "http://otel.monitoring:4317"}},
                        "logging": {"url": "http://sink.monitoring/events", "mode": "request"}},
    "objectStorage": {"model": {"storage": {"uri": "s3://models/clf", "credentials": {
        "secretRef": {"name": "s3-reader"}, "serviceAccountName": "model-reader"}, "cacheSizeLimit": "20Gi"}}},
}


@pytest.mark.parametrize(("case", "version"), [(c, v) for v in K8S_VERSIONS for c in CASES if not (c == "image" and v == "1.30")]
                         + [("image", "1.31")])
def test_every_rendered_manifest_passes_kubernetes_validate_strict(case: str, version: str) -> None:
    defaults = render.Defaults(operator_namespace="ops", operator_pod_labels=(("app.kubernetes.io/name", "modeldeploy"),))
    objs = render.render_all(spec(**CASES[case]), OWNER, defaults)
    hpa = ["HorizontalPodAutoscaler"] if case == "autoscaling" else []  # its case is mode: hpa
    assert [o["kind"] for o in objs] == ["ConfigMap", "Deployment", "Service", "Service", "PodDisruptionBudget",
                                         *hpa, "NetworkPolicy"]
    objs.append(render.render_token_secret(OWNER, "t0ken"))
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"]["ownerReferences"] == [render.owner_reference(OWNER)]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modeldeploy"


def test_kubernetes_before_1_30_lacks_the_prestop_sleep_the_pods_need() -> None:
    dep = kinds(render.render_all(spec(), OWNER))["Deployment"]
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(dep, "1.28", strict=True)


def test_kubernetes_validate_catches_a_broken_manifest() -> None:
    dep = render.render_all(spec(), OWNER)[1]
    dep["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, "1.33", strict=True)


def test_deployment_pod_contract() -> None:
    dep = kinds(render.render_all(spec(resources={"gpu": 1}), OWNER))["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["model-server"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8500, "http": 8501, "admin": 8502}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health/live"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] < pod["terminationGracePeriodSeconds"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8501"
    assert annotations["prometheus.io/path"] == "/monitoring/prometheus/metrics"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["model"] == {"name": "model", "mountPath": "/models/clf", "readOnly": True, "subPath": "clf"}
    assert mounts["config"]["mountPath"] == "/config"
    assert mounts["admin-token"] == {"name": "admin-token", "mountPath": "/admin", "readOnly": True}
    token_volume = next(v for v in pod["volumes"] if v["name"] == "admin-token")
    assert token_volume["secret"]["secretName"] == "clf-admin-token"
    assert "--admin_token_file=/admin/token" in c["args"] and "--routing_config_file=/config/routing.json" in c["args"]


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


@pytest.mark.parametrize("case", [c for c in CASES if c != "hostPath"])  # hostPath is for dev clusters (README)
def test_model_pods_meet_the_restricted_pod_security_standard(case: str) -> None:
    pod = kinds(render.render_all(spec(**CASES[case]), OWNER))["Deployment"]["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")) and pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False and sc["runAsNonRoot"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["readOnlyRootFilesystem"] is True and not any("hostPort" in p for p in c["ports"])
        # the only writable place is /tmp, an emptyDir of bounded size
        writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
        cache = [serverconfig.MODEL_CACHE_DIR] if case == "objectStorage" else []  # its downloads, an emptyDir
        assert [m["mountPath"] for m in writable] == [*cache, "/tmp"]
        # and caches that default to $HOME land there
        assert {"name": "HOME", "value": "/tmp"} in c["env"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
    kinds_used = {k for v in pod["volumes"] for k in v if k != "name"}
    if case != "image":  # image volumes (1.31+) are newer than the volume list this test encodes
        assert kinds_used <= RESTRICTED_VOLUMES, kinds_used


def test_service_and_pdb() -> None:
    objs = kinds(render.render_all(spec(), OWNER))
    ports = {p["name"]: p for p in objs["Service"]["spec"]["ports"]}
    assert set(ports) == {"grpc", "http"}  # the admin port stays off the clients' Service
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["http"]["appProtocol"] == "http"
    assert objs["Service"]["spec"]["selector"] == objs["Deployment"]["spec"]["selector"]["matchLabels"]
    admin = objs["AdminService"]["spec"]
    assert admin["clusterIP"] == "None" and [p["port"] for p in admin["ports"]] == [8502]
    assert admin["selector"] == objs["Service"]["spec"]["selector"]
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert "NetworkPolicy" not in objs  # without the operator's own pods known


def test_network_policy_admits_only_the_operator_to_the_admin_port() -> None:
    defaults = render.Defaults(operator_namespace="ops", operator_pod_labels=(("app.kubernetes.io/name", "modeldeploy"),))
    pol = kinds(render.render_all(spec(), OWNER, defaults))["NetworkPolicy"]["spec"]
    model_ports, admin = pol["ingress"]
    assert "from" not in model_ports and {p["port"] for p in model_ports["ports"]} == {8500, 8501}
    assert admin["ports"] == [{"port": 8502, "protocol": "TCP"}]
    assert admin["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "modeldeploy"}}}]


def _hash(**kw: Any) -> str:
    return kinds(render.render_all(spec(**kw), OWNER))["Deployment"]["spec"]["template"]["metadata"]["annotations"][render.CONFIG_HASH_ANNOTATION]


def test_config_hash_ignores_models_config_but_rolls_on_restart_changes() -> None:
    base = _hash(model={"storage": {"pvc": {"claimName": "models", "subPath": "clf"}}, "versions": [1, 2]}, versionLabels={"stable": 1})
    relabeled = _hash(model={"storage": {"pvc": {"claimName": "models", "subPath": "clf"}}, "versions": [1, 2]}, versionLabels={"stable": 2})
    more_versions = _hash(model={"storage": {"pvc": {"claimName": "models", "subPath": "clf"}}, "versions": [1, 2, 3]}, versionLabels={"stable": 1})
    assert base == relabeled == more_versions  # the server polls models.config: no restart
    assert _hash(batching={}) != _hash()
    assert _hash(batching={"maxBatchSize": 64}) != _hash(batching={})
    assert _hash(resources={"memory": "4Gi"}) != _hash()
    assert _hash(warmup={"enabled": False}) != _hash()


def test_autoscaling_pins_replicas_to_min_until_the_autoscaler_exists() -> None:
    dep = kinds(render.render_all(spec(replicas=5, autoscaling={"minReplicas": 2, "maxReplicas": 4, "target": 50}), OWNER))["Deployment"]
    assert dep["spec"]["replicas"] == 2


@pytest.mark.parametrize(("warmup", "flag", "doc"), [
    ({}, False, None),  # the model's own assets.extra file
    ({"source": "model", "generate": {"batchSizes": [8]}}, False, None),  # said explicitly: the model's file wins
    ({"generate": {"batchSizes": [1, 8, 32], "count": 2, "data": "random", "seed": 7, "signatures": ["serving_default"]}},
     True, {"source": "generated", "batchSizes": [1, 8, 32], "count": 2, "data": "random", "seed": 7,
            "signatures": ["serving_default"]}),
    ({"requests": {"name": "clf-warmup", "key": "bodies.json"}}, True,
     {"source": "requests", "requestsFile": "/warmup-requests/requests.json"}),
    ({"enabled": False, "generate": {}}, False, None),
])
def test_each_warmup_source_renders_what_the_server_reads(warmup: dict, flag: bool, doc: dict | None) -> None:
    import json

    from modelserver.warmup.sources import parse_plan

    objs = kinds(render.render_all(spec(warmup=warmup), OWNER))
    c = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert ("--warmup_config_file=/config/warmup.json" in c["args"]) == flag
    data = objs["ConfigMap"]["data"]
    assert (json.loads(data["warmup.json"]) if "warmup.json" in data else None) == doc
    if doc is not None:
        parse_plan(json.loads(data["warmup.json"]))  # the server's own parser accepts it
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    assert ("/warmup-requests" in mounted) == ("requests" in warmup)
    if "requests" in warmup:
        vol = next(v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "warmup-requests")
        assert vol["configMap"] == {"name": "clf-warmup", "items": [{"key": "bodies.json", "path": "requests.json"}]}


def test_warmup_source_needs_what_it_names() -> None:
    with pytest.raises(ValueError, match="needs warmup.requests"):
        spec(warmup={"source": "configMap"})
    with pytest.raises(ValueError, match="say which wins"):
        spec(warmup={"generate": {}, "requests": {"name": "a", "key": "b"}})
