"""The chart's RBAC against what the real operator does.

The operator runs as the chart's Deployment would start it (its rendered arguments, with free
loopback ports) against the fake API server (localcluster.fakeapi), through a scenario that
exercises everything it does: create a ModelDeployment, change its spec, undo the deletion of a
child, report missing storage, and handle a deletion. The fake's audit log lists every request it
made; an RBAC evaluator (rbac_eval.py) then checks, for cluster and namespaced mode, that every
request is allowed by the rendered (Cluster)Roles and that every permission granted is used.

Fake API server behaviours relied on: discovery, list/watch with resume, server-side apply,
status subresource, ownerReference GC, Deployment readiness simulation, and the audit log.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from activator_support import ActivatorProcess
from chart_support import (
    NAMESPACE,
    RELEASE,
    OperatorProcess,
    by_kind,
    http_get,
    objects,
    one,
    operator_deployment,
)
from localcluster import fakeapi
from rbac_eval import Request, allowed, granted_permissions, grants_for, requests_from_audit, used_by
from support import condition, wait_for

GROUP, VERSION = "serving.modeldeploy.io", "v1alpha1"
SA = f"{RELEASE}-modeldeploy"
MODES: dict[str, dict[str, Any]] = {
    "cluster": {"monitoring": {"serviceMonitor": {"enabled": True}}},
    "namespaced": {
        "scope": {"mode": "namespaced", "watchNamespaces": ["team-a", "team-b"]},
        "monitoring": {"serviceMonitor": {"enabled": True}},
    },
    # scale to zero: the operator against a real activator (its URL rewritten to loopback), and a
    # ModelDeployment with minReplicas 0, then without
    "activator": {"activator": {"enabled": True}, "monitoring": {"serviceMonitor": {"enabled": True}}},
}


@dataclass
class Run:
    rendered: list[dict[str, Any]]
    requests: list[Request]
    audit: list[Any]
    health: tuple[int, str]
    metrics: tuple[int, str]


def scale_to_zero_scenario(fake: Any, ns: str) -> None:
    """A ModelDeployment that scales to zero: the operator writes its Service's EndpointSlice (the
    activator's ports, nothing being ready yet); turned off, the slice is deleted."""
    md_r = fake.resource_for(f"{GROUP}/{VERSION}", "ModelDeployment")
    fake.add_object({"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "idle", "namespace": ns},
                     "spec": {"model": {"storage": {"pvc": {"claimName": "models", "subPath": "idle"}}},
                              "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "target": 100}}})

    def ours() -> list[dict[str, Any]]:
        return [s for s in fake.list_objects("discovery.k8s.io", "endpointslices", ns)
                if s["metadata"]["labels"].get("kubernetes.io/service-name") == "idle"]
    wait_for(ours, "the operator's EndpointSlice")
    obj = fake.get(GROUP, "modeldeployments", ns, "idle")
    obj["spec"]["autoscaling"]["minReplicas"] = 1
    fake.update(md_r, ns, "idle", obj)
    wait_for(lambda: not ours(), "the EndpointSlice deleted")


def scenario(fake: Any, watched: list[str]) -> None:
    """Everything the operator does today, driven through the API server's storage (not audited)."""
    md_r = fake.resource_for(f"{GROUP}/{VERSION}", "ModelDeployment")
    svc_r = fake.resource_for("v1", "Service")
    a, b = watched[0], watched[-1]

    def md(name: str, ns: str, **spec: Any) -> dict[str, Any]:
        body = {
            "model": {"storage": {"pvc": {"claimName": "models", "subPath": name}}, "versions": [3, 4]},
            **spec,
        }
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": body,
        }

    fake.add_object(md("classifier", a, versionLabels={"stable": 3}))
    wait_for(
        lambda: (
            condition(fake.get(GROUP, "modeldeployments", a, "classifier"), "Ready").get("status") == "True"
        ),
        "Ready",
    )
    # A label flip: a spec change.
    live = copy.deepcopy(fake.get(GROUP, "modeldeployments", a, "classifier"))
    live["spec"]["versionLabels"] = {"stable": 3, "canary": 4}
    fake.update(md_r, a, "classifier", live)
    wait_for(
        lambda: (
            (fake.get(GROUP, "modeldeployments", a, "classifier") or {})
            .get("status", {})
            .get("observedGeneration")
            == 2
        ),
        "generation 2",
    )
    # A child deleted by hand comes back.
    fake.delete(svc_r, a, "classifier")
    wait_for(lambda: fake.get("", "services", a, "classifier"), "the Service to be restored")
    # A second model, in the other namespace.
    fake.add_object(md("detector", b))
    wait_for(
        lambda: (
            condition(fake.get(GROUP, "modeldeployments", b, "detector"), "Ready").get("status") == "True"
        ),
        "Ready",
    )
    # Missing storage is reported (status and a Warning event).
    fake.add_object(md("ranker", b, model={"storage": {"pvc": {"claimName": "absent"}}}))
    wait_for(
        lambda: (
            condition(fake.get(GROUP, "modeldeployments", b, "ranker"), "Degraded").get("reason")
            == "StorageNotFound"
        ),
        "StorageNotFound",
    )
    # Warmup requests from a ConfigMap that does not exist yet: reported, then found (a GET by name).
    for ns in (a, b):
        fake.add_object(md("scorer", ns, warmup={"requests": {"name": "scorer-warmup", "key": "requests.json"}}))
        wait_for(
            lambda ns=ns: (
                condition(fake.get(GROUP, "modeldeployments", ns, "scorer"), "Degraded").get("reason")
                == "WarmupRequestsNotFound"
            ),
            "WarmupRequestsNotFound",
        )
    # autoscaling.mode hpa: an HPA created, then changed with the spec.
    for ns in (a, b):
        fake.add_object(md("scaler", ns, autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 3, "target": 100}))
        wait_for(lambda ns=ns: fake.get("autoscaling", "horizontalpodautoscalers", ns, "scaler") is not None, "an HPA")
        obj = fake.get(GROUP, "modeldeployments", ns, "scaler")
        obj["spec"]["autoscaling"]["maxReplicas"] = 5
        fake.update(md_r, ns, "scaler", obj)
        wait_for(lambda ns=ns: (fake.get("autoscaling", "horizontalpodautoscalers", ns, "scaler") or {})
                 .get("spec", {}).get("maxReplicas") == 5, "the HPA updated")
    # Deletion: children go with their owner.
    fake.delete(md_r, a, "classifier")
    wait_for(lambda: fake.get(GROUP, "modeldeployments", a, "classifier") is None, "deletion")
    wait_for(lambda: any(e.resource == "events" and e.verb == "create" for e in fake.audit()), "an Event")


def run_operator(mode: str, tmp_path: Path) -> Run:
    rendered = objects(MODES[mode])
    (crd,) = by_kind(rendered, "CustomResourceDefinition")
    watched = MODES[mode].get("scope", {}).get("watchNamespaces") or ["team-a", "team-b"]
    with fakeapi.FakeKubeAPI() as fake:
        fake.apply_yaml(yaml.safe_dump(crd))
        for ns in [*watched, "elsewhere"]:
            fake.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            fake.add_object(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "models", "namespace": ns},
                    "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
                }
            )
        # A ModelDeployment outside the watched namespaces (ignored in namespaced mode).
        fake.add_object(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ModelDeployment",
                "metadata": {"name": "other", "namespace": "elsewhere"},
                "spec": {"model": {"storage": {"pvc": {"claimName": "models"}}}},
            }
        )
        kubeconfig = fake.write_kubeconfig(tmp_path / f"kubeconfig-{mode}")
        deployment = operator_deployment(rendered)
        activator = None
        if mode == "activator":  # the chart's activator, on loopback, with the token of the Secret it renders
            (secret,) = [o for o in by_kind(rendered, "Secret") if o["metadata"]["name"].endswith("-activator")]
            (tmp_path / "activator").mkdir()
            activator = ActivatorProcess(tmp_path / "activator", base64.b64decode(secret["data"]["token"]).decode()).start()
            c = deployment["spec"]["template"]["spec"]["containers"][0]
            c["args"] = [f"--activator-url={activator.url}" if a.startswith("--activator-url=") else a for a in c["args"]]
        operator = OperatorProcess(deployment, kubeconfig, tmp_path / f"operator-{mode}.log",
                                   {o["metadata"]["name"]: o["data"] for o in by_kind(rendered, "Secret")})
        metrics_path = one(rendered, "ServiceMonitor")["spec"]["endpoints"][0]["path"]
        try:
            operator.start()
            scenario(fake, watched)
            if activator is not None:
                scale_to_zero_scenario(fake, watched[0])
            health = http_get(operator.health_url)
            metrics = http_get(f"http://127.0.0.1:{operator.metrics_port}{metrics_path}")
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- operator log ---\n{operator.logs()}") from None
        finally:
            operator.stop()
            if activator is not None:
                activator.stop()
        audit = fake.audit()
    return Run(rendered, requests_from_audit(audit), audit, health, metrics)


@pytest.fixture(scope="module", params=list(MODES))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    yield run_operator(request.param, tmp_path_factory.mktemp(request.param))


def test_every_request_the_operator_makes_is_allowed(run: Run) -> None:
    grants = grants_for(run.rendered, SA, NAMESPACE)
    assert grants
    denied = sorted({r for r in run.requests if not allowed(grants, r)}, key=str)
    assert not denied, "requests the chart's RBAC would deny:\n" + "\n".join(map(str, denied))


def test_nothing_is_granted_that_the_operator_does_not_use(run: Run) -> None:
    grants = grants_for(run.rendered, SA, NAMESPACE)
    unused = sorted(p for p in granted_permissions(grants) if not used_by(p, run.requests))
    assert not unused, "granted but never used (scope, group, resource, verb):\n" + "\n".join(
        map(str, unused)
    )


def test_secrets_create_only_and_no_wildcards(run: Run) -> None:
    """Secrets: the operator creates each ModelDeployment's admin token Secret, with a token it
    derives from its own key (a file in its pod), and reads, lists, watches or changes none."""
    for g in grants_for(run.rendered, SA, NAMESPACE):
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in g.rule[key]
        if "secrets" in g.rule["resources"]:
            assert g.rule["resources"] == ["secrets"] and g.rule["verbs"] == ["create"]
    assert {r.verb for r in run.requests if r.resource == "secrets"} == {"create"}
    assert not allowed(grants_for(run.rendered, SA, NAMESPACE), Request("get", "", "secrets", "", "team-a"))
    assert not allowed(grants_for(run.rendered, SA, NAMESPACE), Request("list", "", "secrets", "", ""))


def test_scope_of_each_mode(run: Run) -> None:
    kinds = {o["kind"] for o in run.rendered}
    namespaces = {r.namespace for r in run.requests}
    if "ClusterRole" in kinds:
        assert not kinds & {"Role", "RoleBinding"}
        assert "" in namespaces  # watches across all namespaces
    else:
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
        assert {o["metadata"]["namespace"] for o in by_kind(run.rendered, "Role")} == {"team-a", "team-b"}
        assert namespaces == {"team-a", "team-b"}  # never outside the watched namespaces, never cluster-wide


def test_server_side_apply_creations_are_authorized_as_create(run: Run) -> None:
    creates = {(r.group, r.resource) for r in run.requests if r.verb == "create"}
    assert {
        ("", "configmaps"),
        ("apps", "deployments"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
    } <= creates


def test_probe_and_metrics_endpoints_answer_where_the_chart_points(run: Run) -> None:
    assert run.health[0] == 200
    status, text = run.metrics
    assert status == 200 and "modeldeploy_reconciles_total" in text


def test_the_evaluator_denies_what_it_should() -> None:
    # Guards the test itself: the evaluator must not allow everything.
    grants = grants_for(objects(MODES["namespaced"]), SA, NAMESPACE)
    ok = Request("patch", "apps", "deployments", "", "team-a")
    assert allowed(grants, ok)
    for denied in (
        Request("patch", "apps", "deployments", "", "elsewhere"),  # unwatched namespace
        Request("list", "apps", "deployments", "", ""),  # cluster-wide
        Request("delete", "apps", "deployments", "", "team-a"),  # verb not granted
        Request("get", "", "secrets", "", "team-a"),  # resource not granted
        Request("patch", "apps", "deployments", "scale", "team-a"),  # subresource not granted
        Request("patch", "batch", "deployments", "", "team-a"),  # group not granted
    ):
        assert not allowed(grants, denied), denied
    assert not grants_for(objects(MODES["namespaced"]), "someone-else", NAMESPACE)
