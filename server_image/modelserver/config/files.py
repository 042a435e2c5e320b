"""Reading the server's own files: one way to read a config file or refuse it, and the error that
says so.

Every file the server is pointed at (model config, monitoring config, batching parameters, SSL
config, routing table, warmup plan and warmup requests) is read through `read_text` or
`read_json`, so that a file that is missing, unreadable or not text fails with one message shape:
`cannot read <what> <path>: <reason>` (and `<what> <path> is not JSON: <reason>`), raised as
`ConfigError` (or the subclass a caller names, such as batching's BatchingConfigError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or flag combination that cannot be served (reported, exit code 1)."""


def read_text(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> str:
    """The file's text (UTF-8); `error` naming `what` and the reason when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def read_json(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> Any:
    """The file's JSON document; `error` when it cannot be read or is not JSON."""
    return parse_json(read_text(path, what, error), what, path, error)


def parse_json(text: str, what: str, path: str | Path, error: type[ConfigError] = ConfigError) -> Any:
    """`text` (read from `path`) as a JSON document; `error` when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{what} {path} is not JSON: {exc}") from None
