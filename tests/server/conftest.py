"""Fixtures for the model server tests: SavedModels built once per session, and real `model-server`
processes (server_support.ServerProcess) started per module and stopped by PID with SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_support import REPO, ServerProcess


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every demo model (no MLP), built once: half_plus_two (TF2), half_plus_two_tf1, two_versions,
    bytes_model, and models.config serving them all."""
    out = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, "-m", "demomodels", "--out", str(out), "--no-mlp"], check=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, cwd=REPO)
    return out


@pytest.fixture(scope="session")
def demo_models(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`models_dir`'s models plus the MLP, with a models.config serving them all (two_versions:
    policy all, labels stable→1, canary→2)."""
    import demomodels as demo

    root = tmp_path_factory.mktemp("d_models")
    demo.build_mlp(root / demo.MLP / "1")
    names = [demo.HALF_PLUS_TWO, demo.HALF_PLUS_TWO_TF1, demo.TWO_VERSIONS, demo.BYTES_MODEL]
    (root / "models.config").write_text(demo.model_config_text(
        [(n, str(models_dir / n)) for n in names] + [(demo.MLP, str(root / demo.MLP))],
        labels={demo.TWO_VERSIONS: {"stable": 1, "canary": 2}},
        policies={demo.TWO_VERSIONS: "all {}"}))
    for n in names:
        (root / n).symlink_to(models_dir / n)
    return root


@pytest.fixture(scope="module")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: start_server(args, ready=True) -> ServerProcess; all stopped at module end."""
    started: list[ServerProcess] = []

    def start(args: list[str], ready: bool = True) -> ServerProcess:
        srv = ServerProcess(args, tmp_path_factory.mktemp("server") / "server.log")
        started.append(srv)
        if ready:
            srv.wait_ready()
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess], models_dir: Path) -> ServerProcess:
    """One server for the API tests, serving every model of models.config."""
    return start_server([f"--model_config_file={models_dir / 'models.config'}", "--file_system_poll_wait_seconds=0"])
