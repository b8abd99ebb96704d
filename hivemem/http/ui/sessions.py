"""Signed-in browsers of the dashboard: an opaque session id in a cookie, the key's scope on the server.

The API key is checked once, at sign-in, and never stored: a session holds only the key's
``Scope`` and its CSRF token. The cookie carries 256 random bits (``secrets``), is ``HttpOnly``
and ``SameSite=Strict``, and names nothing; sessions live in the service process (a restart signs
everyone out). Limits: ``MAX_UI_SESSIONS`` at once (signing in past it ends the least recently
used one), ``SESSION_IDLE_S`` without a request, ``SESSION_MAX_S`` in all.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from hivemem.http.keys import Scope

MAX_UI_SESSIONS = 1000
SESSION_IDLE_S = 3600.0  # one hour without a request ends a session
SESSION_MAX_S = 12 * 3600.0  # and twelve hours after sign-in, whatever happens


@dataclass
class Session:
    scope: Scope
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    started: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        """Whether ``token`` is this session's CSRF token (compared in constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


@dataclass
class Sessions:
    """Session id → :class:`Session`, least recently used first (thread-safe)."""

    max_sessions: int = MAX_UI_SESSIONS
    idle: float = SESSION_IDLE_S
    lifetime: float = SESSION_MAX_S
    _by_id: OrderedDict[str, Session] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, scope: Scope) -> tuple[str, Session]:
        """A new session for ``scope``: its id (the cookie's value) and the session."""
        sid = secrets.token_urlsafe(32)
        session = Session(scope)
        with self._lock:
            self._by_id[sid] = session
            while len(self._by_id) > self.max_sessions:
                self._by_id.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        """The live session of ``sid`` (and it counts as used now), None if unknown or expired."""
        if not sid or len(sid) > 64:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(sid)
            if session is None:
                return None
            if now - session.seen > self.idle or now - session.started > self.lifetime:
                del self._by_id[sid]
                return None
            session.seen = now
            self._by_id.move_to_end(sid)
            return session

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._by_id)
