"""What the server re-reads while it runs: version directories (`--file_system_poll_wait_seconds`),
the model config file and the routing file (both every `--model_config_file_poll_wait_seconds`).

A config file is applied when its text changes; one that could not be applied for a reason that
may pass (a label on a version that is still loading) is applied again at every poll until it
is, and its refusal is logged once; one that is broken (does not parse, or is older than what is
in force) waits for its next change. In each poll the model config goes first, so that a routing
table that points a label at a version the model config has just added finds it loaded.

A poller starts from what is in force, not from the file as it reads when the poller starts: the
model config was read before the initial load (seconds earlier, with TensorFlow), and a file that
changed in between (a ConfigMap updated while a new pod starts) must still be applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from modelserver.config.files import read_text
from modelserver.config.flags import Flags
from modelserver.config.model_config import ConfigError, ModelConfig, load_model_config_file
from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager
from modelserver.core.routing import load_table, table_from_text

log = logging.getLogger("modelserver")

# A refusal with one of these codes waits for the file to change; any other is retried each poll.
_FINAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED}


class FilePoller:
    """Applies a file (`apply(path)`) when its text changed since it was last applied."""

    def __init__(self, path: Path, what: str, apply: Callable[[Path], Awaitable[None]],
                 applied_text: str | None = None) -> None:
        self.path, self.what, self.apply = path, what, apply
        self.last = applied_text  # the text in force (or finally refused)
        self.failed: str | None = None

    async def poll(self, every_s: float) -> None:
        try:
            text = self.path.read_text()
        except OSError as exc:
            log.error("cannot read %s %s: %s", self.what, self.path, exc)
            return
        if text == self.last:
            return
        try:
            await self.apply(self.path)
        except ConfigError as exc:
            log.error("%s not applied: %s", self.what, exc)
            self.last = text  # a broken file stays broken until it changes
        except ServingError as exc:
            if exc.code in _FINAL:
                log.error("%s not applied: %s", self.what, exc.message)
                self.last = text
            elif exc.message != self.failed:
                log.error("%s not fully applied (retrying every %gs): %s", self.what, every_s, exc.message)
            self.failed = exc.message
        else:
            log.info("%s %s applied", self.what, self.path)
            self.last, self.failed = text, None


def model_config_poller(manager: Manager, path: Path, in_force: list[ModelConfig]) -> FilePoller:
    """`in_force`: the configs the initial load applied. The file's text now is the baseline only
    if it says the same; otherwise the first poll applies it."""
    async def apply(p: Path) -> None:
        await manager.reload(load_model_config_file(p))

    text = _read(path)
    try:
        same = text is not None and load_model_config_file(path) == in_force
    except ConfigError:
        same = False
    return FilePoller(path, "model config file", apply, text if same else None)


def routing_poller(manager: Manager, path: Path, applied_text: str | None) -> FilePoller:
    async def apply(p: Path) -> None:
        manager.apply_routing(load_table(str(p)))

    return FilePoller(path, "routing config file", apply, applied_text)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


async def apply_initial_routing(manager: Manager, path: Path) -> str | None:
    """Puts the routing file's table in force after the initial load and returns the text it
    applied; None (logged) when it is not in force yet, and the server stays not ready until a
    poll applies it."""
    try:
        text = read_text(path, "routing config file")
        manager.apply_routing(table_from_text(text, str(path)))
    except (ConfigError, ServingError) as exc:  # unreadable or not JSON; a table refused
        log.error("routing config file not applied yet: %s", exc)
        return None
    log.info("routing generation %d in force from %s", manager.routing.generation, path)
    return text


def start_pollers(flags: Flags, manager: Manager, in_force: list[ModelConfig],
                  routing_text: str | None) -> list[asyncio.Task[None]]:
    """`in_force`: the model configs of the initial load; `routing_text`: the routing file's text
    that `apply_initial_routing` put in force (None: none yet)."""
    tasks = []
    if flags.file_system_poll_wait_seconds > 0:
        tasks.append(asyncio.ensure_future(_poll_versions(manager, flags.file_system_poll_wait_seconds)))
    every = flags.model_config_file_poll_wait_seconds
    pollers = []
    if flags.model_config_file and every > 0:
        pollers.append(model_config_poller(manager, Path(flags.model_config_file), in_force))
    if flags.routing_config_file and (every > 0 or routing_text is None):
        pollers.append(routing_poller(manager, Path(flags.routing_config_file), routing_text))
    if pollers:
        tasks.append(asyncio.ensure_future(_poll_files(pollers, every if every > 0 else 1)))
    return tasks


async def _poll_versions(manager: Manager, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await manager.poll()
        except Exception:
            log.exception("file-system poll failed")


async def _poll_files(pollers: list[FilePoller], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        for p in pollers:
            await p.poll(every_s)
