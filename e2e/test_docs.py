"""Every command block of the user docs runs as written (CONTRIBUTING.md, "Docs that run").

For each page (README.md, docs/*.md): a fresh local cluster started as `make run` starts it (the
demo models, `examples/local-canary.yaml`), the model server alone as `make serve` starts it when a
block is marked `serve`, and one bash session in a view of the checkout whose `.localcluster` is
that cluster's state. The blocks run in page order; each command must succeed and print what the
docs show. `make test` runs each page up to its first `e2e` mark (test_page), `make e2e` the whole
page (test_page_whole); every block marked `not-run` is reported as skipped with its reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from docwalk import (
    PAGES,
    ROOT,
    Block,
    Session,
    all_blocks,
    build_demo_models,
    checkout_view,
    matches,
    parse,
    reader_env,
)
from e2e_support import LocalRun, wait_for

COMMAND_TIMEOUT = 300
SH = [b for b in all_blocks() if b.lang == "sh"]
E2E_PAGES = [p for p in PAGES if any("e2e" in b.marks for b in SH if b.page == p)]


def blocks_of(page: str, whole: bool) -> list[Block]:
    out = []
    for b in parse(page, (ROOT / page).read_text()):
        if "e2e" in b.marks and not whole:
            break
        if (b.lang == "sh" and "not-run" not in b.marks) or "output" in b.marks:
            out.append(b)
    return out


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_models(tmp_path_factory.getbasetemp() / "demo_models")


class ModelServer:
    """`make serve`: model-server on the demo models at :8500 and :8501."""

    def __init__(self, models: Path, log: Path):
        cmd = [str(Path(sys.executable).parent / "model-server"), "--port=8500", "--rest_api_port=8501",
               f"--model_config_file={models / 'models.config'}"]
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)

        def ready() -> bool:
            assert self.proc.poll() is None, f"model-server exited (port 8500 or 8501 in use?): {log.read_text()[-2000:]}"
            try:
                return requests.get("http://127.0.0.1:8501/v1/health/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(ready, 300, "make serve's model server ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def walk(page: str, whole: bool, demo_models: Path, tmp: Path) -> None:
    blocks = blocks_of(page, whole)
    if not blocks:
        pytest.skip(f"{page}: no block runs here" + (" before its first e2e mark" if page in E2E_PAGES and not whole else ""))
    run = server = session = None
    try:
        state = tmp / "run" / ".localcluster"  # the name `make run` gives it, as the printed paths show
        state.mkdir(parents=True)
        if any("serve" not in b.marks for b in blocks):
            run = LocalRun(state, ["--mount", f"/models={demo_models}", "--example", str(ROOT / "examples" / "local-canary.yaml")],
                           tmp / "localcluster.err").start()
            run.wait_printed(timeout=600)
        session = Session(checkout_view(tmp / "checkout", state if run else None, demo_models), reader_env(), tmp)
        for b in blocks:
            where = f"{page}:{b.line} ({b.heading})"
            if "output" in b.marks:
                assert run is not None and matches(b.body, "\n".join(run.lines)), f"{where}: make run printed\n" + "\n".join(run.lines if run else [])
                continue
            if "serve" in b.marks and server is None:
                server = ModelServer(demo_models, tmp / "model-server.log")
            for c in b.commands:
                rc, out, err = session.run(c.text, COMMAND_TIMEOUT)
                assert rc == 0, f"{page}:{c.line} ({b.heading}): exit {rc}\n$ {c.text}\n{out}{err}"
                if c.expected is not None:
                    assert matches(c.expected, out), f"{page}:{c.line} ({b.heading})\n$ {c.text}\nexpected:\n" + \
                        "\n".join(c.expected) + f"\nprinted:\n{out}\nstderr:\n{err}"
    finally:
        if session is not None:
            session.close()
        if server is not None:
            server.stop()
        if run is not None:
            run.stop()


@pytest.mark.parametrize("page", PAGES)
def test_page(page: str, demo_models: Path, tmp_path: Path) -> None:
    walk(page, whole=False, demo_models=demo_models, tmp=tmp_path)


@pytest.mark.e2e
@pytest.mark.parametrize("page", E2E_PAGES or [pytest.param("", marks=pytest.mark.skip(reason="no page has an e2e mark"))])
def test_page_whole(page: str, demo_models: Path, tmp_path: Path) -> None:
    walk(page, whole=True, demo_models=demo_models, tmp=tmp_path)


@pytest.mark.parametrize("block", [b for b in SH if "not-run" in b.marks], ids=lambda b: f"{b.page}:{b.line}")
def test_not_run(block: Block) -> None:
    pytest.skip(f"{block.page}:{block.line} ({block.heading}) `{block.first.strip()[:60]}`: {block.marks['not-run']}")


def test_every_block_runs_or_says_why() -> None:
    """Marks are known and carry their reasons; expected output is attached to a command."""
    assert SH, "no sh block found"
    for b in all_blocks():
        where = f"{b.page}:{b.line}"
        assert set(b.marks) <= {"not-run", "e2e", "serve", "output"}, where
        if "not-run" in b.marks or "e2e" in b.marks:
            assert b.marks[next(iter(b.marks))].strip(), f"{where}: a not-run or e2e mark says why"
        if "output" in b.marks:
            assert b.lang == "text" and b.marks["output"] == "make run", where
        if b.lang == "sh" and "not-run" not in b.marks:
            assert b.commands, f"{where}: an sh block with no command"
        assert b.lang != "console", f"{where}: use sh blocks with output as comments (CONTRIBUTING.md)"


def test_the_parser_reads_the_convention() -> None:
    text = "\n".join([
        "## Try", "<!-- not-run: needs GPUs -->", "```sh", "nvidia-smi", "```", "",
        "```sh", "# prose before", "curl -s x \\", "  -d y   # trailing prose", "# {\"a\": 1}", "",
        "# prose after a blank line", "kubectl apply -f - <<'YAML'", "# yaml comment", "kind: X", "YAML",
        "kubectl get md", "```", "```text", "NAME   READY", "local-canary   True", "```",
    ])
    blocks = parse("x.md", text)
    assert blocks[0].marks == {"not-run": "needs GPUs"} and blocks[0].heading == "Try"
    cmds = blocks[1].commands
    assert [c.text for c in cmds] == ["curl -s x \\\n  -d y   # trailing prose",
                                      "kubectl apply -f - <<'YAML'\n# yaml comment\nkind: X\nYAML", "kubectl get md"]
    assert cmds[0].expected == ['{"a": 1}'] and cmds[1].expected is None
    assert cmds[2].expected == ["NAME   READY", "local-canary   True"]
    assert matches(["NAME READY AGE", "x True <age>"], "NAME   READY   AGE\nx      True    3s\n")
    assert matches(["a", "...", "z"], "a\nb\nc\nz") and matches(["a", "...", "z"], "a\nz")
    assert not matches(["x True <age>"], "x False 3s") and not matches(["a"], "a\nb")


def test_session_keeps_state_between_commands(tmp_path: Path) -> None:
    session = Session(tmp_path, dict(os.environ), tmp_path)
    try:
        assert session.run("export A=1; cd /", 10) == (0, "", "")
        assert session.run("echo $A $PWD; echo oops >&2; false | cat", 10) == (1, "1 /\n", "oops\n")
        assert session.run("sleep 30 &\necho started", 10) == (0, "started\n", "")  # background jobs do not hold it
        assert session.run("kill %1 && wait", 10)[0] == 0  # and are the session's jobs
    finally:
        session.close()
