"""API keys and what each may touch: one admin key (``--api-key``) and/or a keys file.

A keys file maps keys to scopes (``--keys keys.json``)::

    {"alice-key": {"user_id": "alice"}, "ops-key": {"admin": true}}

A key limited to a ``user_id`` sees and changes only that user's memories (the memory routes
enforce it); an admin key may do everything. With no key configured at all (loopback only) every
request is admin: the machine's own users are trusted, exactly as with the Unix socket.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


@dataclass(frozen=True)
class Scope:
    """What one request may do: everything (``admin``) or one user's memories (``user_id``)."""

    admin: bool = False
    user_id: str | None = None


ADMIN = Scope(admin=True)


def _scope(key: Any, spec: Any, where: str) -> Scope:
    if not key.strip() or key != key.strip():
        raise ValueError(f"{where}: key {key[:4]!r}… is empty or has surrounding spaces")
    if not isinstance(spec, dict) or set(spec) - {"admin", "user_id"}:
        raise ValueError(f"{where}: the scope of a key must be {{'admin': true}} or {{'user_id': '…'}}")
    admin, user = spec.get("admin", False), spec.get("user_id")
    if not isinstance(admin, bool):
        raise ValueError(f"{where}: 'admin' must be true or false")
    if admin:
        if user is not None:
            raise ValueError(f"{where}: an admin key cannot also be limited to a user_id")
        return ADMIN
    if not isinstance(user, str) or not user.strip():
        raise ValueError(f"{where}: a non-admin key needs a non-empty 'user_id' string")
    return Scope(user_id=user.strip())


def load_keys(path: str | Path) -> dict[str, Scope]:
    """Read and validate a keys file; ValueError naming the file and the problem."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read keys file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"keys file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"keys file {path} must be a non-empty JSON object of key → scope")
    return {key: _scope(key, spec, f"keys file {path}") for key, spec in raw.items()}


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

    def __call__(self, credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> Scope:
        if not self._by_digest:
            return ADMIN
        scope = self._by_digest.get(_digest(credentials.credentials.strip())) if credentials else None
        if scope is None:
            raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer <key>)")
        return scope
