"""Fixtures for the operator tests: the fake API server, kubectl, and the real operator process.

`fake` is a `localcluster.fakeapi.FakeKubeAPI` with our CRD installed; `operator` starts the
real `modeldeploy operator` (kopf) as a subprocess against it and stops it (by PID) afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster.fakeapi import FakeKubeAPI
from operator_support import CRD_FILE, OperatorProcess


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        api.apply_yaml(CRD_FILE.read_text())
        yield api


@pytest.fixture
def kubeconfig(fake: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def operator(kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log").start()
    yield op
    op.stop()
