"""The operator under RBAC that is enforced, with exactly the chart's rules.

The local API server authenticates ServiceAccount tokens and authorizes each request by the stored
Roles, ClusterRoles and bindings (localcluster.rbac, as kube-apiserver's RBAC authorizer). Here it
holds the chart's rendered ServiceAccount, ClusterRole and ClusterRoleBinding (cluster mode), and
the real operator runs with the chart's arguments and a token of that ServiceAccount (a kubeconfig
holding it, as the local cluster's node agent gives a pod). A scenario drives everything the
operator does: a ModelDeployment created and Ready, a spec change, warmup requests from a ConfigMap
that appears later, missing storage, an HPA, a deletion.

- `test_the_operator_works_with_exactly_the_charts_rules`: the scenario completes and the API
  server denied the operator nothing;
- `test_each_rule_is_needed[...]` (one run per rule, a couple of seconds each): with that one rule taken out of the
  ClusterRole the operator is denied (403) somewhere in the scenario, which the test above would
  fail on. (The other direction, a granted permission nothing uses, is test_helm_rbac.py's audit.)

Fake API server behaviours relied on: RBAC and tokens (above), discovery, list/watch, server-side
apply, status subresource, ownerReference GC, the Deployment readiness stand-in, the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import NAMESPACE, OperatorProcess, by_kind, objects, one
from localcluster import fakeapi
from support import condition, wait_for

GROUP, VERSION = "serving.modeldeploy.io", "v1alpha1"
WATCHED = "team-a"


@dataclass
class Outcome:
    completed: list[str] = field(default_factory=list)  # the scenario steps that finished
    denied: list[Any] = field(default_factory=list)  # the operator's requests answered 403
    log: str = ""


def rules() -> list[dict[str, Any]]:
    return list(one(objects({}), "ClusterRole")["rules"])


def rule_id(rule: dict[str, Any]) -> str:
    return f"{'/'.join(g or 'core' for g in rule['apiGroups'])}:{','.join(rule['resources'])}:{','.join(rule['verbs'])}"


def md(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": WATCHED},
            "spec": {"model": {"storage": {"pvc": {"claimName": "models", "subPath": name}}}, **spec}}


def scenario(fake: Any, step: Callable[[str, Callable[[], Any]], None]) -> None:
    """What the operator does, step by step; `step(what, done)` waits until done() or a denial."""
    def reason(name: str, ctype: str) -> str:
        return str(condition(fake.get(GROUP, "modeldeployments", WATCHED, name), ctype).get("reason", ""))

    md_r = fake.resource_for(f"{GROUP}/{VERSION}", "ModelDeployment")
    fake.add_object(md("classifier", versionLabels={}))
    step("Ready", lambda: reason("classifier", "Ready") == "Available")
    live = fake.get(GROUP, "modeldeployments", WATCHED, "classifier")
    fake.update(md_r, WATCHED, "classifier", {**live, "spec": {**live["spec"], "replicas": 2}})
    step("a spec change applied", lambda: (fake.get("apps", "deployments", WATCHED, "classifier") or {}).get("spec", {}).get("replicas") == 2)
    fake.add_object(md("scorer", warmup={"requests": {"name": "scorer-warmup", "key": "requests.json"}}))
    step("WarmupRequestsNotFound", lambda: reason("scorer", "Degraded") == "WarmupRequestsNotFound")
    fake.add_object(md("ranker", model={"storage": {"pvc": {"claimName": "absent"}}}))
    step("StorageNotFound", lambda: reason("ranker", "Degraded") == "StorageNotFound")
    fake.add_object(md("scaler", autoscaling={"mode": "hpa", "minReplicas": 1, "maxReplicas": 3, "target": 100}))
    step("an HPA", lambda: fake.get("autoscaling", "horizontalpodautoscalers", WATCHED, "scaler"))
    step("an Event", lambda: any(a.resource == "events" and a.verb == "create" and a.code == 201 for a in fake.audit()))
    fake.delete(md_r, WATCHED, "classifier")
    step("deletion", lambda: fake.get(GROUP, "modeldeployments", WATCHED, "classifier") is None)


def run(tmp_path: Path, without: int | None = None) -> Outcome:
    """The operator as the chart deploys it, its ClusterRole less rule `without`, through the scenario."""
    rendered = objects({})
    role = one(rendered, "ClusterRole")
    if without is not None:
        role["rules"] = [r for i, r in enumerate(role["rules"]) if i != without]
    outcome = Outcome()
    with fakeapi.FakeKubeAPI() as fake:
        for ns in (NAMESPACE, WATCHED):
            fake.add_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        fake.add_object({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models", "namespace": WATCHED},
                         "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}})
        for kind in ("CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
            for obj in by_kind(rendered, kind):
                fake.apply_yaml(yaml.safe_dump(obj), NAMESPACE)
        (sa,) = by_kind(rendered, "ServiceAccount")
        operator = start(fake, rendered, sa["metadata"]["name"], tmp_path)
        user = f"system:serviceaccount:{NAMESPACE}:{sa['metadata']['name']}"

        def denials() -> list[Any]:
            return [a for a in fake.audit() if a.user == user and a.code == 403]

        def step(what: str, done: Callable[[], Any]) -> None:
            if not outcome.denied:
                wait_for(lambda: done() or denials(), what, timeout=60)
                outcome.denied = denials()
                if not outcome.denied:
                    outcome.completed.append(what)

        try:
            wait_for(lambda: operator.ready() or denials(), "the operator's liveness endpoint", timeout=60)
            outcome.denied = denials()
            scenario(fake, step)
        finally:
            operator.stop()
            outcome.log = operator.logs()
    return outcome


class ChartOperator(OperatorProcess):
    """chart_support's OperatorProcess, not waiting for liveness (kopf may be denied before it serves)."""

    def start(self) -> ChartOperator:
        self.spawn()
        return self

    def ready(self) -> bool:
        from chart_support import http_get

        return http_get(self.health_url)[0] == 200


def start(fake: Any, rendered: list[dict[str, Any]], account: str, tmp_path: Path) -> ChartOperator:
    """The chart's container args, its Secret volumes as files here, a kubeconfig holding a token of
    its ServiceAccount (what the local cluster's node agent gives the operator's pod)."""
    token = fake.tokens.issue(NAMESPACE, account)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {"server": fake.url}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": account, "namespace": NAMESPACE}}]}))
    secrets = {s["metadata"]["name"]: s["data"] for s in by_kind(rendered, "Secret")}
    return ChartOperator(one(rendered, "Deployment"), kubeconfig, tmp_path / "operator.log", secrets).start()


def test_the_operator_works_with_exactly_the_charts_rules(tmp_path: Path) -> None:
    outcome = run(tmp_path)
    assert not outcome.denied, f"denied: {outcome.denied}\n--- operator log ---\n{outcome.log[-3000:]}"
    assert outcome.completed == ["Ready", "a spec change applied", "WarmupRequestsNotFound", "StorageNotFound", "an HPA",
                                 "an Event", "deletion"], outcome.log[-3000:]


@pytest.mark.parametrize("index", range(len(rules())), ids=[rule_id(r) for r in rules()])
def test_each_rule_is_needed(index: int, tmp_path: Path) -> None:
    outcome = run(tmp_path, without=index)
    assert outcome.denied, (f"without {rule_id(rules()[index])} the operator was denied nothing; steps completed: "
                            f"{outcome.completed}")
