"""A request-body size limit (HTTP 413), checked before a byte of an oversized body is parsed.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as it
arrives and refused the moment it passes the limit, so a client cannot make the service buffer an
unbounded body by leaving the length out.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY = 16 * 1024 * 1024  # 16 MiB: a 2048-text embeddings batch of long texts fits


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
