"""The shipped distribution holds no test fakes: the fake API server and the local cluster live in
e2e/localcluster (development only), never in the `modeldeploy` wheel the images install."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_contains_no_fakes_or_local_cluster(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):  # what the Dockerfiles COPY
        shutil.copy(ROOT / name, src / name)
    for tree in ("operator/modeldeploy", "server_image/modelserver"):
        shutil.copytree(ROOT / tree, src / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("modeldeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("modeldeploy/controller/reconcile.py") for n in names)  # the wheel is the real one...
    offending = [n for n in names if "fake" in n.lower() or "testing" in n.split("/") or n.startswith("localcluster")]
    assert offending == []  # ...and ships no fake
