"""Fixtures for the model server tests. The SavedModels and the model-server process factory
(`models_dir`, `demo_models`, `start_server`) are shared by every area: tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from server_support import ServerProcess


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess], models_dir: Path) -> ServerProcess:
    """One server for the API tests, serving every model of models.config."""
    return start_server([f"--model_config_file={models_dir / 'models.config'}", "--file_system_poll_wait_seconds=0"])
