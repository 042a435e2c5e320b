"""The fixtures every test area shares, one per real component: the model-server (its SavedModels
built once, processes started per module), Prometheus (started per module), and the local API
server (`fake`). Each area keeps its own other fixtures in tests/<area>/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from localcluster.fakeapi import FakeKubeAPI
from operator_support import CRD_FILE
from server_support import REPO, ServerProcess
from support import Prometheus


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
    """Factory: start_server(args, ready=True) -> a real model-server process (server_support.
    ServerProcess, on free loopback ports); all stopped by PID at module end."""
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
def start_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Prometheus]]:
    """Factory: start_prometheus(jobs, rule_groups=None) -> a real Prometheus (support.Prometheus)
    scraping `jobs` (support.scrape_job) every second; all stopped by PID at module end. Fails,
    never skips, when Debian's prometheus is not installed."""
    started: list[Prometheus] = []

    def start(jobs: list[dict[str, Any]], rule_groups: list[dict[str, Any]] | None = None) -> Prometheus:
        prom = Prometheus(tmp_path_factory.mktemp("prometheus"), jobs, rule_groups)
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    """The local API server (localcluster.fakeapi) on loopback, with our CRD installed."""
    with FakeKubeAPI() as api:
        api.apply_yaml(CRD_FILE.read_text())
        yield api
