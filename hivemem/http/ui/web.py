"""What every dashboard route shares: templates, the session a request belongs to, the CSRF and
origin checks of every change, form bodies read within their limit, and the security headers.

Every response carries a strict Content-Security-Policy (scripts, styles and connections from this
origin only: no inline script, no eval, no CDN), ``frame-ancestors 'none'``, ``nosniff``, no
referrer to other sites and ``no-store`` (pages hold memories). Jinja2 autoescapes every value, so a memory
holding ``<script>`` is shown as text.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from hivemem.http.auth import KeyRing
from hivemem.http.ui.sessions import Session, Sessions

HERE = Path(__file__).resolve().parent
COOKIE = "hm_ui"  # the session id
PRE_COOKIE = "hm_ui_pre"  # the sign-in form's CSRF token (double submit: no session exists yet)
CSRF_HEADER = "x-csrf-token"  # htmx requests (hx-headers on <body>); forms send ``csrf_token``
MAX_UI_FORM_BYTES = 1024 * 1024  # a form body: an edited text (65,536 characters) and its metadata fit

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make a form's Origin header "null"
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class UiError(Exception):
    """A refused dashboard request: ``status`` and a message shown to the user (escaped)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Ui:
    """The dashboard's state, shared by its routes."""

    keyring: KeyRing
    memory: Any  # a hivemem.Memory, or None (--no-memory)
    loopback: bool  # bound to loopback: the Host header must name loopback (DNS rebinding)
    status: Callable[[], dict[str, Any]] | None
    sessions: Sessions = field(default_factory=Sessions)
    env: Environment = field(
        default_factory=lambda: Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
    )

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "ui_session", None)
        values.setdefault("error", None)
        html = self.env.get_template(name).render(
            scope=session.scope if session else None,
            csrf=session.csrf if session else "",
            path=request.url.path,
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def check_host(self, request: Request) -> None:
        """On loopback, refuse a Host that is not loopback: a page of another site whose name was
        rebound to 127.0.0.1 must not reach the dashboard (with no key configured it would be admin)."""
        if not self.loopback:
            return
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in LOOPBACK_HOSTS:
            raise UiError(421, "this dashboard answers only to a loopback host name")

    def check_origin(self, request: Request) -> None:
        """A change must come from a page of this origin (the CSRF token is checked as well)."""
        origin = request.headers.get("origin")
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != expected:
            raise UiError(403, "cross-origin request refused")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise UiError(403, "cross-site request refused")

    def session(self, request: Request) -> Session:
        """The request's live session (and the loopback Host check); UiError 401 without one."""
        self.check_host(request)
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise UiError(401, "not signed in")
        request.state.ui_session = session
        return session

    async def change(self, request: Request) -> tuple[Session, dict[str, list[str]]]:
        """The session and form of a change (POST): origin, session and CSRF token all checked."""
        session = self.session(request)
        self.check_origin(request)
        form = await read_form(request)
        token = request.headers.get(CSRF_HEADER) or first(form, "csrf_token")
        if not session.csrf_ok(token):
            raise UiError(403, "missing or wrong CSRF token: reload the page and try again")
        return session, form

    def failure(self, request: Request, exc: UiError) -> Response:
        """How a refused request is answered: sign-in for a page without a session, else an error."""
        wants_json = request.url.path.endswith(".json")
        if exc.status == 401 and not wants_json:
            if request.headers.get("hx-request"):
                return Response(status_code=401, headers={**HEADERS, "HX-Redirect": "/ui/login"})
            return redirect("/ui/login")
        if wants_json:
            return JSONResponse({"error": exc.message}, status_code=exc.status, headers=HEADERS)
        if request.headers.get("hx-request"):  # shown above the page, whatever the request's target
            template = self.env.get_template("_error.html")
            where = {"HX-Retarget": "#messages", "HX-Reswap": "innerHTML"}
            return HTMLResponse(
                template.render(error=exc.message), status_code=exc.status, headers={**HEADERS, **where}
            )
        return self.render(request, "error.html", status=exc.status, error=exc.message)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def first(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (or none) of at most ``MAX_UI_FORM_BYTES``,
    decoded as strict UTF-8 (UiError 413/415/400 otherwise)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_UI_FORM_BYTES:
            raise UiError(413, f"form over {MAX_UI_FORM_BYTES:,} bytes (MAX_UI_FORM_BYTES)")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and kind != "application/x-www-form-urlencoded":
        raise UiError(415, "a dashboard change is an application/x-www-form-urlencoded form")
    try:
        return urllib.parse.parse_qs(
            body.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=2000
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise UiError(400, f"malformed form: {exc}") from None


def optional(value: str | None) -> str | None:
    """A form or query value with its blanks cut off; None when nothing is left."""
    value = (value or "").strip()
    return value or None


def parse_json_object(text: str | None, what: str) -> dict[str, Any] | None:
    """A JSON object typed into a field (None when blank); UiError 422 naming the field otherwise."""
    if not optional(text):
        return None
    try:
        value = json.loads(text or "")
    except json.JSONDecodeError as exc:
        raise UiError(
            422, f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise UiError(422, f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise UiError(422, f'{what} must be a JSON object, like {{"topic": "food"}}')
    return value
