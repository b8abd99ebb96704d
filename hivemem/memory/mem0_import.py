"""Copy an existing Mem0 store into ``hivemem.Memory``: memories, their scopes, metadata, timestamps
and ids, and the history of every memory (``hivemem memory import --from-mem0 CONFIG.json``).

Mem0 is read through its own classes, so any vector store Mem0 can open works: the config is the
dict you pass to Mem0's ``Memory.from_config`` (``{}`` means Mem0's defaults: local Qdrant in
``/tmp/qdrant``, history in ``~/.mem0/history.db``). Mem0's vectors are not copied: every text is
re-embedded with hivemem's model, because a store only ever holds vectors of one model. Each batch
of memories (with its history rows) is one transaction; ids already in the hivemem store are
skipped, so an interrupted import can simply be run again.

What maps to what: Mem0's payload ``data`` → ``memory``; ``user_id``/``agent_id``/``run_id``/
``actor_id``/``role`` → the same fields; ``created_at``/``updated_at`` → the same (converted to
UTC); every other payload key except Mem0's internals (``hash``, ``text_lemmatized``) → metadata.
A text that Mem0 stored twice in one scope (its hash-check race) is kept once (``duplicates``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.memory.records import ENTITIES, RESERVED_METADATA, NewMemory, prepare

_INTERNAL = {"data", "hash", "text_lemmatized", "created_at", "updated_at", "id"}
_PROMOTED = (*ENTITIES, "actor_id", "role")
_HISTORY = ("id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at",
            "is_deleted", "actor_id", "role")  # fmt: skip
MAX_MEMORIES = 10_000_000  # read at most this many from Mem0's store (its list() has no paging)


def _utc(stamp: Any) -> str | None:
    """An ISO 8601 time as hivemem stores it (UTC, so strings sort in time order)."""
    if not stamp:
        return None
    try:
        t = datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)).isoformat()


def _rows(listed: Any) -> list[Any]:
    """Mem0's stores return either the records or ``(records, next_page)`` (Qdrant's scroll)."""
    if isinstance(listed, list | tuple) and listed and isinstance(listed[0], list | tuple):
        return list(listed[0])
    return list(listed or [])


def open_mem0(config: dict[str, Any]) -> tuple[Any, Path]:
    """Mem0's vector store for ``config`` and the path of its history database."""
    os.environ.setdefault("MEM0_TELEMETRY", "False")
    try:
        from mem0.configs.base import MemoryConfig
        from mem0.utils.factory import VectorStoreFactory
    except ImportError:
        raise ImportError("importing from Mem0 needs the mem0ai package: pip install 'mem0ai>=2.2'") from None
    if not isinstance(config, dict):
        raise TypeError(f"the Mem0 config must be a dict, got {type(config).__name__}")
    cfg = MemoryConfig(**config)
    store = VectorStoreFactory.create(cfg.vector_store.provider, cfg.vector_store.config)
    return store, Path(cfg.history_db_path)


def read_history(path: Path) -> list[dict[str, Any]]:
    """Every row of Mem0's history table (read-only; ``[]`` when the file does not exist)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        have = {r[1] for r in db.execute("PRAGMA table_info(history)")}
        if not have:
            return []
        cols = [c for c in _HISTORY if c in have]
        out = []
        for row in db.execute(f"SELECT {', '.join(cols)} FROM history ORDER BY created_at, rowid"):
            rec = dict(zip(cols, row, strict=True))
            rec["is_deleted"] = int(bool(rec.get("is_deleted")))
            rec["created_at"], rec["updated_at"] = _utc(rec.get("created_at")), _utc(rec.get("updated_at"))
            out.append(rec)
        return out
    finally:
        db.close()


def to_item(memory_id: str, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """One Mem0 record → (``add_batch``-style item, created_at, updated_at)."""
    text = payload.get("data")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Mem0 memory {memory_id}: no text ('data') in its payload")
    metadata = {k: v for k, v in payload.items() if k not in _INTERNAL and k not in _PROMOTED}
    clash = sorted(set(metadata) & RESERVED_METADATA)
    if clash:
        raise ValueError(f"Mem0 memory {memory_id}: metadata keys {clash} are reserved in hivemem")
    message: dict[str, Any] = {"role": payload.get("role") or "user", "content": text}
    if payload.get("actor_id"):
        message["name"] = payload["actor_id"]
    item = {"messages": [message], "metadata": metadata, "id": str(memory_id)}
    item.update({k: payload[k] for k in ENTITIES if payload.get(k)})
    return item, _utc(payload.get("created_at")), _utc(payload.get("updated_at"))


def _batches(records: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def import_mem0(memory: Any, config: dict[str, Any], *, batch: int = 500) -> dict[str, int]:
    """Copy the Mem0 store described by ``config`` into ``memory`` (a ``hivemem.Memory``).

    Returns counts: ``added``, ``skipped`` (id already in this store), ``duplicates`` (text already
    in the scope), ``history`` (Mem0 history rows read).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    store, history_path = open_mem0(config)
    records = _rows(store.list(filters=None, top_k=MAX_MEMORIES))
    records.sort(key=lambda r: _utc((r.payload or {}).get("created_at")) or "")  # keep Mem0's order
    history = read_history(history_path)
    by_memory: dict[str, list[dict[str, Any]]] = {}
    for h in history:
        by_memory.setdefault(str(h["memory_id"]), []).append(h)
    counts = {"added": 0, "skipped": 0, "duplicates": 0, "history": len(history)}
    new: list[tuple[NewMemory, str]] = []  # everything is checked before anything is written
    for rec in records:
        item, created, updated = to_item(str(rec.id), dict(rec.payload or {}))
        (m,) = prepare(**item, where=f"Mem0 memory {item['id']}: ")
        m = dataclasses.replace(m, created_at=created or m.created_at)
        new.append((m, updated or m.created_at))
    storage = memory._storage
    for chunk in _batches(new, batch):
        memories = [m for m, _ in chunk]
        vectors = memory.embedder.embed([m.memory for m in memories])  # one embed call per batch
        rows = [h for m in memories for h in by_memory.pop(m.id, [])]
        results = storage.import_rows(memories, vectors, [u for _, u in chunk], rows)
        for m, (rid, event) in zip(memories, results, strict=True):
            if event == "SKIP":
                counts["skipped"] += 1
            elif event == "NONE" or rid != m.id:
                counts["duplicates"] += 1
            else:
                counts["added"] += 1
    rest = [h for rows in by_memory.values() for h in rows]  # history of memories Mem0 deleted
    if rest:
        storage.import_rows([], np.empty((0, 0), np.float32), [], rest)
    return counts


def load_config(text_or_path: str) -> dict[str, Any]:
    """A Mem0 config from a JSON file, or inline JSON text."""
    path = Path(text_or_path)
    text = path.read_text(encoding="utf-8") if path.exists() else text_or_path
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the Mem0 config is neither a JSON file nor JSON text: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("the Mem0 config must be a JSON object (the dict given to Memory.from_config)")
    return config
