"""The optional HTTP front door: OpenAI-compatible ``POST /v1/embeddings``, ``/health``, ``/metrics``,
plus the memory REST API (``memory=``, see ``memory_routes``) and an agent streaming route
(``agent_pool=`` + ``agent_fn=``, see ``agent_routes``).

Built by a factory, ``create_app(embedder, api_key=None)``, so every part is served by the same
process. Any ``EmbedderLike`` works; the service passes its engine so HTTP and socket requests (and
the memory store's own embedding) share one queue and one cache, and its ``admission`` so that both
transports take their turn from the same permits. Errors become statuses by their type
(``hivemem.http.statuses``).
"""

from __future__ import annotations

import base64
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hivemem.http.auth import KeyRing, Scope
from hivemem.http.limits import DEFAULT_MAX_BODY, BodySizeLimit
from hivemem.http.statuses import error_for
from hivemem.service.admission import Admission
from hivemem.service.metrics import ServiceMetrics

MAX_INPUTS = 2048  # OpenAI's own limit per request


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_binding(host: str, api_key: object) -> None:
    """Refuse to expose the API beyond this machine without a key (ValueError naming the fix).

    ``api_key``: anything truthy when at least one key (``--api-key`` or a keys file) is set."""
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"binding HTTP to {host!r} (not loopback) requires an API key: "
            "pass --api-key (or set HIVEMEM_API_KEY) or --keys keys.json"
        )


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _error(
    status: int, message: str, kind: str, code: str | None = None, param: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(
    embedder: Any,
    api_key: str | None = None,
    *,
    host: str | None = None,
    metrics: ServiceMetrics | None = None,
    admission: Admission | None = None,
    busy_timeout: float = 10.0,
    status: Callable[[], dict[str, Any]] | None = None,
    keys: dict[str, Scope] | None = None,
    memory: Any = None,
    mcp: bool = False,
    agent_pool: Any = None,
    agent_fn: Callable[..., Any] | None = None,
    agent_timeout: float | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    """A FastAPI app serving ``embedder``. With ``api_key`` (an admin key) or ``keys`` (key → scope,
    ``hivemem.http.auth.load_keys``) every route but ``/health`` needs ``Authorization: Bearer
    <key>``; ``host`` (where it will be bound) enforces the loopback rule. ``memory``: a
    ``hivemem.Memory`` to serve under ``/v1/memories`` (build it with ``embedder=embedder``);
    ``mcp``: its MCP tools too, at ``/mcp`` (``mcp_route``; the app's ``state.mcp.manager.run()``
    must be entered while it serves).
    ``agent_pool`` + ``agent_fn``: a ``WorkerPool`` and the generator function streamed by
    ``POST /v1/agent/stream``. Bodies over ``max_body`` bytes get 413. ``admission``: the permits
    embedding requests take (default: none to wait for, only the engine's own queue limit, with
    ``busy_timeout`` for a later ``Admission``)."""
    authorise = KeyRing(api_key, keys)
    if host is not None:
        check_binding(host, authorise.required)
    if (agent_pool is None) != (agent_fn is None):
        raise ValueError("agent_pool and agent_fn go together: pass both or neither")
    metrics = metrics or ServiceMetrics()
    admission = admission or Admission(None, busy_timeout)
    model_id = embedder.model_id
    base = model_id.split("/onnx-")[0]  # "all-MiniLM-L6-v2/onnx-fp32" → "all-MiniLM-L6-v2"
    short = base.rsplit("/", 1)[-1]
    names = {model_id, base, short, f"sentence-transformers/{short}", "default"}
    app = FastAPI(
        title="hivemem",
        version="1",
        description="Shared embeddings (OpenAI-compatible), a Mem0-style memory store and warm agents.",
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_body)

    @app.exception_handler(StarletteHTTPException)  # also Starlette's own 404/405 for unknown routes
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _KINDS.get(exc.status_code, "invalid_request_error")
        return _error(
            exc.status_code, str(exc.detail), kind, getattr(exc, "code", None), getattr(exc, "param", None)
        )

    @app.post("/v1/embeddings", dependencies=[Depends(authorise)])
    async def embeddings(body: EmbeddingRequest) -> Any:
        start = time.perf_counter()
        if body.model is not None and body.model not in names:
            return _error(
                404,
                f"model {body.model!r} is not served here; use {model_id!r}",
                "invalid_request_error",
                "model_not_found",
            )
        if body.dimensions is not None and body.dimensions != embedder.dim:
            return _error(
                400,
                f"this model has {embedder.dim} dimensions; cannot return {body.dimensions}",
                "invalid_request_error",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            return _error(400, "input must not be empty", "invalid_request_error")
        if len(texts) > MAX_INPUTS:
            return _error(
                400, f"at most {MAX_INPUTS} inputs per request, got {len(texts)}", "invalid_request_error"
            )
        try:
            async with admission.permit(len(texts)):
                vectors, tokens = await _embed_counted(embedder, texts)
        except Exception as exc:
            error = error_for(exc, invalid=400)
            if error is None:
                raise
            if error.status_code == 429:
                metrics.error("busy")
            kind = _KINDS.get(error.status_code, "invalid_request_error")
            return _error(error.status_code, str(error.detail), kind, error.code, error.param)
        metrics.request("http", len(texts), time.perf_counter() - start)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vec, body.encoding_format)}
            for i, vec in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "dim": embedder.dim}

    @app.get("/metrics", dependencies=[Depends(authorise)])
    async def prometheus() -> Response:
        from hivemem.http.prometheus import exposition

        body, content_type = exposition(metrics, embedder, status)
        return Response(body, media_type=content_type)

    if memory is not None:
        from hivemem.http.memory_routes import add_memory_routes

        add_memory_routes(app, memory, authorise)
        if mcp:
            from starlette.routing import Route

            from hivemem.http.mcp_route import McpRoute

            route = McpRoute(memory, authorise, loopback=host is None or is_loopback(host), max_body=max_body)
            app.state.mcp = route
            app.router.routes.append(Route("/mcp", endpoint=route))
    if agent_pool is not None and agent_fn is not None:
        from hivemem.http.agent_routes import add_agent_routes

        add_agent_routes(app, agent_pool, agent_fn, authorise, timeout=agent_timeout)
    return app


_KINDS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "upstream_error",  # infer=True: the LLM failed
    507: "server_error",  # the disk of the store is full
}


def _encode(vec: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
    return vec.tolist()


async def _embed_counted(embedder: Any, texts: list[str]) -> tuple[np.ndarray, int]:
    """Vectors and the ``usage`` token count: as the engine counted them while embedding
    (``Embedder.aembed_counted``), else, for another ``EmbedderLike``, whitespace-separated words."""
    counted = getattr(embedder, "aembed_counted", None)
    if counted is not None:
        vectors, tokens = await counted(texts)
        return vectors, int(tokens)
    return await embedder.aembed(texts), sum(len(t.split()) for t in texts)
