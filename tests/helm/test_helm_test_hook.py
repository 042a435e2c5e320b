"""The chart's `helm test` hook (templates/tests): a Service for the operator's health and metrics
ports and a pod from the operator's image that asks both through it. Rendered, valid, restricted,
and not part of the release's objects (Helm creates hooks only when they run); it runs for real in
e2e/test_helm_install.py."""

from __future__ import annotations

import kubernetes_validate
from chart_support import by_kind, hooks, objects, one


def test_the_test_hook_asks_the_operators_ports_through_its_own_service() -> None:
    rendered = hooks({})
    assert {o["kind"] for o in rendered} == {"Service", "Pod"}
    for obj in rendered:
        kubernetes_validate.validate(obj, "1.33", strict=True)
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert "hook-succeeded" in obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    svc, pod = one(rendered, "Service"), one(rendered, "Pod")
    dep = one(objects({}), "Deployment")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"health", "metrics"}
    # the test pod is not one of the operator's pods (no Service or ReplicaSet selects it)
    labels = pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    assert c["image"] == dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc" in c["args"][0]
    assert not by_kind(objects({}), "Pod")
