"""Moving a memory store: JSONL export and import that keep ids, timestamps, metadata and history.

``hivemem memory export | hivemem memory import -`` copies a store to another one, also between
SQLite and PostgreSQL. One JSON object per line:

* a memory: ``{"id", "memory", "metadata", "created_at", "updated_at", "user_id"/"agent_id"/
  "run_id", "actor_id", "role", "expiration_date", "history": [event, …]}`` (absent fields are
  left out);
* the history of a deleted memory: ``{"id", "deleted": true, "history": [event, …]}``.

An event is a row of ``Memory.history`` (``id, memory_id, old_memory, new_memory, event,
created_at, updated_at, is_deleted, actor_id, role``). Vectors are not exported: import embeds
with the target's model (so a dump also moves a store to another model).

Import validates every line as ``add`` validates its input (text, scope, metadata) plus the
fields it keeps (ids, timestamps, events), and stores each batch in one transaction through the
storage's ``import_rows`` (the path ``--from-mem0`` takes too). A memory whose id, or whose text
in the same scope, is already in the target is skipped, and so is an event whose id is there, so
importing the same dump twice changes nothing. A line without ``id`` or ``history`` (an older
export, or hand-written) gets a new id and an ``ADD`` event, as ``add`` would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from hivemem.memory.records import (
    ENTITIES,
    NewMemory,
    check_entity,
    check_memory_id,
    check_metadata,
    check_text,
    content_hash,
    expiry,
    imported,
    now,
    scope_key,
)

EVENT_KEYS = ("id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at",
              "is_deleted", "actor_id", "role")  # fmt: skip
_MEMORY_KEYS = (
    "id",
    "memory",
    "metadata",
    "created_at",
    "updated_at",
    *ENTITIES,
    "actor_id",
    "role",
    "expiration_date",
)
MAX_ID = 256  # characters of an event id, actor or role (memory ids: records.MAX_ID_CHARS)
MAX_STAMP = 64  # characters of a timestamp
MAX_EVENTS = 10_000  # history events of one memory
MAX_LINE = 4 * 1024 * 1024  # bytes of one JSONL line


def export_lines(memory: Any, chunk: int = 1000) -> Iterator[str]:
    """Every memory of ``memory`` (a ``hivemem.Memory``) with its history, then the histories of
    deleted memories; one JSON line each (no newline)."""
    storage = memory._storage
    rows: list[dict[str, Any]] = []

    def flush() -> Iterator[str]:
        events = storage.histories([r["id"] for r in rows])
        for rec in rows:
            out = {k: rec[k] for k in _MEMORY_KEYS if rec.get(k) is not None}
            out["history"] = events.get(rec["id"], [])
            yield json.dumps(out, ensure_ascii=False)
        rows.clear()

    for rec in storage.export_rows():
        rows.append(rec)
        if len(rows) >= chunk:
            yield from flush()
    yield from flush()
    deleted = storage.deleted_ids()
    for start in range(0, len(deleted), chunk):
        part = deleted[start : start + chunk]
        events = storage.histories(part)
        for memory_id in part:
            yield json.dumps({"id": memory_id, "deleted": True, "history": events.get(memory_id, [])},
                             ensure_ascii=False)  # fmt: skip


def _opt_str(value: Any, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{what} must be a string of at most {limit} characters")
    return value


def _event(raw: Any, memory_id: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a history event must be an object")
    extra = set(raw) - set(EVENT_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown history keys {sorted(extra)}")
    if raw.get("memory_id", memory_id) != memory_id:
        raise ValueError(f"{where}: history event of another memory ({raw.get('memory_id')!r})")
    if raw.get("event") not in ("ADD", "UPDATE", "DELETE"):
        raise ValueError(f"{where}: event must be ADD, UPDATE or DELETE, got {raw.get('event')!r}")
    if not isinstance(raw.get("is_deleted", False), bool):
        raise ValueError(f"{where}: is_deleted must be true or false")
    for key in ("old_memory", "new_memory"):
        if raw.get(key) is not None:
            check_text(raw[key], f"{where}: {key}")
    return {
        "id": _opt_str(raw.get("id"), f"{where}: id", MAX_ID) or str(uuid.uuid4()),
        "memory_id": memory_id,
        "old_memory": raw.get("old_memory"),
        "new_memory": raw.get("new_memory"),
        "event": raw["event"],
        "created_at": _stamp(raw.get("created_at"), f"{where}: created_at"),
        "updated_at": _stamp(raw.get("updated_at"), f"{where}: updated_at"),
        "is_deleted": bool(raw.get("is_deleted", False)),
        "actor_id": _opt_str(raw.get("actor_id"), f"{where}: actor_id", MAX_ID),
        "role": _opt_str(raw.get("role"), f"{where}: role", MAX_ID),
    }


def _stamp(value: Any, what: str) -> str | None:
    """A time of the file (at most ``MAX_STAMP`` characters), in UTC as hivemem stores times
    (``records.imported``: the date words of ``keyword_dates`` are the UTC date's)."""
    text = _opt_str(value, what, MAX_STAMP)
    return None if text is None else imported(text, what)


def _history(rec: dict[str, Any], memory_id: str, where: str) -> list[dict[str, Any]]:
    events = rec.get("history", [])
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise ValueError(f"{where}: history must be a list of at most {MAX_EVENTS} events")
    return [_event(e, memory_id, f"{where} history[{i}]") for i, e in enumerate(events)]


def parse_line(
    line: str, where: str
) -> tuple[NewMemory, str, list[dict[str, Any]]] | tuple[str, list[dict[str, Any]]]:
    """One JSONL line → ``(memory, updated_at, history)``, or ``(deleted id, history)``."""
    if len(line.encode("utf-8", "surrogatepass")) > MAX_LINE:
        raise ValueError(f"{where}: longer than {MAX_LINE} bytes")
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if rec.get("deleted") is True:
        if rec.get("id") is None:
            raise ValueError(f"{where}: a deleted memory's history needs its id")
        memory_id = check_memory_id(rec["id"], f"{where}: ")
        return memory_id, _history(rec, memory_id, where)
    extra = set(rec) - {*_MEMORY_KEYS, "history", "hash"}
    if extra:
        raise ValueError(f"{where}: unknown keys {sorted(extra)}")
    if not isinstance(rec.get("memory"), str):
        raise ValueError(f"{where}: expected an object with a 'memory' string")
    text = check_text(rec["memory"], f"{where}: memory")
    ids = {n: check_entity(n, rec.get(n), f"{where}: ") for n in ENTITIES}
    if not any(ids.values()):
        raise ValueError(f"{where}: at least one of user_id, agent_id or run_id is required")
    memory_id = check_memory_id(rec["id"], f"{where}: ") if rec.get("id") is not None else str(uuid.uuid4())
    created = _stamp(rec.get("created_at"), f"{where}: created_at") or now()
    updated = _stamp(rec.get("updated_at"), f"{where}: updated_at") or created
    role = _opt_str(rec.get("role"), f"{where}: role", MAX_ID) or "user"
    actor = _opt_str(rec.get("actor_id"), f"{where}: actor_id", MAX_ID)
    memory = NewMemory(
        id=memory_id,
        memory=text,
        hash=content_hash(text),
        scope=scope_key(ids["user_id"], ids["agent_id"], ids["run_id"]),
        user_id=ids["user_id"],
        agent_id=ids["agent_id"],
        run_id=ids["run_id"],
        actor_id=actor,
        role=role,
        metadata=check_metadata(rec.get("metadata"), f"{where}: "),
        created_at=created,
        given_id=True,
        expires_at=expiry(rec.get("expiration_date"), f"{where}: "),
    )
    return memory, updated, _history(rec, memory_id, where)  # no events: import_rows writes an ADD


def import_lines(memory: Any, lines: Iterable[str], batch: int = 500) -> dict[str, int]:
    """Import JSONL ``lines`` into ``memory`` (a ``hivemem.Memory``) in transactions of ``batch``
    memories → ``{"added", "skipped"}``. Every line is checked before anything is stored: a bad
    line fails the import with its line number and nothing is written."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000:
        raise ValueError(f"batch must be an integer from 1 to 10000, got {batch!r}")
    parsed: list[Any] = []
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            parsed.append(parse_line(line, f"line {lineno}"))
    memories = [p for p in parsed if len(p) == 3]
    deleted = [event for p in parsed if len(p) == 2 for event in p[1]]
    storage = memory._storage
    added = skipped = 0
    for start in range(0, len(memories), batch):
        part = memories[start : start + batch]
        texts = list(dict.fromkeys(m.memory for m, _, _ in part))
        vectors = memory.embedder.embed(texts)  # binds the model; before the write transaction
        row = {t: i for i, t in enumerate(texts)}
        matrix = vectors[[row[m.memory] for m, _, _ in part]]
        events = [e for _, _, history in part for e in history]
        results = storage.import_rows([m for m, _, _ in part], matrix, [u for _, u, _ in part], events)
        added += sum(event == "ADD" for _, event in results)
        skipped += sum(event != "ADD" for _, event in results)
    if deleted:  # the history of memories deleted in the source store
        storage.import_rows([], np.empty((0, 0), np.float32), [], deleted)
    return {"added": added, "skipped": skipped}
