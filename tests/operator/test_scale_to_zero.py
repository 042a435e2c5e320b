"""Scale to zero's pure decisions (decisions/scaletozero.py), table by table: when the replicas go to
0 and come back, which endpoints the Service's slices name, the status and the cold start's parts;
and the plan of a reconcile with it on (the Service without a selector, its slices, the replicas)."""

from __future__ import annotations

from typing import Any

import pytest
from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import plan, render, scaletozero
from modeldeploy.decisions.scaletozero import Activator, Observation, PodEndpoint
from pydantic import ValidationError
from test_plan import DEFAULTS, body, live_children, observed

LIMITS = api.ScaleToZero.model_validate({"idleSeconds": 60})
ACT = Activator("10.0.0.9", 40001, 40002)
NOW = 10_000.0


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(now=NOW, limits=LIMITS, current=1, ready=1, wanted=1, activator=ACT, requests=5.0,
                                awake_since=NOW - 3600)
    return Observation(**{**base, **kw})


@pytest.mark.parametrize(("case", "o", "replicas", "reason"), [
    ("busy", obs(), 1, "Active"),
    ("idle for the whole window", obs(requests=0.0), 0, "Idle"),
    ("idle but up for less than the window", obs(requests=0.0, awake_since=NOW - 30), 1, "Active"),
    ("idle, never at zero before", obs(requests=0.0, awake_since=None), 0, "Idle"),
    ("unknown count never scales to zero", obs(requests=None), 1, "IdleUnknown"),
    ("the autoscaler's figure while busy", obs(wanted=3, current=3, ready=3), 3, "Active"),
    ("at zero, nothing held", obs(current=0, ready=0, requests=None), 0, "ScaledToZero"),
    ("at zero, a request held", obs(current=0, ready=0, activator=Activator("a", 1, 2, held=1)), 1, "Activating"),
    ("waking, not ready yet", obs(current=1, ready=0, activator=Activator("a", 1, 2, held=4)), 1, "Activating"),
    ("held requests beat an idle count", obs(requests=0.0, activator=Activator("a", 1, 2, held=1)), 1, "Active"),
    ("no activator: never below 1", obs(requests=0.0, activator=None), 1, "ActivatorUnavailable"),
    ("no activator at zero: back to 1", obs(current=0, ready=0, activator=None), 1, "ActivatorUnavailable"),
    ("unreachable activator", obs(requests=0.0, activator=Activator(problem="refused")), 1, "ActivatorUnavailable"),
])
def test_decide(case: str, o: Observation, replicas: int, reason: str) -> None:
    d = scaletozero.decide(o)
    assert (d.replicas, d.reason) == (replicas, reason), case


def test_crossing_zero_is_an_event_and_resets_the_awake_time() -> None:
    down = scaletozero.decide(obs(requests=0.0))
    assert down.event is not None and down.event[1] == "ScaledToZero" and down.awake_since is None
    up = scaletozero.decide(obs(current=0, ready=0, activator=Activator("a", 1, 2, held=2)))
    assert up.event is not None and up.event[1] == "ScaledFromZero" and up.awake_since == NOW
    assert scaletozero.decide(obs()).event is None


OWNER = render.Owner("m", "ml", "uid-1")


def admin_slice(ports: dict[str, int], *pods: tuple[str, str, bool]) -> dict[str, Any]:
    return {"ports": [{"name": k, "port": v} for k, v in ports.items()],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": ready}, "targetRef": {"name": pod}}
                          for pod, addr, ready in pods]}


def test_pod_endpoints_are_the_ready_pods_with_their_model_ports() -> None:
    slices = [admin_slice({"admin": 8502, "grpc": 8500, "http": 8501}, ("p1", "10.1.0.1", True), ("p2", "10.1.0.2", False)),
              admin_slice({"admin": 8502}, ("p3", "10.1.0.3", True))]  # no model ports: scale to zero just turned on
    assert scaletozero.pod_endpoints(slices) == [PodEndpoint("p1", "10.1.0.1", 8500, 8501)]


@pytest.mark.parametrize(("pods", "activator", "expected"), [
    ([PodEndpoint("p1", "10.1.0.1", 8500, 8501), PodEndpoint("p2", "10.1.0.2", 8500, 8501)], ACT,
     [((8500, 8501), ["10.1.0.1", "10.1.0.2"])]),
    ([], ACT, [((40001, 40002), ["10.0.0.9"])]),
    # the local cluster: each pod's own host ports, one slice per pair (as the EndpointSlice controller groups them)
    ([PodEndpoint("p1", "127.0.0.1", 31000, 31001), PodEndpoint("p2", "127.0.0.1", 32000, 32001)], None,
     [((31000, 31001), ["127.0.0.1"]), ((32000, 32001), ["127.0.0.1"])]),
    ([], None, []),
    ([], Activator(problem="refused"), []),
])
def test_service_slices(pods: list[PodEndpoint], activator: Activator | None, expected: list[Any]) -> None:
    slices = scaletozero.service_slices(OWNER, pods, activator)
    got = [((s["ports"][0]["port"], s["ports"][1]["port"]), [e["addresses"][0] for e in s["endpoints"]]) for s in slices]
    assert got == expected
    for s in slices:
        labels = s["metadata"]["labels"]
        assert labels["kubernetes.io/service-name"] == "m" and scaletozero.ours(s)
        assert labels["endpointslice.kubernetes.io/managed-by"] != "endpointslice-controller.k8s.io"
        assert [p["name"] for p in s["ports"]] == ["grpc", "http"] and s["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def pod(ready_at: str, scheduled_at: str) -> dict[str, Any]:
    return {"status": {"conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at},
                                      {"type": "Ready", "status": "True", "lastTransitionTime": ready_at}]}}


def test_cold_start_in_parts() -> None:
    held = 1_780_000_000.0  # 2026-05-28T20:26:40Z
    act = Activator("a", 1, 2, held_at=held, released_at=held + 12.5, answered_at=held + 12.75)
    parts = scaletozero.cold_start(act, [pod("2026-05-28T20:26:52Z", "2026-05-28T20:26:41Z")], warmup_seconds=3.0)
    assert parts == {"started": "2026-05-28T20:26:40Z", "seconds": 12.75, "scheduledSeconds": 1.0,
                     "loadedSeconds": 8.5, "warmedUpSeconds": 3.0, "firstAnswerSeconds": 0.25}
    assert sum(parts[k] for k in ("scheduledSeconds", "loadedSeconds", "warmedUpSeconds",
                                  "firstAnswerSeconds")) == pytest.approx(parts["seconds"])
    # a scheduling time rounded past the release is capped: the parts still add up
    late = scaletozero.cold_start(act, [pod("2026-05-28T20:26:52Z", "2026-05-28T20:26:53Z")], 0.0)
    assert late is not None and late["scheduledSeconds"] == 12.5 and late["loadedSeconds"] == 0.0
    assert scaletozero.cold_start(Activator("a", 1, 2, held_at=held), [], None) is None  # not answered yet
    # a pod of a later cold start (ready after this one's answer) tells nothing about this one
    later = scaletozero.cold_start(act, [pod("2026-05-28T20:30:00Z", "2026-05-28T20:29:00Z")], None)
    assert later is not None and "scheduledSeconds" not in later and later["loadedSeconds"] == 12.5
    kept = scaletozero.status_of(scaletozero.decide(obs()), act, None, later, {"lastColdStart": parts})
    assert kept["lastColdStart"] == parts


def test_status_and_condition_keep_their_transition_time() -> None:
    d = scaletozero.decide(obs(current=0, ready=0, requests=None))
    prev = {"conditions": [{"type": "ScaledToZero", "status": "True", "lastTransitionTime": "T0"}],
            "scaleToZero": {"lastColdStart": {"seconds": 9.0}}}
    out = scaletozero.with_status({"conditions": [{"type": "Ready"}]}, d, Activator("a", 1, 2, held=0), None, None,
                                  prev, 3, "T1")
    cond = out["conditions"][-1]
    assert (cond["type"], cond["status"], cond["reason"], cond["lastTransitionTime"]) == ("ScaledToZero", "True",
                                                                                         "ScaledToZero", "T0")
    assert out["scaleToZero"] == {"heldRequests": 0, "message": d.message, "lastColdStart": {"seconds": 9.0}}


# -- the API --
def test_hpa_mode_cannot_scale_to_zero() -> None:
    with pytest.raises(ValidationError, match="HPAScaleToZero"):
        api.Autoscaling.model_validate({"mode": "hpa", "minReplicas": 0, "maxReplicas": 2, "target": 1})
    a = api.Autoscaling.model_validate({"minReplicas": 0, "maxReplicas": 2, "target": 1})
    assert a.to_zero == api.ScaleToZero.model_validate({})
    assert api.Autoscaling.model_validate({"maxReplicas": 2, "target": 1}).to_zero is None


# -- the plan of a reconcile --
ZERO = {"minReplicas": 0, "maxReplicas": 3, "target": 100, "scaleToZero": {"idleSeconds": 60}}


def service(p: plan.Plan, name: str = "m") -> dict[str, Any]:
    return next(a.desired for a in p.children if a.desired["kind"] == "Service" and a.desired["metadata"]["name"] == name)


def deployment_replicas(p: plan.Plan) -> int:
    return int(next(a.desired for a in p.children if a.desired["kind"] == "Deployment")["spec"]["replicas"])


def test_with_scale_to_zero_the_service_has_no_selector_and_the_operator_writes_its_slices() -> None:
    b = body(finalizers=[plan.FINALIZER], autoscaling=ZERO)
    children = live_children(b)
    p = plan.plan(observed(b, children, activator=ACT, now=NOW,
                           ready_pods=(PodEndpoint("p1", "10.1.0.1", 8500, 8501),), idle_requests=3.0), DEFAULTS)
    assert "selector" not in service(p)["spec"]
    assert [x["name"] for x in service(p, "m-admin")["spec"]["ports"]] == ["admin", "grpc", "http"]
    assert [s["endpoints"][0]["addresses"] for s in p.slices] == [["10.1.0.1"]]
    assert deployment_replicas(p) == 1 and p.zero is not None and p.zero.reason == "Active"
    plain = plan.plan(observed(body(finalizers=[plan.FINALIZER])), DEFAULTS)
    assert service(plain)["spec"]["selector"] and plain.slices == () and plain.zero is None


def test_idle_goes_to_zero_with_the_activator_in_the_slice_first() -> None:
    b = body(finalizers=[plan.FINALIZER], autoscaling=ZERO)
    p = plan.plan(observed(b, live_children(b), activator=ACT, now=NOW,
                           ready_pods=(PodEndpoint("p1", "10.1.0.1", 8500, 8501),), idle_requests=0.0), DEFAULTS)
    assert deployment_replicas(p) == 0
    assert [s["endpoints"][0]["addresses"] for s in p.slices] == [["10.0.0.9"]]  # not the pod that is going away
    report = plan.report(observed(b, live_children(b), activator=ACT, idle_requests=0.0), p, plan.Outcome(), "T")
    assert report.status is not None and report.status["scaleToZero"]["requestsInIdleWindow"] == 0.0
    assert any(e.reason == "ScaledToZero" for e in report.events)
    cond = next(c for c in report.status["conditions"] if c["type"] == "ScaledToZero")
    assert cond["status"] == "True" and cond["reason"] == "Idle"


def test_with_scale_to_zero_the_probes_look_every_second() -> None:
    """A held request waits for the kubelet to see the pod started and ready."""
    b = body(finalizers=[plan.FINALIZER], autoscaling=ZERO)
    dep = next(a.desired for a in plan.plan(observed(b), DEFAULTS).children if a.desired["kind"] == "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["startupProbe"]["periodSeconds"] == 1 and c["startupProbe"]["failureThreshold"] == 600
    assert c["readinessProbe"]["periodSeconds"] == 1
