"""HTTP request limits: a body size limit (413) and a deadline for reading a request (408).

Size: a declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it arrives and refused the moment it passes the limit, so a client cannot make the service buffer
an unbounded body by leaving the length out.

Time: uvicorn has no deadline for reading a request's headers or body, so a client that opened a
connection and then sent nothing, or a header line a minute (slowloris), held that connection —
and a route waiting for a body — forever. ``read_timeout_protocol`` gives every request
``DEFAULT_READ_TIMEOUT`` (30 s) from its first byte (or from the connection, for the first one)
until its last body byte; past it the client gets 408 (if no response started) and the connection
is closed. Responses, long streams included, are not limited.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY = 16 * 1024 * 1024  # 16 MiB: a 2048-text embeddings batch of long texts fits
DEFAULT_READ_TIMEOUT = 30.0  # seconds to receive one whole request (headers and body)
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _too_large(limit: int) -> str:
    return f"request body is larger than the limit of {limit} bytes (hivemem serve --max-body)"


class BodySizeLimit:
    """Pure ASGI middleware (``app.add_middleware(BodySizeLimit, max_bytes=…)``)."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status = 413 if declared.isdigit() else 400
            message = _too_large(self.max_bytes) if status == 413 else "bad Content-Length header"
            kind = "request_too_large" if status == 413 else "invalid_request_error"
            body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            await JSONResponse(body, status_code=status)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read: FastAPI re-raises HTTPException as is,
                    # so the app's own error handler answers 413.
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)


def read_timeout_protocol(seconds: float) -> Any:
    """uvicorn's httptools protocol with a deadline for reading each request (see the docstring);
    pass it as ``uvicorn.Config(http=…)``. ``"auto"`` (no deadline) where httptools is missing."""
    if not seconds > 0:
        raise ValueError(f"the request read timeout must be positive, got {seconds!r}")
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is in the server extra
        return "auto"

    class ReadTimeoutProtocol(HttpToolsProtocol):
        _read_timer: Any = None

        def _arm(self) -> None:
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is closed too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # no-op when the connection's own deadline still runs

        def on_message_complete(self) -> None:
            self._disarm()  # the whole request is in: the app may take as long as it needs
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_TIMEOUT_408)
            self.logger.warning(
                "hivemem: closing a connection whose request took over %g s to arrive", seconds
            )
            self.transport.close()

    return ReadTimeoutProtocol
