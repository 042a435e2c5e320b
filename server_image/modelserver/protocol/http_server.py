"""What model-server's two aiohttp servers (the REST API and the admin port) share.

A client's malformed HTTP (a bad request line, header or body encoding) is answered 400 by aiohttp
itself, which also logs it with a traceback at ERROR: `quiet_client_errors` drops those records, so
a client cannot fill the log at will (aiohttp's own errors, 5xx, still show).
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError


class ClientErrorsQuiet(logging.Filter):
    """Drops aiohttp's server log records of a client's malformed HTTP (a bad request line,
    header or body encoding, answered 400 by aiohttp): each would write a traceback at ERROR, so
    a client could fill the log at will."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        for _ in range(8):  # the exception and the ones it was raised from
            if exc is None:
                break
            if isinstance(exc, HttpProcessingError) and (exc.code or 400) < 500:
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def quiet_client_errors() -> None:
    """Installs ClientErrorsQuiet on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorsQuiet) for f in logger.filters):
        logger.addFilter(ClientErrorsQuiet())
