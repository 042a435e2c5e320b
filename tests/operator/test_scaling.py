"""Autoscaling between the algorithm and the reconcile (modeldeploy.decisions.autoscale.scale), and the HPA it renders:
operator mode decides from a measurement and keeps its history in status, holds without data, and
undoes a hand edit between evaluations; HPA mode leaves replicas to a valid autoscaling/v2 HPA."""

from __future__ import annotations

import kubernetes_validate
import pytest
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import autoscale, render

OWNER = render.Owner(name="clf", namespace="ml", uid="u")


def spec(**autoscaling: object) -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate({
        "model": {"storage": {"pvc": {"claimName": "m"}}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "target": 100, **autoscaling}})


def dep(replicas: int, ready: int) -> dict:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def test_operator_mode_scales_from_a_measurement_and_keeps_its_history() -> None:
    s = spec(metric="latencyP99Ms")
    out = autoscale.scale(s, dep(2, 2), None, None, autoscale.Measured(1000.0, 300.0))
    assert out.replicas == 6 and out.status["reason"] == "ScaleUp" and out.status["summary"] == "latencyP99Ms 300/100"
    assert out.events == (("Normal", "ScaledUp", "2 -> 6 replicas: 300 against a target of 100"),)
    # between evaluations: the last decision stands, also against a hand edit of the Deployment
    held = autoscale.scale(s, dep(9, 9), None, out.status, None)
    assert held.replicas == 6 and held.status is out.status
    # the next evaluation, a quiet one: the 300 s window keeps the pods
    quiet = autoscale.scale(s, dep(6, 6), None, out.status, autoscale.Measured(1015.0, 20.0))
    assert quiet.replicas == 6 and quiet.status["reason"] == "ScaleDownStabilized" and not quiet.events


def test_missing_data_holds_with_one_warning() -> None:
    s = spec()
    out = autoscale.scale(s, dep(4, 4), None, None, autoscale.Measured(1000.0, None, "Prometheus unreachable at x"))
    assert out.replicas == 4 and out.status["reason"] == "MetricUnavailable" and "value" not in out.status
    assert out.events == (("Warning", "MetricUnavailable", "holding 4 replicas: Prometheus unreachable at x"),)
    again = autoscale.scale(s, dep(4, 4), None, out.status, autoscale.Measured(1015.0, float("nan")))
    assert again.replicas == 4 and not again.events  # said once


def test_requests_per_second_is_per_ready_replica() -> None:
    assert "sum(rate(modelserver_requests_total" in autoscale.query_for(spec(metric="requestsPerSecond").autoscaling, "ml", "clf")
    assert "modelserver_in_flight_requests" in autoscale.query_for(spec(metric="inFlightRequests").autoscaling, "ml", "clf")


@pytest.mark.parametrize(("metric", "target", "want"), [
    ("latencyP99Ms", 100, {"type": "Value", "value": "100"}),
    ("requestsPerSecond", 50.5, {"type": "AverageValue", "averageValue": "50500m"}),
    ("inFlightRequests", 4, {"type": "AverageValue", "averageValue": "4"}),
])
def test_hpa_mode_renders_an_hpa_on_the_external_metric_and_leaves_replicas_to_it(metric: str, target: float,
                                                                                  want: dict) -> None:
    s = spec(mode="hpa", metric=metric, target=target, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}})
    objs = {o["kind"]: o for o in render.render_all(s, OWNER)}
    assert "replicas" not in objs["Deployment"]["spec"]
    hpa = objs["HorizontalPodAutoscaler"]
    for version in ("1.30", "1.33"):
        kubernetes_validate.validate(hpa, version, strict=True)
    (m,) = hpa["spec"]["metrics"]
    assert m["external"]["metric"] == {"name": autoscale.external_metric_name(metric),
                                       "selector": {"matchLabels": {"serving_modeldeploy_io_model_deployment": "clf"}}}
    assert m["external"]["target"] == want and hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 60}}
    st = autoscale.hpa_status(s.autoscaling, {"status": {"currentReplicas": 3, "desiredReplicas": 4, "currentMetrics": [
        {"type": "External", "external": {"current": {"value": "142500m"}}}]}})
    assert st["value"] == 142.5 and st["desiredReplicas"] == 4 and st["mode"] == "hpa"
