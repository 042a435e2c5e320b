"""What the server re-reads while it runs: version directories (`--file_system_poll_wait_seconds`),
the model config file and the routing file (both every `--model_config_file_poll_wait_seconds`).

A config file is applied when its text changes; one that could not be applied for a reason that
may pass (a label on a version that is still loading) is applied again at every poll until it
is, and its refusal is logged once; one that is broken (does not parse, or is older than what is
in force) waits for its next change. In each poll the model config goes first, so that a routing
table that points a label at a version the model config has just added finds it loaded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from modelserver.config.flags import Flags
from modelserver.config.model_config import ConfigError, load_model_config_file
from modelserver.core.errors import ServingError
from modelserver.core.manager import Manager
from modelserver.core.routing import load_table

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


def model_config_poller(manager: Manager, path: Path) -> FilePoller:
    async def apply(p: Path) -> None:
        await manager.reload(load_model_config_file(p))

    text = _read(path)
    return FilePoller(path, "model config file", apply, text)


def routing_poller(manager: Manager, path: Path, applied: bool) -> FilePoller:
    async def apply(p: Path) -> None:
        manager.apply_routing(load_table(str(p)))

    return FilePoller(path, "routing config file", apply, _read(path) if applied else None)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


async def apply_initial_routing(manager: Manager, path: Path) -> bool:
    """The routing file's table after the initial load; False (logged) when it is not in force
    yet, and the server stays not ready until a poll applies it."""
    try:
        manager.apply_routing(load_table(str(path)))
    except (ConfigError, ServingError) as exc:  # unreadable or not JSON; a table refused
        log.error("routing config file not applied yet: %s", exc)
        return False
    log.info("routing generation %d in force from %s", manager.routing.generation, path)
    return True


def start_pollers(flags: Flags, manager: Manager, routing_applied: bool) -> list[asyncio.Task[None]]:
    tasks = []
    if flags.file_system_poll_wait_seconds > 0:
        tasks.append(asyncio.ensure_future(_poll_versions(manager, flags.file_system_poll_wait_seconds)))
    every = flags.model_config_file_poll_wait_seconds
    pollers = []
    if flags.model_config_file and every > 0:
        pollers.append(model_config_poller(manager, Path(flags.model_config_file)))
    if flags.routing_config_file and (every > 0 or not routing_applied):
        pollers.append(routing_poller(manager, Path(flags.routing_config_file), routing_applied))
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
