"""values.schema.json: a wrong value fails at install time, with a message naming the key."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from chart_support import CHART, CI_VALUES, FULL_VALUES, NAMESPACED_VALUES, render

BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicaCount": 2}, "replicaCount"),
    ("typo in a nested key", {"operator": {"verbos": True}}, "verbos"),
    ("scope mode", {"scope": {"mode": "everywhere"}}, "mode"),
    ("namespace name", {"scope": {"mode": "namespaced", "watchNamespaces": ["Team_A"]}}, "watchNamespaces"),
    ("port out of range", {"operator": {"healthPort": 70000}}, "healthPort"),
    ("port as string", {"operator": {"metricsPort": "9090"}}, "metricsPort"),
    ("removed option", {"operator": {"logLevel": "debug"}}, "logLevel"),
    ("verbose as string", {"operator": {"verbose": "yes"}}, "verbose"),
    ("resync period zero", {"operator": {"resyncSeconds": 0}}, "resyncSeconds"),
    ("model status URL without {name}", {"operator": {"modelStatus": {"url": "http://models:8501"}}}, "url"),
    ("pull policy", {"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ("empty repository", {"image": {"repository": ""}}, "repository"),
    ("image tag with a colon", {"serverImage": {"tag": "v1:latest"}}, "tag"),
    (
        "latency threshold zero",
        {"monitoring": {"prometheusRule": {"latency": {"thresholdSeconds": 0}}}},
        "thresholdSeconds",
    ),
    (
        "error-rate threshold above 1",
        {"monitoring": {"prometheusRule": {"errorRate": {"threshold": 5}}}},
        "threshold",
    ),
    (
        "per-model threshold not a number",
        {"monitoring": {"prometheusRule": {"latency": {"perModel": {"m": "fast"}}}}},
        "perModel",
    ),
    (
        "per-model name with a space",
        {"monitoring": {"prometheusRule": {"latency": {"perModel": {"my model": 1}}}}},
        "my model",
    ),
    ("duration", {"monitoring": {"podMonitor": {"interval": "15 seconds"}}}, "interval"),
    ("enabled as string", {"monitoring": {"grafanaDashboard": {"enabled": "yes"}}}, "enabled"),
    ("rbac.create as string", {"rbac": {"create": "true"}}, "create"),
    ("label value not a string", {"operator": {"podLabels": {"team": 1}}}, "podLabels"),
    ("resource quantity", {"operator": {"resources": {"requests": {"cpu": "lots"}}}}, "cpu"),
    ("pull secret without name", {"imagePullSecrets": [{"secret": "x"}]}, "imagePullSecrets"),
    ("hostPath.allowed as string", {"operator": {"hostPath": {"allowed": "yes"}}}, "allowed"),
    ("relative hostPath prefix", {"operator": {"hostPath": {"prefixes": ["models"]}}}, "prefixes"),
    ("Prometheus prefix not a URL", {"operator": {"allowedPrometheusUrls": ["prometheus:9090"]}}, "allowedPrometheusUrls"),
    ("Prometheus prefix with a user", {"operator": {"allowedPrometheusUrls": ["http://a@prom:9090"]}}, "allowedPrometheusUrls"),
    ("token key Secret name", {"operator": {"tokenKey": {"existingSecret": "My_Key"}}}, "existingSecret"),
]


@pytest.mark.parametrize(("case", "values", "key"), BAD_VALUES, ids=[c for c, _, _ in BAD_VALUES])
def test_schema_rejects_wrong_values(case: str, values: dict[str, Any], key: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert key in str(err.value), str(err.value)
    # An install fails the same way (rendering validates against the schema first).
    with pytest.raises(helm.HelmError):
        render(values)


@pytest.mark.parametrize(
    "values", [{}, FULL_VALUES, NAMESPACED_VALUES, *CI_VALUES.values()],
    ids=["default", "full", "namespaced", *(f"ci/{n}" for n in CI_VALUES)]
)
def test_schema_accepts_good_values(values: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.merge_values(values))


def test_defaults_satisfy_the_schema_and_are_sensible() -> None:
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    assert defaults["scope"]["mode"] == "cluster"
    assert defaults["rbac"]["create"] is True and defaults["serviceAccount"]["create"] is True
    assert all(not m["enabled"] for m in defaults["monitoring"].values())
    assert defaults["monitoring"]["prometheusRule"]["errorRate"]["threshold"] == 0.01
    assert defaults["monitoring"]["prometheusRule"]["errorRate"]["for"] == "2m"
    assert defaults["monitoring"]["prometheusRule"]["latency"]["for"] == "5m"
    # least privilege by default: no hostPath, and a token key the chart makes and keeps
    assert defaults["operator"]["hostPath"] == {"allowed": False, "prefixes": []}
    assert defaults["operator"]["tokenKey"] == {"existingSecret": ""}
