"""Undecodable request bytes become INVALID_ARGUMENT instead of UNKNOWN.

grpcio answers a request its deserializer cannot parse with UNKNOWN and logs a traceback for
every such call; a flood of random bytes then fills the log and reads as a server fault. The
servicers are registered through :func:`add_guarded`, which gives every unary-request method a
deserializer that returns :data:`MALFORMED` on bad bytes instead of raising; the call scope
(:func:`server.calls.unary`) answers MALFORMED with INVALID_ARGUMENT and counts it like any
other failed call. Only the deserializer is replaced: the method's behaviour runs as
registered, with no wrapper of its own. Streaming requests keep grpcio's own handling (their
messages are decoded inside the stream).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc


class _Malformed:
    """Stands in for a request whose bytes did not decode."""

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()
MALFORMED_MESSAGE = (
    "the request bytes are not a valid protobuf message of this method's "
    "request type; check the client's generated code and the method name"
)


def _guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if handler is None or handler.request_streaming or handler.request_deserializer is None:
        return handler
    decode = handler.request_deserializer

    def deserializer(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:  # DecodeError and friends: the client sent bad bytes
            return MALFORMED

    return handler._replace(request_deserializer=deserializer)


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _guard_handler(self._inner.service(handler_call_details))


class _GuardingServer:
    """Just enough of ``grpc.aio.Server`` for generated ``add_*_to_server`` functions."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(tuple(_GuardedGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: _guard_handler(h) for name, h in handlers.items()}
        )


def add_guarded(
    add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server
) -> None:
    """``add_to_server(servicer, server)`` with undecodable unary requests delivered as
    :data:`MALFORMED` (every unary method of ``servicer`` must run in the call scope)."""
    add_to_server(servicer, _GuardingServer(server))
