"""Errors with TF Serving's status codes, and their HTTP mapping.

Every client-visible failure in the server is a ServingError carrying a gRPC status code; the
REST layer maps it to an HTTP status exactly as TF Serving does (see `http_status`). What goes on
the wire is `wire_message(exc.message)`: at most MAX_WIRE_MESSAGE_BYTES of UTF-8, always
encodable (a message may quote client text, e.g. 100,000 unknown input names or a lone surrogate).
"""

from __future__ import annotations

import grpc

_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failure to report to the client with a gRPC status code and a message (and, where
    HTTP has a more precise status than the code's mapping, e.g. 413, that status)."""

    def __init__(self, code: grpc.StatusCode, message: str, http: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self._http = http

    @property
    def http_status(self) -> int:
        return self._http if self._http is not None else http_status(self.code)

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


# gRPC sends the message in a trailer, percent-encoded (up to 3 bytes per byte), and clients
# refuse metadata beyond 8 KiB (grpc.max_metadata_size): 2 KiB of UTF-8 stays under it.
MAX_WIRE_MESSAGE_BYTES = 2048


def wire_message(message: str) -> str:
    """`message` as a client receives it: valid UTF-8 (a lone surrogate written as `\\udXXX`),
    cut to MAX_WIRE_MESSAGE_BYTES with the number of bytes left out."""
    if len(message) <= MAX_WIRE_MESSAGE_BYTES // 4 and message.isascii():
        return message
    data = message.encode("utf-8", "backslashreplace")
    if len(data) <= MAX_WIRE_MESSAGE_BYTES:
        return data.decode("utf-8")
    head = data[:MAX_WIRE_MESSAGE_BYTES - 40].decode("utf-8", "ignore")
    return f"{head}... ({len(data) - len(head.encode())} more bytes)"


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def resource_exhausted(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def deadline_exceeded(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)

