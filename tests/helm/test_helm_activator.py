"""The chart's activator (activator.enabled, for scale to zero): its Deployment runs the operator's
image with no Kubernetes credentials at all (no token mounted, no Role bound to its ServiceAccount);
the operator is pointed at it, with the token both mount; and only then does the operator's Role
grant the EndpointSlice writes scale to zero needs."""

from __future__ import annotations

from typing import Any

from chart_support import CI_VALUES, RELEASE, by_kind, objects

ON = CI_VALUES["activator-values.yaml"]


def named(objs: list[dict[str, Any]], kind: str, suffix: str) -> list[dict[str, Any]]:
    return [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]


def slice_verbs(objs: list[dict[str, Any]]) -> set[str]:
    return {v for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role") for rule in role.get("rules") or []
            if "endpointslices" in rule.get("resources", []) for v in rule["verbs"]}


def test_off_by_default_and_then_the_operator_only_reads_endpoint_slices() -> None:
    objs = objects({})
    assert not named(objs, "Deployment", "-activator")
    assert slice_verbs(objs) == {"list", "watch"}
    operator = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--activator") for a in operator["args"])


def test_the_activator_has_no_kubernetes_credentials() -> None:
    objs = objects(ON)
    (dep,) = named(objs, "Deployment", "-activator")
    pod = dep["spec"]["template"]["spec"]
    (sa,) = named(objs, "ServiceAccount", "-activator")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False and sa["automountServiceAccountToken"] is False
    subjects = [s["name"] for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding")
                for s in b.get("subjects") or []]
    assert sa["metadata"]["name"] not in subjects
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "modeldeploy.activator"]
    assert "--admin-port=9091" in c["args"] and "--token-file=/var/run/modeldeploy/activator/token" in c["args"]
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    (svc,) = named(objs, "Service", "-activator")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_the_operator_is_pointed_at_it_and_may_write_endpoint_slices() -> None:
    objs = objects(ON)
    (operator_dep,) = [d for d in by_kind(objs, "Deployment") if not d["metadata"]["name"].endswith("-activator")]
    pod = operator_dep["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert f"--activator-url=http://{RELEASE}-modeldeploy-activator.modeldeploy-system.svc:9091" in args
    assert "--activator-token-file=/var/run/modeldeploy/activator/token" in args
    (secret,) = named(objs, "Secret", "-activator")
    assert any((v.get("secret") or {}).get("secretName") == secret["metadata"]["name"] for v in pod["volumes"])
    assert slice_verbs(objs) == {"list", "watch", "create", "patch", "delete"}
