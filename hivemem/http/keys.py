"""API keys and what each may do, read from ``--api-key`` / ``--keys keys.json``.

Kept free of FastAPI so that ``hivemem serve`` without ``--http`` never imports the web stack
(docs/service.md#measurements-behind-the-design).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    if user.strip() == "*":  # ids are literals; "*" is only ever the filter wildcard
        raise ValueError(
            f"{where}: user_id '*' is not a valid id (a key is bound to one literal user); "
            'a key for every user is an admin key: {"admin": true}'
        )
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
