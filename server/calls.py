"""The one call scope: every servicer method runs inside it.

:func:`unary` and :func:`streaming` wrap a servicer method so that a domain error
(:mod:`server.errors`) raised anywhere below becomes the call's gRPC status through
:func:`server.errors.status_of`, a request whose bytes did not decode (:data:`guard.MALFORMED`)
is answered INVALID_ARGUMENT, and every call (every stream message) is counted once, with its
policy and version once the method has resolved them. The servicers hold no try/except of
their own.

A wrapped method takes one more argument, the :class:`Call` being served; it sets the call's
labels (:meth:`Call.resolved`) and, in a stream, starts each message's clock
(:meth:`Call.next_message`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, Protocol, TypeVar

import grpc

from safepolicy.server.errors import InvalidRequest, status_of
from safepolicy.server.guard import MALFORMED, MALFORMED_MESSAGE
from safepolicy.server.policies import LoadedVersion

Request = TypeVar("Request")
Response = TypeVar("Response")


class Call:
    """One call (or one stream message) being served: its method, clock and labels."""

    __slots__ = ("loaded", "method", "rows", "started")

    def __init__(self, method: str) -> None:
        self.method = method
        self.started = perf_counter()
        self.loaded: LoadedVersion | None = None
        self.rows = 0  # observations inferred (0: the call ran no model)

    def resolved(self, loaded: LoadedVersion) -> LoadedVersion:
        """Label the call with the policy version serving it; returns ``loaded``."""
        self.loaded = loaded
        return loaded

    def next_message(self) -> None:
        """A new stream message: restart the clock and forget the previous labels."""
        self.started = perf_counter()
        self.loaded = None
        self.rows = 0


class CallRecorder(Protocol):
    """What the scope reports to (:class:`server.dataplane.DataPlane`)."""

    def record_ok(self, call: Call) -> None: ...

    def record_failure(self, call: Call, code: str) -> None: ...

    def in_flight(self, method: str) -> Any: ...

    def check_accepting(self) -> None: ...


class Servicer(Protocol):
    """A servicer whose methods run in the scope: it names its recorder."""

    plane: CallRecorder


async def _abort(
    plane: CallRecorder, call: Call, error: Exception, context: grpc.aio.ServicerContext
) -> None:
    code, message = status_of(error)
    plane.record_failure(call, code.name)
    await context.abort(code, message)


def unary(
    method: str,
    *,
    track_in_flight: bool = False,
) -> Callable[
    [Callable[[Any, Any, grpc.aio.ServicerContext, Call], Awaitable[Any]]],
    Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]],
]:
    """Run a unary-response servicer method in the call scope (see the module docstring);
    ``track_in_flight`` keeps the method's in-flight gauge (inference methods)."""

    def decorate(
        handler: Callable[[Any, Any, grpc.aio.ServicerContext, Call], Awaitable[Any]],
    ) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        @functools.wraps(handler)
        async def serve(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = Call(method)
            plane = self.plane
            gauge = plane.in_flight(method) if track_in_flight else None
            if gauge is not None:
                gauge.inc()
            try:
                if request is MALFORMED:
                    raise InvalidRequest(MALFORMED_MESSAGE)
                response = await handler(self, request, context, call)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort(plane, call, error, context)
                raise  # not reached: abort raises
            finally:
                if gauge is not None:
                    gauge.dec()
            plane.record_ok(call)
            return response

        return serve

    return decorate


def streaming(
    method: str,
) -> Callable[
    [Callable[[Any, Any, grpc.aio.ServicerContext, Call], Awaitable[Any]]],
    Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[None]],
]:
    """Run a stream-stream servicer method in the call scope, one message at a time.

    The wrapped method answers one request message; the scope opens the stream only while
    the server accepts calls, reads each message (``context.read``), starts its clock, writes
    the answer (``context.write``) and counts it, and on a domain error ends the stream with
    that error's status. The reader/writer API keeps both grpcio's request iterator and a
    response generator off the per-message path.
    """

    def decorate(
        handler: Callable[[Any, Any, grpc.aio.ServicerContext, Call], Awaitable[Any]],
    ) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[None]]:
        @functools.wraps(handler)
        async def serve(
            self: Servicer,
            requests: Any,
            context: grpc.aio.ServicerContext,
        ) -> None:
            del requests  # read through the context instead
            call = Call(method)
            plane = self.plane
            gauge = plane.in_flight(method)
            gauge.inc()
            try:
                plane.check_accepting()
                read, write, end = context.read, context.write, grpc.aio.EOF
                while (request := await read()) is not end:
                    call.next_message()
                    response = await handler(self, request, context, call)
                    plane.record_ok(call)
                    await write(response)
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await _abort(plane, call, error, context)
            finally:
                gauge.dec()

        return serve

    return decorate
