"""`modeldeploy operator` on the command line (the operator itself runs in test_operator.py)."""

from __future__ import annotations

import pytest
from modeldeploy import cli


def test_operator_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["operator", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--namespace", "--server-image", "--resync-seconds", "--model-status-url", "--metrics-port", "--health-port"):
        assert flag in out


def test_unknown_operator_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["operator", "--no-such-flag"])
    assert done.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_operator_without_a_cluster_fails_clearly(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    env = {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "modeldeploy.cli", "operator", "--metrics-port", "0", "--health-port", "0"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "kube" in (p.stdout + p.stderr).lower() and "config" in (p.stdout + p.stderr).lower()


def test_the_operator_never_imports_tensorflow() -> None:
    import subprocess
    import sys

    code = ("import sys, modeldeploy.controller.handlers, modeldeploy.controller.run, modeldeploy.api.crdgen, modeldeploy.controller.reconcile; "
            "ok = {'modelserver', 'modelserver.config', 'modelserver.config.flags', 'modelserver.config.storage_uri', 'modelserver.contract'}; "  # pure Python: the flag parser (extraArgs), the storage URI forms, the ports and paths
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'modelserver') and m not in ok); "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


# ---- promote / rollback / abort ------------------------------------------------------------------


def _md_body(labels: dict[str, int] | None = None, traffic: int | None = None, phase: str = "") -> dict:
    spec: dict = {"model": {"storage": {"hostPath": {"path": "/m"}}, "versions": [3, 4]}}
    if labels is not None:
        spec["versionLabels"] = labels
    if traffic is not None:
        spec["traffic"] = {"canary": traffic}
    body = {"metadata": {"name": "m", "namespace": "ml", "resourceVersion": "9", "generation": 5}, "spec": spec}
    if phase:
        body["status"] = {"rollout": {"phase": phase}}
    return body


@pytest.mark.parametrize(("verb", "body", "patch", "words"), [
    ("promote", _md_body({"stable": 3, "canary": 4}, 10),
     {"metadata": {"resourceVersion": "9"}, "spec": {"versionLabels": {"canary": None, "stable": 4}, "traffic": {"canary": 0}}},
     "stable -> version 4"),
    ("rollback", _md_body({"stable": 3, "canary": 4}),
     {"metadata": {"resourceVersion": "9"}, "spec": {"versionLabels": {"canary": None}}}, "stable stays on version 3"),
    ("promote", _md_body({"stable": 4}, phase="Progressing"),
     {"metadata": {"resourceVersion": "9", "annotations": {"serving.modeldeploy.io/rollout-command": "promote@5"}}},
     "skip the remaining"),
    ("rollback", _md_body({"stable": 4}, phase="Progressing"),
     {"metadata": {"resourceVersion": "9", "annotations": {"serving.modeldeploy.io/rollout-command": "abort@5"}}},
     "roll back now"),
])
def test_verbs_plan_the_patch_a_user_would_type(verb: str, body: dict, patch: dict, words: str) -> None:
    from modeldeploy.cli import verbs

    got, what = verbs.plan_patch(verb, body)
    assert got == patch and words in what


@pytest.mark.parametrize(("verb", "body", "words"), [
    ("promote", _md_body({"stable": 3}), "no 'canary' label"),
    ("abort", _md_body({"stable": 3, "canary": 4}), "no rollout is in progress"),
])
def test_verbs_refuse_what_they_cannot_do(verb: str, body: dict, words: str) -> None:
    from modeldeploy.cli import verbs

    with pytest.raises(verbs.VerbError, match=words):
        verbs.plan_patch(verb, body)


def test_promote_and_rollback_patch_a_real_api_server(fake, kubeconfig, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from operator_support import GROUP, PLURAL, make_namespace, md

    make_namespace(fake, "ml")
    fake.add_object(md("m", "ml", model={"storage": {"hostPath": {"path": "/m"}}, "versions": [3, 4]},
                       versionLabels={"stable": 3, "canary": 4}, traffic={"canary": 10}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert cli.main(["promote", "m", "-n", "ml"]) == 0
    assert "stable -> version 4" in capsys.readouterr().out
    spec = fake.get(GROUP, PLURAL, "ml", "m")["spec"]
    assert spec["versionLabels"] == {"stable": 4} and spec["traffic"] == {"canary": 0}
    assert cli.main(["rollback", "m", "-n", "ml"]) == 1  # nothing left to drop
    assert "no 'canary' label" in capsys.readouterr().err
    assert cli.main(["promote", "nope", "-n", "ml"]) == 1
    assert "not found" in capsys.readouterr().err
