"""What both backends store and read back, written once: columns, records, history events, checks.

The backends select ``FIELDS`` in this order and turn a row into Mem0's record shape with
``record``; they write history events as ``Event`` tuples (the ``HISTORY`` columns, then the scope
the memory had when it happened) and read them back with ``event_dict``. Only the SQL that moves
these tuples is a backend's own.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np

from hivemem.memory.records import NewMemory

FIELDS = "rid, id, memory, hash, metadata, created_at, updated_at, user_id, agent_id, run_id, actor_id, role"
FIELDS += ", expires_at"  # last: ``record`` reads it as ``expiration_date``; score columns follow
PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role")
HISTORY = "id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted, actor_id, role"
HISTORY_KEYS = tuple(HISTORY.split(", "))
# one history event: the HISTORY columns, then the scope (None: unknown, an event imported for a
# memory that is not here)
Event = tuple[
    str, str, str | None, str | None, str, str | None, str | None, bool, str | None, str | None, str | None
]
# the text fields of a memory that PostgreSQL text cannot hold a NUL in
_TEXT_FIELDS = ("memory", "id", "user_id", "agent_id", "run_id", "actor_id", "role")


def record(row: tuple[Any, ...], score: float | None = None, *, with_score: bool = False) -> dict[str, Any]:
    """A ``FIELDS`` row (score columns may follow) in Mem0's record shape: promoted keys only when
    set, metadata None when empty, ``expiration_date`` only when the memory expires (as Mem0)."""
    meta = json.loads(row[4]) if row[4] and row[4] != "{}" else None
    out: dict[str, Any] = {"id": row[1], "memory": row[2], "hash": row[3], "metadata": meta}
    if with_score:
        out["score"] = score
    out["created_at"], out["updated_at"] = row[5], row[6]
    for key, value in zip(PROMOTED, row[7:12], strict=True):
        if value is not None:
            out[key] = value
    if row[12] is not None:
        out["expiration_date"] = row[12]
    return out


def event(
    memory_id: str,
    old: str | None,
    new: str | None,
    kind: str,
    stamp: str,
    actor: str | None,
    role: str | None,
    scope: str | None,
) -> Event:
    """A new history event (``ADD``, ``UPDATE``, ``DELETE``) with a fresh id."""
    return (str(uuid.uuid4()), memory_id, old, new, kind, stamp, stamp, kind == "DELETE", actor, role, scope)


def added(m: NewMemory) -> Event:
    """The ``ADD`` event of a memory just stored."""
    return event(m.id, None, m.memory, "ADD", m.created_at, m.actor_id, m.role, m.scope)


def imported(h: dict[str, Any], scope: str | None) -> Event:
    """A history row of another store (``Storage.import_rows``) as an event of ``scope``."""
    v: list[Any] = [h.get(c) for c in HISTORY_KEYS]
    return (v[0], v[1], v[2], v[3], v[4], v[5], v[6], bool(v[7]), v[8], v[9], scope)


def event_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``HISTORY`` row (more columns may follow) as the dict ``Memory.history`` returns."""
    out = dict(zip(HISTORY_KEYS, row[: len(HISTORY_KEYS)], strict=True))
    out["is_deleted"] = bool(out["is_deleted"])
    return out


def checked_vectors(memories: list[NewMemory], vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """``vectors`` as contiguous float32, one row of ``dim`` columns per memory (ValueError else)."""
    if len(memories) != len(vectors):
        raise ValueError(f"{len(memories)} memories but {len(vectors)} vectors")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if dim is not None and len(vectors) and vectors.shape[1:] != (dim,):
        raise ValueError(f"vectors must have {dim} columns, got shape {vectors.shape}")
    return vectors


def check_nul(memories: list[NewMemory], backend: str) -> None:
    """Refuse U+0000 up front, naming the field (for a backend whose text cannot hold it)."""
    for m in memories:
        for name in _TEXT_FIELDS:
            value = getattr(m, name)
            if value is not None and "\x00" in value:
                raise ValueError(f"{name} contains a NUL character (U+0000), which {backend} cannot store")
        if "\\u0000" in m.metadata and _has_nul(json.loads(m.metadata)):
            raise ValueError(f"metadata contains a NUL character (U+0000), which {backend} cannot store")


def nul_in_update(text: str | None, metadata: str | None) -> bool:
    """Whether the new text or metadata JSON of an update holds U+0000."""
    if text is not None and "\x00" in text:
        return True
    return metadata is not None and "\\u0000" in metadata and _has_nul(json.loads(metadata))


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
