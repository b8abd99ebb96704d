"""An example streaming route: ``POST /v1/agent/stream`` runs a user-supplied agent in a warm
``hivemem.WorkerPool`` and streams what its generator yields as Server-Sent Events.

The agent is built once per worker (``factory``) and every request calls ``fn(agent, input)``;
each yielded item becomes one ``data:`` event (JSON) the moment the worker yields it. The stream
ends with ``event: done``, or ``event: error`` (type and message) if the call failed. A client that
disconnects closes the stream, which stops the worker's generator at its next item.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from hivemem.http.auth import Scope
from hivemem.http.memory_models import ErrorResponse


class AgentRequest(BaseModel):
    input: Any = Field(description="Passed to the agent function as fn(agent, input).")


def _event(data: Any, name: str | None = None) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


def add_agent_routes(
    app: FastAPI,
    pool: Any,
    fn: Callable[..., Any],
    authorise: Callable[..., Awaitable[Scope]],
    *,
    timeout: float | None = None,
) -> APIRouter:
    """Mount ``POST /v1/agent/stream`` serving ``fn`` on ``pool`` (a ``hivemem.WorkerPool``)."""
    router = APIRouter(tags=["agent"])

    @router.post(
        "/v1/agent/stream",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
            401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
        },
        summary="Stream an agent's reply (Server-Sent Events)",
    )
    async def agent_stream(body: AgentRequest, _: Scope = Depends(authorise)) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            stream = pool.astream(fn, body.input, timeout=timeout)
            try:
                async for item in stream:
                    yield _event(item)
                yield _event({}, "done")
            except Exception as exc:  # the agent's own failure, reported in-band: headers are sent
                yield _event({"type": type(exc).__name__, "message": str(exc)}, "error")
            finally:
                await stream.aclose()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    app.include_router(router)
    return router
