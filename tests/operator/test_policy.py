"""What the cluster admin allows a ModelDeployment (decisions.policy: hostPath, the Prometheus URLs
the operator fetches) and the admin tokens derived from the operator's key (decisions.admintoken),
table by table; and the operator's key file (cli.operator.load_token_key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from modeldeploy.api import v1alpha1 as api
from modeldeploy.cli.operator import load_token_key
from modeldeploy.decisions import admintoken, plan
from modeldeploy.decisions.policy import Policy, problem, under, url_under


def spec(**fields: Any) -> api.ModelDeploymentSpec:
    body: dict[str, Any] = {"model": {"storage": {"pvc": {"claimName": "models"}}}, **fields}
    return api.ModelDeploymentSpec.model_validate(body)


def host_path(path: str) -> api.ModelDeploymentSpec:
    return spec(model={"storage": {"hostPath": {"path": path}}})


@pytest.mark.parametrize(("path", "prefix", "inside"), [
    ("/models/a", "/models", True),
    ("/models", "/models", True),
    ("/models/", "/models/", True),
    ("/models-private/a", "/models", False),  # whole path components only
    ("/models/../etc/shadow", "/models", False),  # normalised first
    ("/models//a/./b", "/models/a", True),
    ("/etc", "/", True),
])
def test_host_path_prefixes_match_whole_components(path: str, prefix: str, inside: bool) -> None:
    assert under(path, prefix) is inside


@pytest.mark.parametrize(("url", "prefix", "inside"), [
    ("http://prometheus.monitoring:9090", "http://prometheus.monitoring:9090", True),
    ("http://prometheus.monitoring:9090/", "http://prometheus.monitoring:9090", True),
    ("http://Prometheus.monitoring:9090/", "http://prometheus.monitoring:9090", True),  # host names ignore case
    ("http://prom/team-a/api", "http://prom/team-a", True),
    ("http://prom/team-ab", "http://prom/team-a", False),
    ("http://prom:80/", "http://prom", True),  # the scheme's default port
    ("https://prom/", "http://prom", False),
    ("http://prometheus.monitoring:9090@evil.example/", "http://prometheus.monitoring:9090", False),  # user:password@
    ("http://prometheus.monitoring:9090.evil.example/", "http://prometheus.monitoring:9090", False),
    ("http://prometheus.monitoring:9091/", "http://prometheus.monitoring:9090", False),
    ("http://prom:99999/", "http://prom", False),  # not a port
])
def test_prometheus_url_prefixes_compare_scheme_host_port_and_path(url: str, prefix: str, inside: bool) -> None:
    assert url_under(url, prefix) is inside


PROM = {"url": "http://prom.team-a:9090"}
SCALE = {"maxReplicas": 3, "target": 100}
CASES: list[tuple[str, api.ModelDeploymentSpec, Policy, str | None]] = [
    ("pvc, strictest policy", spec(), Policy(False, ("/models",), ("http://prom",)), None),
    ("hostPath allowed", host_path("/etc"), Policy(), None),
    ("hostPath off", host_path("/models/a"), Policy(allow_host_path=False), "HostPathNotAllowed"),
    ("hostPath under a prefix", host_path("/models/a"), Policy(True, ("/data", "/models")), None),
    ("hostPath outside the prefixes", host_path("/etc"), Policy(True, ("/models",)), "HostPathNotAllowed"),
    ("autoscaling's Prometheus, any", spec(autoscaling={**SCALE, "prometheus": PROM}), Policy(), None),
    ("autoscaling's Prometheus, listed", spec(autoscaling={**SCALE, "prometheus": PROM}),
     Policy(prometheus_url_prefixes=("http://prom.team-a:9090",)), None),
    ("autoscaling's Prometheus, not listed", spec(autoscaling={**SCALE, "prometheus": PROM}),
     Policy(prometheus_url_prefixes=("http://prometheus.monitoring:9090",)), "PrometheusURLNotAllowed"),
    ("rollout's Prometheus, not listed", spec(rollout={"steps": [10], "prometheus": PROM}),
     Policy(prometheus_url_prefixes=("http://prometheus.monitoring:9090",)), "PrometheusURLNotAllowed"),
    ("no Prometheus of its own", spec(autoscaling=SCALE), Policy(prometheus_url_prefixes=("http://x",)), None),
]


@pytest.mark.parametrize(("case", "s", "policy", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_admin_policy_refuses_what_it_does_not_allow(case: str, s: api.ModelDeploymentSpec, policy: Policy,
                                                         reason: str | None) -> None:
    found = problem(s, policy)
    assert (found.reason if found else None) == reason
    if found is not None:  # the message names the field and the setting that allows it
        assert "spec." in found.message and "--" in found.message and "operator." in found.message
        body = {"metadata": {"name": "m", "namespace": "ml", "uid": "u"}, "spec": s.model_dump(by_alias=True, exclude_none=True)}
        assert plan.assess(body, s, True, None, policy) == found  # refused before anything is applied


def test_tokens_are_derived_per_model_deployment_and_stable() -> None:
    key = b"k" * 32
    t = admintoken.derive(key, "ml", "m", "uid-1")
    assert t == admintoken.derive(key, "ml", "m", "uid-1") and len(t) == 64
    others = {admintoken.derive(key, "ml", "m", "uid-2"), admintoken.derive(key, "ml2", "m", "uid-1"),
              admintoken.derive(key, "ml", "m2", "uid-1"), admintoken.derive(b"j" * 32, "ml", "m", "uid-1"),
              admintoken.derive(key, "ml/m", "", "uid-1")}
    assert t not in others and len(others) == 5


@pytest.mark.parametrize(("created_at", "now", "refused", "due"), [
    (None, 0.0, False, True),  # never sent by this process (a new ModelDeployment, a restarted operator)
    (100.0, 399.0, False, False),
    (100.0, 400.0, False, True),  # the periodic create, in case the Secret went
    (100.0, 105.0, True, False),
    (100.0, 110.0, True, True),  # pods refuse the token: try again soon (someone may have deleted it)
])
def test_when_the_token_secret_is_created_again(created_at: float | None, now: float, refused: bool, due: bool) -> None:
    assert admintoken.create_due(created_at, now, refused, 300.0) is due


def test_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = tmp_path / "key"
    given.write_text("s" * 40 + "\n")
    assert load_token_key(str(given)) == b"s" * 40
    given.write_text("short")
    with pytest.raises(ValueError, match="at least 16"):
        load_token_key(str(given))
    with pytest.raises(OSError):
        load_token_key(str(tmp_path / "missing"))  # a flag naming a file that is not there: no key made up
    # no flag: a key of its own, made once and kept (a restarted operator derives the same tokens)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first = load_token_key("")
    assert len(first) >= 32 and load_token_key("") == first
    made = tmp_path / "state" / "modeldeploy" / "token-key"
    assert made.stat().st_mode & 0o077 == 0 and os.listdir(made.parent) == ["token-key"]


def test_operators_started_together_agree_on_one_key(tmp_path: Path) -> None:
    code = "from modeldeploy.cli.operator import load_token_key; print(load_token_key('').decode())"
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(keys) == 1 and all(p.returncode == 0 for p in procs)
