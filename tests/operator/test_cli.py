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

    code = ("import sys, modeldeploy.handlers, modeldeploy.operator_main, modeldeploy.crdgen, modeldeploy.reconcile; "
            "ok = {'modelserver', 'modelserver.flags', 'modelserver.contract'}; "  # pure Python: the flag parser (extraArgs), the ports and paths
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'modelserver') and m not in ok); "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
