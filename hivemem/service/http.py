"""The optional HTTP front door: OpenAI-compatible ``POST /v1/embeddings``, ``/health``, ``/metrics``.

Built by a factory, ``create_app(embedder, api_key=None)``, so other parts (the memory REST routes)
can be mounted on the same app and served by the same process. Any ``EmbedderLike`` works; the
service passes its engine so HTTP and socket requests share one queue and one cache.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from hivemem.service.errors import ServiceBusy
from hivemem.service.metrics import ServiceMetrics
from hivemem.service.replicas import embed_with_backpressure

MAX_INPUTS = 2048  # OpenAI's own limit per request


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_binding(host: str, api_key: str | None) -> None:
    """Refuse to expose the API beyond this machine without a key (ValueError naming the fix)."""
    if not is_loopback(host) and not api_key:
        raise ValueError(
            f"binding HTTP to {host!r} (not loopback) requires an API key: "
            "pass --api-key or set HIVEMEM_API_KEY"
        )


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


def create_app(
    embedder: Any,
    api_key: str | None = None,
    *,
    host: str | None = None,
    metrics: ServiceMetrics | None = None,
    busy_timeout: float = 10.0,
    status: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """A FastAPI app serving ``embedder``. With ``api_key`` every route but ``/health`` needs
    ``Authorization: Bearer <key>``; ``host`` (where it will be bound) enforces the loopback rule."""
    if host is not None:
        check_binding(host, api_key)
    metrics = metrics or ServiceMetrics()
    model_id = embedder.model_id
    base = model_id.split("/onnx-")[0]  # "all-MiniLM-L6-v2/onnx-fp32" → "all-MiniLM-L6-v2"
    short = base.rsplit("/", 1)[-1]
    names = {model_id, base, short, f"sentence-transformers/{short}", "default"}
    counter = _token_counter(embedder)
    app = FastAPI(title="hivemem", version="1")

    def authorise(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer <key>)")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind)

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
            vectors = await embed_with_backpressure(embedder, texts, busy_timeout)
        except ServiceBusy as exc:
            metrics.error("busy")
            return _error(429, str(exc), "rate_limit_error", "busy")
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc), "invalid_request_error")
        tokens = counter(texts)
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
        from hivemem.service.prometheus import exposition

        body, content_type = exposition(metrics, embedder, status)
        return Response(body, media_type=content_type)

    return app


def _encode(vec: np.ndarray, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode()
    return vec.tolist()


def _token_counter(embedder: Any) -> Callable[[list[str]], int]:
    """Exact counts with the model's tokenizer when the embedder has one, else whitespace words."""
    backend = getattr(embedder, "backend", None)
    count = getattr(backend, "count_tokens", None)
    if count is not None:
        return count
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        return lambda texts: sum(len(e.ids) for e in tokenizer.encode_batch(texts))
    return lambda texts: sum(len(t.split()) for t in texts)
