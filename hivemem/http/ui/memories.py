"""The memories pages: list with filters and paging, search, detail with history, edit, delete.

Scoping is the REST API's (``memory_routes``): a user key's user is passed to every list and
search (filters are ANDed with it by ``Memory``) and naming another user is refused; by id, a
memory of another user is "not found", the answer for an unknown id, so a page never tells that
it exists. Only the public ``Memory`` API is used (get_all, search, get, history, update, delete).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from hivemem.http.auth import Scope
from hivemem.http.memory_routes import _call as memory_call
from hivemem.http.memory_routes import _own_user as own_user
from hivemem.http.ui.web import HEADERS, Ui, UiError, first, optional, parse_json_object, redirect
from hivemem.memory.records import ENTITIES, REMOTE_MAX_BATCH, REMOTE_MAX_LIST

PAGE_SIZE = 50  # rows of a list page, and results of a search
MAX_PAGE = REMOTE_MAX_LIST // PAGE_SIZE  # paging reaches the REST list's cap; filter to go further
MAX_UI_FILTER_CHARS = 8192  # the metadata filter typed into the page, before it is parsed


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking ``Memory`` call as the REST routes make it (a worker thread, refusals by their
    type), its HTTP error as a UiError."""
    try:
        return await memory_call(fn, *args, **kwargs)
    except HTTPException as exc:
        raise UiError(exc.status_code, str(exc.detail)) from None


def scope_user(scope: Scope, user_id: str | None) -> str | None:
    try:
        return own_user(scope, user_id)
    except HTTPException as exc:
        raise UiError(exc.status_code, str(exc.detail)) from None


class Listing:
    """What the memories page was asked for (query string or form): scope, filter, search, page."""

    def __init__(self, scope: Scope, get: Callable[[str], str | None]) -> None:
        self.entities = {name: optional(get(name)) for name in ENTITIES}
        self.entities["user_id"] = scope_user(scope, self.entities["user_id"])
        self.filters_text = get("filters") or ""
        if len(self.filters_text) > MAX_UI_FILTER_CHARS:
            raise UiError(
                422, f"the filter has over {MAX_UI_FILTER_CHARS:,} characters (MAX_UI_FILTER_CHARS)"
            )
        self.filters = parse_json_object(self.filters_text, "the metadata filter")
        self.query = optional(get("q"))
        page = optional(get("page")) or "1"
        if not page.isdigit() or not 1 <= int(page) <= MAX_PAGE:
            raise UiError(422, f"page must be a number from 1 to {MAX_PAGE}")
        self.page = int(page)

    def link(self, page: int) -> str:
        """The query string of another page of this listing."""
        values = {k: v for k, v in self.entities.items() if v}
        values |= {"filters": self.filters_text} if optional(self.filters_text) else {}
        return "?" + urllib.parse.urlencode({**values, "page": page})

    async def rows(self, memory: Any) -> tuple[list[dict[str, Any]], bool]:
        """This page's memories (search results when there is a query) and whether more follow."""
        if self.query:
            found = await call(
                memory.search, self.query, filters=self.filters, top_k=PAGE_SIZE, **self.entities
            )
            return found["results"], False
        top_k = self.page * PAGE_SIZE + 1
        found = await call(memory.get_all, filters=self.filters, top_k=top_k, **self.entities)
        rows = found["results"][(self.page - 1) * PAGE_SIZE :]
        return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


async def owned(memory: Any, scope: Scope, memory_id: str) -> dict[str, Any] | None:
    """The memory ``memory_id`` if this scope may see it; None for an unknown id or another user's."""
    record: dict[str, Any] | None = await call(memory.get, memory_id)
    if record is None or not (scope.admin or record.get("user_id") == scope.user_id):
        return None
    return record


def add_memory_pages(router: APIRouter, ui: Ui, guarded: Callable[..., Any]) -> None:
    """Mount the memories pages on ``router`` (``guarded`` turns a UiError into its answer)."""
    memory = ui.memory

    async def listing(request: Request, listed: Listing, fragment: bool, status: int = 200) -> Response:
        rows, more = await listed.rows(memory)
        page = "_results.html" if fragment else "memories.html"
        return ui.render(request, page, status=status, rows=rows, more=more, listing=listed)

    @router.get("/memories")
    @guarded
    async def memories(request: Request) -> Response:
        session = ui.session(request)
        listed = Listing(session.scope, request.query_params.get)
        fragment = bool(request.headers.get("hx-request")) and not request.headers.get(
            "hx-history-restore-request"
        )
        response = await listing(request, listed, fragment)
        response.headers["Vary"] = "HX-Request"
        return response

    @router.get("/memories/{memory_id}")
    @guarded
    async def detail(request: Request, memory_id: str) -> Response:
        session = ui.session(request)
        return await show(request, session.scope, memory_id)

    async def show(
        request: Request, scope: Scope, memory_id: str, status: int = 200, error: str | None = None
    ) -> Response:
        record = await owned(memory, scope, memory_id)
        history: list[dict[str, Any]] = []
        if record is not None:
            history = await call(memory.history, memory_id, user_id=None if scope.admin else scope.user_id)
        elif scope.admin:  # an admin may read what happened to a deleted memory
            history = await call(memory.history, memory_id)
        if record is None and not history:
            raise UiError(404, f"no memory {memory_id!r} here")
        found = {"record": record, "history": history, "memory_id": memory_id, "error": error}
        return ui.render(request, "memory.html", status=status, **found)

    @router.post("/memories/{memory_id}/edit")
    @guarded
    async def edit(request: Request, memory_id: str) -> Response:
        session, form = await ui.change(request)
        record = await owned(memory, session.scope, memory_id)
        if record is None:
            raise UiError(404, f"no memory {memory_id!r} here")
        text = first(form, "text")
        meta_text = first(form, "metadata")
        try:
            metadata = parse_json_object(meta_text, "the metadata")
            if metadata is None and optional(meta_text) is None:
                metadata = {} if record.get("metadata") else None  # a cleared field clears the metadata
            new_text = text if text is not None and text != record.get("memory") else None
            if new_text is None and metadata is None:
                raise UiError(422, "nothing to save: the text and the metadata are unchanged")
            await call(memory.update, memory_id, new_text, metadata)
        except UiError as exc:
            return await show(request, session.scope, memory_id, status=exc.status, error=exc.message)
        return redirect(f"/ui/memories/{memory_id}")

    @router.post("/memories/{memory_id}/delete")
    @guarded
    async def delete(request: Request, memory_id: str) -> Response:
        session, form = await ui.change(request)
        if await owned(memory, session.scope, memory_id) is None:
            raise UiError(404, f"no memory {memory_id!r} here")
        await call(memory.delete, memory_id)
        if request.headers.get("hx-request"):  # a row of the list: it is swapped for nothing
            detail_page = first(form, "from") == "detail"  # its button goes back to the list
            extra = {"HX-Redirect": "/ui/memories"} if detail_page else {}
            return Response(status_code=200, headers={**HEADERS, **extra})
        return redirect("/ui/memories")

    @router.post("/memories/delete")
    @guarded
    async def delete_selected(request: Request) -> Response:
        session, form = await ui.change(request)
        ids = form.get("ids", [])
        if not ids:
            raise UiError(422, "select the memories to delete first")
        if len(ids) > REMOTE_MAX_BATCH:
            raise UiError(422, f"at most {REMOTE_MAX_BATCH:,} memories at once (REMOTE_MAX_BATCH)")
        records = [await owned(memory, session.scope, memory_id) for memory_id in ids]
        missing = [memory_id for memory_id, r in zip(ids, records, strict=True) if r is None]
        if missing:  # nothing is deleted when any id is not this key's
            raise UiError(404, f"no memory {missing[0]!r} here; nothing was deleted")
        for memory_id in dict.fromkeys(ids):
            await call(memory.delete, memory_id)
        listed = Listing(session.scope, lambda name: first(form, name))
        if request.headers.get("hx-request"):
            return await listing(request, listed, fragment=True)
        return redirect("/ui/memories" + listed.link(1))
