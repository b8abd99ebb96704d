"""The memory REST API: ``hivemem.Memory`` over HTTP, scoped by API key.

``add_memory_routes(app, memory, authorise)`` mounts the routes on an existing app (the embedding
service's, so the memory store embeds with the service's own engine and queue). Every ``Memory``
call runs in a worker thread (``run_in_threadpool``): SQLite waits and embedding never block the
event loop.

Scoping (``hivemem.http.auth.Scope``): a key limited to a ``user_id`` has every add forced into
that user (naming another user → 403), that user ANDed into every search/list/delete-all filter,
and each by-id route checks the record's owner (another user's id → 403); the batch update and
delete check every id before anything changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from hivemem.http.auth import Scope
from hivemem.http.memory_models import (
    AddRequest,
    AddResponse,
    BatchAddRequest,
    BatchDeleteRequest,
    BatchUpdateRequest,
    ErrorResponse,
    HistoryEntry,
    ListRequest,
    MemoryRecord,
    MessageResponse,
    RecordsResponse,
    SearchRequest,
    UpdateRequest,
)
from hivemem.http.statuses import error_for
from hivemem.memory.records import REMOTE_MAX_LIST

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "Missing or wrong API key"),
        (403, "Outside the key's user_id"),
        (413, "Body too large"),
        (429, "Embedding queue full"),
        (507, "The store's disk is full: nothing of the write was stored"),
    )
}
_BY_ID_ERRORS = {**_ERRORS, 404: {"model": ErrorResponse, "description": "Unknown memory id"}}
# OpenAPI links from an added memory to the routes that take its id: clients (and schemathesis's
# stateful tests) can follow add → get/update/history/delete with the id the add returned.
_ID = {"memory_id": "$response.body#/results/0/id"}
_ADDED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The stored (ADD) or already present (NONE) memories, in order",
        "links": {
            name: {"operationId": operation, "parameters": _ID}
            for name, operation in (
                ("GetMemory", "get_v1_memories__memory_id__get"),
                ("UpdateMemory", "update_v1_memories__memory_id__put"),
                ("MemoryHistory", "history_v1_memories__memory_id__history_get"),
                ("DeleteMemory", "delete_v1_memories__memory_id__delete"),
            )
        },
    }
}


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking ``Memory`` call in a thread; its refusals become 4xx/5xx by their type
    (``hivemem.http.statuses``: QueueFull 429, MemoryNotFound 404, LimitExceeded 422 with ``code``
    "limit_exceeded" and ``param`` the field, other ValueError, TypeError and NotImplementedError
    422, LLMError 502, DiskFull 507)."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except Exception as exc:
        error = error_for(exc)
        if error is None:
            raise
        raise error from None


def _own_user(scope: Scope, user_id: str | None) -> str | None:
    """The user_id a call may use: the key's own (naming another → 403), or anything for admins."""
    if scope.admin:
        return user_id
    if user_id is not None and user_id.strip() != scope.user_id:
        raise HTTPException(403, f"this API key is limited to user_id {scope.user_id!r}")
    return scope.user_id


def _scoped_add(scope: Scope, item: AddRequest) -> dict[str, Any]:
    kwargs = item.model_dump(exclude_none=True)  # Memory's own defaults for what is left out
    user = _own_user(scope, item.user_id)
    if user is not None:
        kwargs["user_id"] = user
    return kwargs


def add_memory_routes(app: FastAPI, memory: Any, authorise: Callable[..., Awaitable[Scope]]) -> APIRouter:
    """Mount the ``/v1/memories`` routes for ``memory`` (a ``hivemem.Memory``) on ``app``."""
    router = APIRouter(prefix="/v1/memories", tags=["memories"], responses=_ERRORS)

    async def owned(memory_id: str, scope: Scope) -> dict[str, Any]:
        record: dict[str, Any] | None = await _call(memory.get, memory_id)
        if record is None:
            raise HTTPException(404, f"Memory with id {memory_id} not found")
        if not scope.admin and record.get("user_id") != scope.user_id:
            raise HTTPException(403, f"memory {memory_id} belongs to another user than this API key's")
        return record

    @router.post("", response_model=AddResponse, responses=_ADDED, summary="Add memories (Memory.add)")
    async def add(body: AddRequest, scope: Scope = Depends(authorise)) -> Any:
        kwargs = _scoped_add(scope, body)
        return {"results": (await _call(memory.add, **kwargs))["results"]}

    @router.post("/batch", response_model=AddResponse, responses=_ADDED,
                 summary="Add many, all or nothing (Memory.add_batch)")  # fmt: skip
    async def add_batch(body: BatchAddRequest, scope: Scope = Depends(authorise)) -> Any:
        items = [_scoped_add(scope, item) for item in body.items]
        return await _call(memory.add_batch, items)

    async def owned_all(ids: list[str], scope: Scope) -> None:
        """Every id is one of the key's user's memories (403 for another user's, 404 unknown)."""
        if scope.admin:
            return
        flt = {"id": {"in": ids}}
        mine = await _call(
            memory.get_all, filters=flt, user_id=scope.user_id, top_k=len(ids), show_expired=True
        )
        have = {r["id"] for r in mine["results"]}
        for memory_id in ids:
            if memory_id not in have:
                await owned(memory_id, scope)  # raises: 404 unknown, 403 another user's

    @router.put("/batch", response_model=MessageResponse, responses=_BY_ID_ERRORS,
                summary="Update many, all or nothing (Memory.batch_update)")  # fmt: skip
    async def batch_update(body: BatchUpdateRequest, scope: Scope = Depends(authorise)) -> Any:
        items = [item.model_dump(exclude_unset=True) for item in body.memories]
        await owned_all([i["memory_id"] for i in items], scope)
        return await _call(memory.batch_update, items)

    @router.delete("/batch", response_model=MessageResponse, responses=_BY_ID_ERRORS,
                   summary="Delete many, all or nothing (Memory.batch_delete)")  # fmt: skip
    async def batch_delete(body: BatchDeleteRequest, scope: Scope = Depends(authorise)) -> Any:
        items = [item.model_dump() for item in body.memory_ids]
        await owned_all([i["memory_id"] for i in items], scope)
        return await _call(memory.batch_delete, items)

    @router.post("/search", response_model=RecordsResponse, response_model_exclude_unset=True,
                 summary="Semantic search with filters (Memory.search)")  # fmt: skip
    async def search(body: SearchRequest, scope: Scope = Depends(authorise)) -> Any:
        kwargs = body.model_dump(exclude={"query"})
        kwargs["user_id"] = _own_user(scope, body.user_id)
        return await _call(memory.search, body.query, **kwargs)

    @router.post("/list", response_model=RecordsResponse, response_model_exclude_unset=True,
                 summary="List with a JSON filter (Memory.get_all)")  # fmt: skip
    async def list_filtered(body: ListRequest, scope: Scope = Depends(authorise)) -> Any:
        kwargs = body.model_dump()
        kwargs["user_id"] = _own_user(scope, body.user_id)
        return await _call(memory.get_all, **kwargs)

    @router.get("", response_model=RecordsResponse, response_model_exclude_unset=True,
                summary="List by user/agent/run (Memory.get_all)")  # fmt: skip
    async def list_memories(
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        top_k: int = Query(100, ge=1, le=REMOTE_MAX_LIST),
        show_expired: bool = False,
        scope: Scope = Depends(authorise),
    ) -> Any:
        user = _own_user(scope, user_id)
        scoped = {"user_id": user, "agent_id": agent_id, "run_id": run_id}
        return await _call(memory.get_all, **scoped, top_k=top_k, show_expired=show_expired)

    @router.delete(
        "", response_model=MessageResponse, summary="Delete all of a user/agent/run (Memory.delete_all)"
    )
    async def delete_all(
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        scope: Scope = Depends(authorise),
    ) -> Any:
        user = _own_user(scope, user_id)
        return await _call(memory.delete_all, user_id=user, agent_id=agent_id, run_id=run_id)

    @router.get("/{memory_id}", response_model=MemoryRecord, response_model_exclude_unset=True,
                responses=_BY_ID_ERRORS, summary="One memory (Memory.get)")  # fmt: skip
    async def get(memory_id: str, scope: Scope = Depends(authorise)) -> Any:
        record = await owned(memory_id, scope)
        record.pop("score", None)
        return record

    @router.put("/{memory_id}", response_model=MessageResponse, responses=_BY_ID_ERRORS,
                summary="Replace text and/or metadata (Memory.update)")  # fmt: skip
    async def update(memory_id: str, body: UpdateRequest, scope: Scope = Depends(authorise)) -> Any:
        await owned(memory_id, scope)
        return await _call(memory.update, memory_id, **body.model_dump(exclude_unset=True))

    @router.delete("/{memory_id}", response_model=MessageResponse, responses=_BY_ID_ERRORS,
                   summary="Delete one memory (Memory.delete)")  # fmt: skip
    async def delete(memory_id: str, scope: Scope = Depends(authorise)) -> Any:
        await owned(memory_id, scope)
        return await _call(memory.delete, memory_id)

    @router.get("/{memory_id}/history", response_model=list[HistoryEntry], responses=_BY_ID_ERRORS,
                summary="ADD/UPDATE/DELETE events of one memory (Memory.history)")  # fmt: skip
    async def history(memory_id: str, scope: Scope = Depends(authorise)) -> Any:
        if scope.admin:  # admins may read the history of a deleted memory too
            rows = await _call(memory.history, memory_id)
            if not rows:
                raise HTTPException(404, f"Memory with id {memory_id} not found")
            return rows
        await owned(memory_id, scope)
        # only this user's events: an id deleted by one user and given again to another must
        # never show the first one's texts (the store refuses such an id; files made before it
        # kept scopes may hold events of an unknown scope, which only admins see)
        return await _call(memory.history, memory_id, user_id=scope.user_id)

    app.include_router(router)
    return router
