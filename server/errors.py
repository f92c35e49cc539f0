"""The server's one error hierarchy and its one mapping to gRPC status codes.

Every failure a client can cause or meet is a :class:`ServerError` subclass that carries its
gRPC status code as a class attribute and a message saying what is wrong and what to do.
:func:`status_of` is the single place that turns any exception into ``(code, message)``; the
servicers and the auth interceptor abort through it, so no error type can surface as a crash
for lack of a code (the failure mode of KServe's interceptor that the house style warns about).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import grpc

log = logging.getLogger(__name__)


class ServerError(Exception):
    """Base of every error the server reports to a client; ``code`` is its gRPC status."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = clip_message(message)
        super().__init__(message)
        self.message = message


MAX_MESSAGE_CHARS = 1000


def clip_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut in the middle to ``limit`` characters, keeping its start (what is
    wrong) and its end (what to do): a 100 KB policy name must not come back 100 KB long."""
    if len(message) <= limit:
        return message
    keep = (limit - 5) // 2
    return f"{message[:keep]} ... {message[-keep:]}"


class PolicyNotFound(ServerError):
    """The request names a policy the repository does not hold."""

    code = grpc.StatusCode.NOT_FOUND


class VersionNotFound(ServerError):
    """The policy exists but the requested version is not loaded."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidRequest(ServerError):
    """A malformed request: missing fields, bad shapes or data types, unknown parameters."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidObservations(InvalidRequest):
    """Observations of the wrong size, or containing NaN or infinity."""


class BatchSizeError(InvalidRequest):
    """An empty batch, or one above the server's per-request limit."""


class NotReady(ServerError):
    """The policy (or the server) has nothing servable yet: retry later or fix the repository."""

    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(ServerError):
    """The server is draining after SIGTERM and takes no new calls; retry on another replica."""

    code = grpc.StatusCode.UNAVAILABLE


class Overloaded(ServerError):
    """The micro-batching queue is full; back off and retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServerError):
    """The client's deadline passed before the server could answer."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServerError):
    """Missing or wrong bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class InferenceFailed(ServerError):
    """onnxruntime failed on valid input: a server-side fault, logged with its traceback."""

    code = grpc.StatusCode.INTERNAL


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for any exception raised while serving a call.

    Domain errors carry their own; anything else is a bug, logged with its traceback and
    reported as INTERNAL without leaking internals to the client.
    """
    if isinstance(error, ServerError):
        return error.code, error.message
    log.error("unexpected error while serving a call", exc_info=error)
    return (
        grpc.StatusCode.INTERNAL,
        f"internal server error ({type(error).__name__}); the server log has the traceback",
    )


def all_error_types() -> list[type[ServerError]]:
    """Every :class:`ServerError` subclass (recursively), for exhaustive tests."""
    found: list[type[ServerError]] = []
    pending: list[type[ServerError]] = [ServerError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
