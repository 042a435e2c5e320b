"""The config-file pollers start from what is in force, not from the file as it reads when they
start: a ConfigMap updated while a new pod loads its models (the initial load reads the model
config seconds before the pollers start) is still applied. Found by e2e/test_operator_kill.py: a
new pod kept `versions: [123]` from its first read while its files said [1, 123] and its routing
table labelled 1, and never became ready."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from modelserver.config.model_config import load_model_config_file
from modelserver.core.manager import AVAILABLE, Manager
from modelserver.core.pollers import apply_initial_routing, model_config_poller, routing_poller


def config_text(base: Path, versions: list[int]) -> str:
    listed = "".join(f"        versions: {v}\n" for v in versions)
    return (f'model_config_list {{\n  config {{\n    name: "m"\n    base_path: "{base}"\n'
            f'    model_platform: "tensorflow"\n    model_version_policy {{\n      specific {{\n{listed}'
            "      }\n    }\n  }\n}\n")


def two_versions(models_dir: Path, tmp_path: Path) -> Path:
    base = tmp_path / "m"
    for v in (1, 2):
        shutil.copytree(models_dir / "half_plus_two_tf1" / "1", base / str(v))
    return base


def available(manager: Manager) -> list[int]:
    return sorted(r.version for r in manager.status("m") if r.state == AVAILABLE)


async def test_a_model_config_changed_during_the_initial_load_is_applied_at_the_first_poll(
        models_dir: Path, tmp_path: Path) -> None:
    base, path = two_versions(models_dir, tmp_path), tmp_path / "models.config"
    path.write_text(config_text(base, [1]))
    in_force = load_model_config_file(path)  # what the server read at start
    manager = Manager(ThreadPoolExecutor(1))
    await manager.reload(in_force)
    path.write_text(config_text(base, [1, 2]))  # the ConfigMap changed while it loaded
    poller = model_config_poller(manager, path, in_force)
    await poller.poll(1)
    assert available(manager) == [1, 2]


async def test_an_unchanged_model_config_is_not_applied_again(models_dir: Path, tmp_path: Path) -> None:
    base, path = two_versions(models_dir, tmp_path), tmp_path / "models.config"
    path.write_text(config_text(base, [1]))
    in_force = load_model_config_file(path)
    manager = Manager(ThreadPoolExecutor(1))
    await manager.reload(in_force)
    poller = model_config_poller(manager, path, in_force)
    assert poller.last == path.read_text()


async def test_the_routing_poller_starts_from_the_text_the_initial_routing_applied(
        models_dir: Path, tmp_path: Path) -> None:
    base, path = two_versions(models_dir, tmp_path), tmp_path / "models.config"
    path.write_text(config_text(base, [1, 2]))
    manager = Manager(ThreadPoolExecutor(1))
    await manager.reload(load_model_config_file(path))
    routing = tmp_path / "routing.json"
    first = json.dumps({"generation": 1, "models": {"m": {"labels": {"stable": 1}}}})
    routing.write_text(first)
    assert await apply_initial_routing(manager, routing) == first
    routing.write_text(json.dumps({"generation": 2, "models": {"m": {"labels": {"stable": 2}}}}))
    await routing_poller(manager, routing, first).poll(1)
    assert (manager.routing.generation, manager.models["m"].labels) == (2, {"stable": 2})
    routing.write_text("{not json")
    assert await apply_initial_routing(manager, routing) is None
