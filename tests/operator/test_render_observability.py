"""What spec.observability.tracing and spec.logging render: the pods' OTEL_* environment and
model-server's --payload_log_* flags, which the server's own flag parser accepts."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import render, serverconfig
from modelserver.config import flags as server_flags

OWNER = render.Owner(name="clf", namespace="ml", uid="0b7c5a52-5f2e-4bb4-a2a5-3b7d1c0f0c11")


def spec(**kw: Any) -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate({"model": {"storage": {"pvc": {"claimName": "models"}}}, **kw})


def container(s: api.ModelDeploymentSpec) -> dict[str, Any]:
    dep = render.render_deployment(s, OWNER, render.Defaults(), render.render_configmap(
        s, OWNER, render.default_serving(s, OWNER.name)))
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env(s: api.ModelDeploymentSpec) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(s)["env"]}


def test_without_observability_the_pods_get_no_otel_variables_nor_payload_flags():
    c = container(spec())
    assert [e["name"] for e in c["env"]] == ["HOME"]
    assert not [a for a in c["args"] if a.startswith("--payload_log")]


@pytest.mark.parametrize(("tracing", "expected"), [
    ({"endpoint": "http://otel.monitoring:4317"},
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel.monitoring:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
      "OTEL_SERVICE_NAME": "clf", "OTEL_TRACES_SAMPLER_ARG": "1"}),
    ({"endpoint": "https://otel:4318", "protocol": "http/protobuf", "samplingRatio": 0.05, "serviceName": "fraud"},
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
      "OTEL_SERVICE_NAME": "fraud", "OTEL_TRACES_SAMPLER_ARG": "0.05"}),
])
def test_tracing_renders_the_standard_otel_environment(tracing, expected):
    got = env(spec(observability={"tracing": tracing}))
    assert got == {"HOME": "/tmp", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                   "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
                   "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=$(POD_NAME),k8s.namespace.name=ml,modeldeploy.name=clf",
                   **expected}


def test_the_model_name_names_the_service_when_it_differs_from_the_deployment():
    assert env(spec(model={"name": "fraud-v2", "storage": {"pvc": {"claimName": "m"}}},
                    observability={"tracing": {"endpoint": "http://otel:4317"}}))["OTEL_SERVICE_NAME"] == "fraud-v2"


def test_logging_renders_flags_the_server_accepts():
    s = spec(logging={"url": "http://sink.monitoring/events", "mode": "response", "sampleRate": 0.25, "queueSize": 50})
    args = container(s)["args"]
    assert args[-4:] == ["--payload_log_url=http://sink.monitoring/events", "--payload_log_mode=response",
                         "--payload_log_sample_rate=0.25", "--payload_log_queue_size=50"]
    parsed = server_flags.parse_args(args)
    assert (parsed.payload_log_url, parsed.payload_log_mode, parsed.payload_log_sample_rate,
            parsed.payload_log_queue_size) == ("http://sink.monitoring/events", "response", 0.25, 50)
    assert serverconfig.args_problem(s) is None


def test_turning_tracing_on_rolls_the_pods():
    plain, traced = spec(), spec(observability={"tracing": {"endpoint": "http://otel:4317"}})
    hashes = [render.render_deployment(s, OWNER, render.Defaults(), render.render_configmap(
        s, OWNER, render.default_serving(s, OWNER.name)))["spec"]["template"]["metadata"]["annotations"]
        ["serving.modeldeploy.io/config-hash"] for s in (plain, traced)]
    assert hashes[0] != hashes[1]


@pytest.mark.parametrize("bad", [
    {"observability": {"tracing": {"endpoint": "otel:4317"}}},  # no scheme
    {"observability": {"tracing": {"endpoint": "http://otel:4317", "protocol": "http/json"}}},
    {"observability": {"tracing": {"endpoint": "http://otel:4317", "samplingRatio": 1.5}}},
    {"logging": {"url": "http://sink", "mode": "both"}},
    {"logging": {"url": "http://sink", "sampleRate": -0.1}},
    {"logging": {"mode": "all"}},  # url required
])
def test_unusable_settings_are_rejected(bad):
    with pytest.raises(pydantic.ValidationError):
        spec(**bad)
