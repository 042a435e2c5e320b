"""Fixtures for the operator tests: kubectl's kubeconfig for the local API server (`fake`, shared
by every area: tests/conftest.py) and the real operator process.

`operator` starts the real `modeldeploy operator` (kopf) as a subprocess against `fake` and stops
it (by PID) afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from localcluster.fakeapi import FakeKubeAPI
from operator_support import OperatorProcess


@pytest.fixture
def kubeconfig(fake: FakeKubeAPI, tmp_path: Path) -> Path:
    return fake.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def operator(kubeconfig: Path, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, tmp_path / "operator.log").start()
    yield op
    op.stop()
