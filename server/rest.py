"""The Open Inference Protocol over HTTP/REST, on its own port in the server's event loop.

    GET  /v2/health/live                     200 {"live": true}
    GET  /v2/health/ready                    200 {"ready": true}, 400 {"ready": false}
    GET  /v2                                 server metadata
    GET  /v2/models/NAME[/versions/V]        model metadata
    GET  /v2/models/NAME[/versions/V]/ready  200 / 400 (the protocol's boolean status codes)
    POST /v2/models/NAME[/versions/V]/infer  inference (JSON tensors)
    GET  /v2/models/NAME[/versions/V]/config Triton's model configuration
    GET  /v2/models[/NAME[/versions/V]]/stats Triton's model statistics
    POST /v2/repository/index                Triton's repository index

What the paths mean is :mod:`server.inference_protocol`, shared with the gRPC transport;
inference runs through the same data plane and call scope bookkeeping. An inference body is
the protocol's JSON (``"data"`` flat or nested, row-major); the binary tensor extension is
accepted for inputs (``Inference-Header-Content-Length`` and ``binary_data_size``), outputs
are always JSON. Errors are ``{"error": "..."}`` with the status matching the gRPC code
(400 bad input, 404 unknown model or path, 405, 411, 413, 429, 503, 504, 500).

The HTTP/1.1 handler is deliberately small (no third-party web framework in the server's
dependencies): persistent connections, ``Content-Length`` bodies only (a chunked body is
refused with 411), ``Expect: 100-continue`` (curl sends it for bodies over 1 KiB), bounded
header and body sizes. The bearer token, when set, is required on every path but health.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import grpc
import numpy as np

from safepolicy.server.calls import Call
from safepolicy.server.dataplane import DataPlane
from safepolicy.server.errors import InvalidRequest, status_of
from safepolicy.server.inference_protocol import (
    DATATYPE,
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    infer,
    model_config,
    model_metadata,
    model_ready,
    model_statistics,
    parse_version,
    repository_index,
)
from safepolicy.server.tensors import FLOAT32
from safepolicy.version import package_version

log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
}
REASONS = {
    200: "OK",
    100: "Continue",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MAX_HEADER_BYTES = 64 << 10
HEALTH_PREFIX = "/v2/health/"


class HttpError(Exception):
    """A request the HTTP layer refuses before it reaches the protocol (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed HTTP request."""

    __slots__ = ("body", "headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


def _json_body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRequest(
            f"the request body is not valid JSON ({error}); send the "
            "protocol's JSON inference request"
        ) from error


def _observation_bytes(tensor: dict[str, Any], binary: bytes | None) -> bytes:
    """The input tensor's values as packed little-endian float32."""
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        if binary is None or not isinstance(size, int) or size != len(binary):
            raise InvalidRequest(
                "binary_data_size does not match the binary data after the "
                "JSON header (Inference-Header-Content-Length)"
            )
        return binary
    if "data" not in tensor:
        raise InvalidRequest("input 'obs' has no 'data'")
    try:
        values = np.asarray(tensor["data"], dtype=FLOAT32)
    except (TypeError, ValueError) as error:
        raise InvalidRequest(f"input 'obs' data must be numbers ({error})") from error
    return values.tobytes()


def infer_request(
    name: str,
    version: str,
    body: bytes,
    header_length: str | None,
) -> tuple[InferRequest, Any]:
    """The transport-free request (and its id) from a JSON (or JSON + binary) body."""
    binary: bytes | None = None
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError as error:
            raise InvalidRequest("Inference-Header-Content-Length must be an integer") from error
        if not 0 <= length <= len(body):
            raise InvalidRequest("Inference-Header-Content-Length exceeds the body")
        body, binary = body[:length], body[length:]
    payload = _json_body(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InvalidRequest('an inference request is a JSON object with an "inputs" list')
    inputs = payload["inputs"]
    if not all(isinstance(item, dict) for item in inputs):
        raise InvalidRequest('each entry of "inputs" is an object (name, shape, datatype, data)')
    outputs = payload.get("outputs") or []
    if not isinstance(outputs, list) or not all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in outputs
    ):
        raise InvalidRequest('"outputs" is a list of objects with a "name"')
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest('"parameters" is an object')
    tensor = inputs[0] if inputs else {}
    shape = tensor.get("shape", [])
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise InvalidRequest("input shape must be a list of integers")
    data = _observation_bytes(tensor, binary) if inputs else b""
    request = InferRequest(
        model=name,
        version=version,
        input_names=[str(item.get("name")) for item in inputs],
        datatype=str(tensor.get("datatype", "")),
        shape=shape,
        data=data,
        outputs=[item["name"] for item in outputs],
        sample=parameters.get("sample"),
        seed=parameters.get("seed"),
    )
    return request, payload.get("id")


class RestServer:
    """The HTTP endpoint of one server process, over its :class:`DataPlane`."""

    def __init__(
        self, plane: DataPlane, *, token: str | None = None, max_body_bytes: int = 4 << 20
    ) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes
        self._expected = f"Bearer {token}".encode() if token else None
        self._version = package_version()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> int:
        """Listen on ``host:port`` (0: a free port); returns the bound port."""
        try:
            self._server = await asyncio.start_server(
                self._connection, host, port, limit=MAX_HEADER_BYTES, ssl=ssl_context
            )
        except OSError as error:
            raise OSError(
                f"cannot listen for HTTP on {host}:{port} ({error.strerror or error}); "
                "choose another --http-port"
            ) from error
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    # ---- HTTP/1.1 ----

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    request = await self._read(reader, writer)
                except HttpError as error:
                    await self._send(writer, error.status, {"error": error.message}, close=True)
                    return
                if request is None:
                    return
                status, body = await self._dispatch(request)
                close = request.headers.get("connection", "").lower() == "close"
                await self._send(writer, status, body, close=close)
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial.strip():
                raise HttpError(400, "incomplete HTTP request head") from error
            return None  # the client closed between requests
        except asyncio.LimitOverrunError as error:
            raise HttpError(431, f"request head over {MAX_HEADER_BYTES} bytes") from error
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, f"not an HTTP/1.x request line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, f"malformed header line {line[:100]!r}")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise HttpError(411, "chunked request bodies are not accepted; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as error:
            raise HttpError(400, "Content-Length must be an integer") from error
        if length < 0:
            raise HttpError(400, "Content-Length must be >= 0")
        if length > self.max_body_bytes:
            raise HttpError(
                413,
                f"request body of {length} bytes exceeds the server's limit "
                f"of {self.max_body_bytes} (--max-message-bytes); split the batch",
            )
        if length and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(length) if length else b""
        return Request(parts[0], urlsplit(parts[1]).path, headers, body)

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: Any, *, close: bool
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        head = [
            f"HTTP/1.1 {status} {REASONS.get(status, '')}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        if close:
            head.append("Connection: close")
        writer.write("\r\n".join([*head, "", ""]).encode("latin-1") + data)
        await writer.drain()

    # ---- routing: the call scope of this transport ----

    async def _dispatch(self, request: Request) -> tuple[int, Any]:
        """(status, JSON body) for one request; domain errors map to their HTTP status."""
        try:
            method, handler = self._route(request)
        except HttpError as error:
            return error.status, {"error": error.message}
        call = Call(f"HTTP {method}")
        try:
            if (
                self._expected is not None
                and not request.path.startswith(HEALTH_PREFIX)
                and not self._authorized(request)
            ):
                return 401, {
                    "error": f"{request.path} needs an 'Authorization: Bearer <token>' "
                    "header with the server's token"
                }
            status, body = await handler(call)
        except Exception as error:
            code, message = status_of(error)
            self.plane.record_failure(call, code.name)
            return HTTP_STATUS.get(code, 500), {"error": message}
        self.plane.record_ok(call)
        return status, body

    def _authorized(self, request: Request) -> bool:
        presented = request.headers.get("authorization", "").encode("latin-1")
        assert self._expected is not None
        return hmac.compare_digest(presented, self._expected)

    def _route(
        self,
        request: Request,
    ) -> tuple[str, Callable[[Call], Awaitable[tuple[int, Any]]]]:
        """The protocol method and its handler; :class:`HttpError` 404 or 405 for bad paths."""
        segments = [unquote(part) for part in request.path.strip("/").split("/")]
        get, post = request.method == "GET", request.method == "POST"

        def wrong_method(allowed: str) -> HttpError:
            return HttpError(405, f"{request.path} takes {allowed}, not {request.method}")

        if segments[:1] != ["v2"]:
            raise HttpError(404, f"no such path {request.path!r}; the API is under /v2")
        rest = segments[1:]
        if rest in (
            [],
            ["health", "live"],
            ["health", "ready"],
            ["repository", "index"],
            ["models", "stats"],
        ):
            if rest == ["repository", "index"]:
                if not post:
                    raise wrong_method("POST")
                return "RepositoryIndex", lambda call: self._index(request)
            if not get:
                raise wrong_method("GET")
            if rest == []:
                return "ServerMetadata", self._server_metadata
            if rest == ["models", "stats"]:
                return "ModelStatistics", lambda call: self._stats(call, "", "")
            if rest[1] == "live":
                return "ServerLive", self._live
            return "ServerReady", self._ready
        if len(rest) < 2 or rest[0] != "models" or not rest[1]:
            raise HttpError(404, f"no such path {request.path!r}")
        name, tail, version = rest[1], rest[2:], ""
        if tail[:1] == ["versions"]:
            if len(tail) < 2:
                raise HttpError(404, f"no such path {request.path!r}: versions/VERSION")
            version, tail = tail[1], tail[2:]
        action = tail[0] if len(tail) == 1 else "" if not tail else None
        handlers: dict[str | None, tuple[str, bool, Callable[[Call], Awaitable[tuple[int, Any]]]]]
        handlers = {
            "": ("ModelMetadata", get, lambda call: self._metadata(call, name, version)),
            "ready": ("ModelReady", get, lambda call: self._model_ready(name, version)),
            "config": ("ModelConfig", get, lambda call: self._config(call, name, version)),
            "stats": ("ModelStatistics", get, lambda call: self._stats(call, name, version)),
            "infer": ("ModelInfer", post, lambda call: self._infer(call, request, name, version)),
        }
        found = handlers.get(action)
        if found is None:
            raise HttpError(404, f"no such path {request.path!r}")
        method, allowed, handler = found
        if not allowed:
            raise wrong_method("POST" if action == "infer" else "GET")
        return method, handler

    # ---- the protocol's methods ----

    async def _live(self, call: Call) -> tuple[int, Any]:
        return 200, {"live": True}

    async def _ready(self, call: Call) -> tuple[int, Any]:
        ready = self.plane.store.ready and not self.plane.draining
        return (200 if ready else 400), {"ready": ready}

    async def _server_metadata(self, call: Call) -> tuple[int, Any]:
        return 200, {"name": SERVER_NAME, "version": self._version, "extensions": list(EXTENSIONS)}

    async def _metadata(self, call: Call, name: str, version: str) -> tuple[int, Any]:
        loaded = self.plane.resolve(call, name, parse_version(version))
        return 200, model_metadata(self.plane, loaded)

    async def _model_ready(self, name: str, version: str) -> tuple[int, Any]:
        ready = model_ready(self.plane, name, version)
        return (200 if ready else 400), {"name": name, "ready": ready}

    async def _config(self, call: Call, name: str, version: str) -> tuple[int, Any]:
        loaded = self.plane.resolve(call, name, parse_version(version))
        return 200, model_config(self.plane, loaded)

    async def _stats(self, call: Call, name: str, version: str) -> tuple[int, Any]:
        return 200, {"model_stats": model_statistics(self.plane, name, version)}

    async def _index(self, request: Request) -> tuple[int, Any]:
        options = _json_body(request.body) if request.body else {}
        if not isinstance(options, dict):
            raise InvalidRequest(
                'the repository index request is a JSON object ({"ready": '
                "true} lists only ready models)"
            )
        return 200, repository_index(self.plane, bool(options.get("ready", False)))

    async def _infer(
        self,
        call: Call,
        request: Request,
        name: str,
        version: str,
    ) -> tuple[int, Any]:
        parsed, request_id = infer_request(
            name, version, request.body, request.headers.get("inference-header-content-length")
        )
        outputs = await infer(self.plane, call, parsed)
        assert call.loaded is not None
        response: dict[str, Any] = {
            "model_name": call.loaded.name,
            "model_version": str(call.loaded.version),
            "outputs": [
                {
                    "name": output,
                    "datatype": DATATYPE,
                    "shape": list(values.shape),
                    "data": values.ravel().tolist(),
                }
                for output, values in outputs.items()
            ],
        }
        if request_id is not None:
            response["id"] = request_id
        return 200, response


def server_ssl_context(
    cert_file: str,
    key_file: str,
    client_ca_file: str | None,
) -> ssl.SSLContext:
    """The HTTP endpoint's TLS context from the gRPC endpoint's files (mutual TLS with a CA)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
