"""`python -m localcluster`'s bad input and its lock: clear errors, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from localcluster import cli
from localcluster.lock import AlreadyRunning, StateLock


@pytest.mark.parametrize(("args", "message"), [
    (["--mount", "models=/tmp"], "expected NODEPATH=DIR with an absolute NODEPATH"),
    (["--mount", "/models"], "expected NODEPATH=DIR"),
    (["--mount", "/models=/no/such/dir"], "is not a directory (for the demo models: make demo-models)"),
    (["--example", "/no/such.yaml"], "no such file"),
    (["--scrape-interval", "fast"], "invalid float value"),
])
def test_bad_arguments_are_named(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_second_run_from_the_same_state_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = StateLock(tmp_path)
    holder.acquire()
    holder.record({"pid": 4242, "kubeconfig": "/x/kubeconfig", "rest": "http://127.0.0.1:1"})
    try:
        assert cli.main(["--state-dir", str(tmp_path), "--no-example"]) == 1
        err = capsys.readouterr().err
        assert "a local cluster is already running from this state directory (pid 4242, KUBECONFIG=/x/kubeconfig)" in err
        assert "kill 4242" in err and "rest: http://127.0.0.1:1" in err
        with pytest.raises(AlreadyRunning):
            StateLock(tmp_path).acquire()
    finally:
        holder.release()
    again = StateLock(tmp_path)
    again.acquire()  # released: free again, and run.json gone with it
    assert again.holder()["pid"] != 4242
    again.release()
