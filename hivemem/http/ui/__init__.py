"""The web dashboard at ``/ui/`` of ``hivemem serve --http`` (docs/ui.md).

Server-rendered pages (Jinja2) with two small vendored libraries (htmx, uPlot) served by hivemem
itself: no CDN, no build step, works offline. Sign in with an API key (the REST API's keys and
scopes, checked once; the browser then holds only an opaque session cookie, ``sessions``); the
memories pages (``memories``); the fleet page (this module, with ``fleet.Sampler`` for the
chart). Every change is a POST checked for origin and CSRF token (``web.Ui.change``).
"""

from __future__ import annotations

import functools
import mimetypes
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from hivemem.http.auth import KeyRing
from hivemem.http.ui.fleet import Sampler
from hivemem.http.ui.jobs import Jobs
from hivemem.http.ui.memories import add_memory_pages
from hivemem.http.ui.web import COOKIE, HEADERS, HERE, PRE_COOKIE, Ui, UiError, first, read_form, redirect
from hivemem.service.metrics import ServiceMetrics

Handler = Callable[..., Awaitable[Response]]
STORES_TTL_S = 60.0  # how long the fleet page's store counts are reused


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` (read once: a few hundred KB) → (bytes, content type)."""
    root = HERE / "static"
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        kind = mimetypes.guess_type(path.name)[0] or "text/plain"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        files[path.relative_to(root).as_posix()] = (path.read_bytes(), kind)
    return files


def add_ui_routes(
    app: FastAPI,
    *,
    keyring: KeyRing,
    memory: Any,
    metrics: ServiceMetrics,
    embedder: Any,
    status: Callable[[], dict[str, Any]] | None,
    loopback: bool,
) -> Ui:
    """Mount the dashboard under ``/ui`` on ``app`` (left out of the OpenAPI spec)."""
    ui = Ui(keyring=keyring, memory=memory, loopback=loopback, status=status)
    stats = getattr(embedder, "stats", None)
    sampler = Sampler(metrics, lambda: ((stats() if stats else {}).get("queue") or {}).get("depth"))
    router = APIRouter(prefix="/ui", include_in_schema=False)
    static = _static_files()

    def guarded(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(request, *args, **kwargs)
            except UiError as exc:
                return ui.failure(request, exc)

        return run

    @router.get("/static/{name:path}")
    async def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return Response("not found", status_code=404, headers=HEADERS)
        body, kind = found
        return Response(body, media_type=kind, headers={**HEADERS, "Cache-Control": "max-age=3600"})

    @router.get("")
    @router.get("/")
    @guarded
    async def home(request: Request) -> Response:
        ui.check_host(request)
        signed_in = ui.sessions.get(request.cookies.get(COOKIE)) is not None
        return redirect("/ui/memories" if signed_in else "/ui/login")

    @router.get("/login")
    @guarded
    async def login_page(request: Request) -> Response:
        ui.check_host(request)
        return _login_form(request, None, 200)

    def _login_form(request: Request, error: str | None, status_code: int) -> Response:
        token = secrets.token_urlsafe(32)
        response = ui.render(
            request, "login.html", status=status_code, login_token=token, error=error,
            open_access=not keyring.required,
        )  # fmt: skip
        _cookie(request, response, PRE_COOKIE, token, path="/ui/login")
        return response

    @router.post("/login")
    @guarded
    async def login(request: Request) -> Response:
        ui.check_host(request)
        ui.check_origin(request)
        form = await read_form(request)
        expected = request.cookies.get(PRE_COOKIE)
        token = first(form, "csrf_token")
        if not expected or not token or not secrets.compare_digest(expected, token):
            raise UiError(403, "the sign-in form expired: reload the page and sign in again")
        key = first(form, "key") or ""
        scope = keyring.lookup(key) if key or not keyring.required else None
        if scope is None:
            return _login_form(request, "wrong API key", 401)  # the key is never echoed back
        ui.sessions.end(request.cookies.get(COOKIE))
        sid, _ = ui.sessions.start(scope)
        response = redirect("/ui/memories")
        _cookie(request, response, COOKIE, sid, path="/ui")
        response.delete_cookie(PRE_COOKIE, path="/ui/login")
        return response

    @router.post("/logout")
    @guarded
    async def logout(request: Request) -> Response:
        await ui.change(request)
        ui.sessions.end(request.cookies.get(COOKIE))
        response = redirect("/ui/login")
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @router.get("/fleet")
    @guarded
    async def fleet(request: Request) -> Response:
        session = ui.session(request)
        sampler.ensure_running()
        return ui.render(request, "fleet.html", **await _fleet_view(session.scope.admin))

    @router.get("/fleet/panel")
    @guarded
    async def fleet_panel(request: Request) -> Response:
        session = ui.session(request)
        return ui.render(request, "_fleet_panel.html", **await _fleet_view(session.scope.admin))

    @router.get("/fleet/series.json")
    @guarded
    async def fleet_series(request: Request) -> Response:
        ui.session(request)
        sampler.ensure_running()
        return JSONResponse(sampler.series(), headers=HEADERS)

    stores_cache: dict[str, Any] = {"at": -STORES_TTL_S, "stores": []}
    jobs = Jobs()

    async def _fleet_view(admin: bool) -> dict[str, Any]:
        """The service's rows for every key; memory stores (their counts span tenants), `hivemem run`
        jobs and task libraries (the machine's, whoever started them) for admins only.

        The stores are counted at most every ``STORES_TTL_S``: counting a store reads all of its
        rows (300 ms at 100k memories), and the panel refreshes every 10 s."""
        from hivemem.service.report import collect, process_memory, service_rows

        info = status() if status is not None else None
        machine: dict[str, Any] = {"runs": None, "libraries": None}
        if admin:
            machine = {
                "runs": await run_in_threadpool(jobs.runs),
                "libraries": await run_in_threadpool(jobs.libraries),
            }
        if info is None:
            return {"service": [("model", str(embedder.model_id))], "stores": None, **machine}
        view = {**info, "running": True, "process_memory": process_memory(int(info["pid"]))}
        rows = [(k, v) for k, v in service_rows(view) if k != "HTTP"]
        if not admin:
            return {"service": rows, "stores": None, **machine}
        if time.monotonic() - stores_cache["at"] >= STORES_TTL_S:
            found = await run_in_threadpool(collect, Path(str(info.get("socket", ""))), info, [])
            stores = [s for s in found["stores"] if s.get("exists")]
            served = getattr(memory, "location", None)
            if served and "://" in served:  # PostgreSQL: `collect` reads SQLite files only
                count = await run_in_threadpool(memory.count)
                stores.insert(0, {"role": "served over HTTP", "path": served, "memories": count})
            stores_cache.update(at=time.monotonic(), stores=stores)
        return {"service": rows, "stores": stores_cache["stores"], **machine}

    if memory is not None:
        add_memory_pages(router, ui, guarded)
    else:

        @router.get("/memories")
        @guarded
        async def no_memories(request: Request) -> Response:
            ui.session(request)
            raise UiError(404, "this service serves no memory store (hivemem serve --no-memory)")

    app.include_router(router)
    return ui


def _cookie(request: Request, response: Response, name: str, value: str, *, path: str) -> None:
    response.set_cookie(
        name, value, path=path, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
