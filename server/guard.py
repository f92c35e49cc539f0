"""Undecodable request bytes become INVALID_ARGUMENT instead of UNKNOWN.

grpcio answers a request its deserializer cannot parse with UNKNOWN and logs a traceback for
every such call; a flood of random bytes then fills the log and reads as a server fault. The
servicers are registered through :func:`add_guarded`, which gives every unary-request method a
deserializer that returns :data:`MALFORMED` on bad bytes and a behaviour that answers it with
INVALID_ARGUMENT (counted, one log line at debug level). Streaming requests keep grpcio's own
handling (their messages are decoded inside the stream).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import grpc

log = logging.getLogger(__name__)


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()
MALFORMED_MESSAGE = ("the request bytes are not a valid protobuf message of this method's "
                     "request type; check the client's generated code and the method name")


def _guard_handler(handler: grpc.RpcMethodHandler, method: str,
                   on_malformed: Callable[[str], None]) -> grpc.RpcMethodHandler:
    if handler is None or handler.request_streaming or handler.request_deserializer is None:
        return handler
    decode = handler.request_deserializer

    def deserializer(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:  # DecodeError and friends: the client sent bad bytes
            return MALFORMED

    if handler.response_streaming:
        inner_stream = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is MALFORMED:
                on_malformed(method)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
            async for response in inner_stream(request, context):
                yield response

        return handler._replace(request_deserializer=deserializer, unary_stream=unary_stream)
    inner_unary = handler.unary_unary

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is MALFORMED:
            on_malformed(method)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_MESSAGE)
        return await inner_unary(request, context)

    return handler._replace(request_deserializer=deserializer, unary_unary=unary_unary)


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, on_malformed: Callable[[str], None]) -> None:
        self._inner = inner
        self._on_malformed = on_malformed

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return _guard_handler(self._inner.service(handler_call_details), method,
                              self._on_malformed)


class _GuardingServer:
    """Just enough of ``grpc.aio.Server`` for generated ``add_*_to_server`` functions."""

    def __init__(self, server: grpc.aio.Server, on_malformed: Callable[[str], None]) -> None:
        self._server = server
        self._on_malformed = on_malformed

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGenericHandler(h, self._on_malformed) for h in handlers))

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: _guard_handler(h, name, self._on_malformed)
                      for name, h in handlers.items()})


def add_guarded(add_to_server: Callable[[Any, Any], None], servicer: Any,
                server: grpc.aio.Server, on_malformed: Callable[[str], None]) -> None:
    """``add_to_server(servicer, server)`` with undecodable requests answered INVALID_ARGUMENT;
    ``on_malformed(method_name)`` is called for each (to count it)."""
    add_to_server(servicer, _GuardingServer(server, on_malformed))
