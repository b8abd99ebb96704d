"""API keys and what each may touch: one admin key (``--api-key``) and/or a keys file.

A keys file maps keys to scopes (``--keys keys.json``)::

    {"alice-key": {"user_id": "alice"}, "ops-key": {"admin": true}}

A key limited to a ``user_id`` sees and changes only that user's memories (the memory routes
enforce it); an admin key may do everything. With no key configured at all (loopback only) every
request is admin: the machine's own users are trusted, exactly as with the Unix socket.
"""

from __future__ import annotations

import hashlib

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hivemem.http.keys import ADMIN, Scope, load_keys

__all__ = ["ADMIN", "KeyRing", "Scope", "load_keys"]


UNAUTHORIZED = "missing or wrong API key (send Authorization: Bearer <key>)"

# Declared through FastAPI's security helper so that the OpenAPI spec documents the bearer scheme.
_BEARER = HTTPBearer(auto_error=False, description="An API key from --api-key or the --keys file.")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Resolves ``Authorization: Bearer <key>`` to a :class:`Scope` (a FastAPI dependency).

    Keys are looked up by their SHA-256, so the lookup time says nothing about how much of a
    guessed key was right.
    """

    def __init__(self, api_key: str | None = None, keys: dict[str, Scope] | None = None) -> None:
        scopes = dict(keys or {})
        if api_key:
            scopes[api_key] = ADMIN
        self._by_digest = {_digest(k): s for k, s in scopes.items()}

    @property
    def required(self) -> bool:
        return bool(self._by_digest)

    async def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> Scope:
        # async (it never blocks: one SHA-256 and a dict lookup): FastAPI runs a sync dependency in a
        # worker thread, a thread hop per request (docs/http.md, "CPU per request, round 2")
        scope = self.lookup(credentials.credentials if credentials else None)
        if scope is None:
            raise HTTPException(401, UNAUTHORIZED)
        return scope

    def lookup(self, key: str | None) -> Scope | None:
        """The scope of ``key`` (ADMIN when no key is configured), None for a missing or wrong one."""
        if not self._by_digest:
            return ADMIN
        return self._by_digest.get(_digest(key.strip())) if key else None

    def from_header(self, authorization: str | None) -> Scope | None:
        """``lookup`` for a raw ``Authorization`` header (routes outside FastAPI's dependencies)."""
        scheme, _, key = (authorization or "").partition(" ")
        return self.lookup(key if scheme.lower() == "bearer" else None)
