"""PostgreSQL's write steps: a batch's rows in one statement, history events, and the
``base.WriteTx`` steps (update, delete, import) in PostgreSQL's SQL.

Every function here runs in one READ COMMITTED transaction of ``PostgresStorage._write``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import numpy as np

from hivemem.memory import records
from hivemem.memory.records import NewMemory
from hivemem.memory.storage import int8, pgarrays
from hivemem.memory.storage.base import Locked, Removed
from hivemem.memory.storage.rows import HISTORY, Event
from hivemem.memory.storage.sqlcompile import Compiled

RETRIES = 8  # a transaction that meets a deadlock or a serialization failure is retried this often
_UNNEST_EVENTS = (
    "unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
    f" %s::boolean[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u({HISTORY}, scope, ord)"
)


def add_history(conn: Any, ns: str, events: list[Event], skip_known: bool = False) -> None:
    """Insert events in order, as one statement; ``skip_known``: not those whose id is stored."""
    if not events:
        return
    skip = f" WHERE NOT EXISTS (SELECT 1 FROM {ns}.history h WHERE h.id = u.id)" if skip_known else ""
    conn.execute(
        f"INSERT INTO {ns}.history ({HISTORY}, scope) SELECT {HISTORY}, scope FROM {_UNNEST_EVENTS}{skip}"
        " ORDER BY ord",
        [list(col) for col in zip(*events, strict=True)],
    )


def existing_in(conn: Any, ns: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Ids of the memories stored under these (scope, hash) keys."""
    rows = conn.execute(
        f"SELECT scope, hash, id FROM {ns}.memories WHERE (scope, hash) IN"
        " (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    return {(s, h): i for s, h, i in rows}


def insert_rows(
    conn: Any, ns: str, memories: list[NewMemory], vectors: np.ndarray, updated_at: list[str] | None = None
) -> list[tuple[str, str]]:
    """Insert a batch → ``(id, "ADD" | "NONE")`` per memory, in order.

    One statement draws the row ids (``rid``, the insertion order that listing follows) and
    gives them in the batch's order, inserts the rows sorted by (scope, hash) — the lock order
    that keeps concurrent writers free of deadlocks — and writes their ADD events.
    ``updated_at`` (an import): kept from the source store, no ADD events (the importer writes the
    history), and a row whose id is already taken is skipped too.
    """
    todo = sorted(range(len(memories)), key=lambda i: (memories[i].scope, memories[i].hash))
    restoring = updated_at is not None
    conflict = "" if restoring else "(scope, hash)"  # restore: an existing id is skipped too
    history = "" if restoring else (
        f", h AS (INSERT INTO {ns}.history ({HISTORY}, scope) SELECT gen_random_uuid()::text, id, NULL,"
        " memory, 'ADD', created_at, created_at, false, actor_id, role, scope FROM ins)"
    )  # fmt: skip
    added: set[str] = set()
    found: dict[tuple[str, str], str] = {}
    for _ in range(RETRIES):
        cols: list[list[Any]] = [[] for _ in range(14)]
        batch = np.stack([vectors[i] for i in todo])
        codes, scales = int8.quantise(batch)
        for i in todo:
            m = memories[i]
            updated = m.created_at if updated_at is None else updated_at[i]
            for col, value in zip(cols, (i, m.id, m.scope, m.hash, m.memory, m.user_id, m.agent_id,
                                         m.run_id, m.actor_id, m.role, m.metadata, m.created_at,
                                         updated, m.expires_at), strict=True):  # fmt: skip
                col.append(value)
        inserted = conn.execute(
            "WITH r AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence(%s, 'rid')) AS rid"
            " FROM generate_series(1, %s)), o AS (SELECT rid, row_number() OVER (ORDER BY rid) - 1 AS pos"
            " FROM r), u AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %b, %b, %b) WITH ORDINALITY AS u(pos, id, scope, hash,"
            " memory, user_id, agent_id, run_id, actor_id, role, metadata, created_at, updated_at,"
            f" expires_at, vec, code, scale, ord)), ins AS (INSERT INTO {ns}.memories (rid, id, scope,"
            " hash, memory, user_id, agent_id, run_id, actor_id, role, metadata, created_at,"
            " updated_at, expires_at, vec, code, scale) SELECT o.rid, id, scope, hash, memory, user_id,"
            " agent_id, run_id, actor_id, role, metadata, created_at, updated_at, expires_at, vec, code,"
            " scale FROM u JOIN o ON o.pos = u.pos ORDER BY u.ord"
            f" ON CONFLICT {conflict} DO NOTHING RETURNING id, memory, created_at, actor_id, role, scope)"
            f"{history} SELECT id FROM ins",
            [f"{ns}.memories", len(memories), *cols, pgarrays.Vectors(batch), pgarrays.Bytes(codes),
             pgarrays.Reals(scales)],
        ).fetchall()  # fmt: skip
        added.update(r[0] for r in inserted)
        missing = [i for i in todo if memories[i].id not in added]
        if missing:
            found.update(existing_in(conn, ns, [(memories[i].scope, memories[i].hash) for i in missing]))
        # a conflicting row deleted again before we could read it: insert those once more
        todo = [i for i in missing if (memories[i].scope, memories[i].hash) not in found]
        if not todo:
            break
    else:
        raise RuntimeError("could not insert the batch: its rows kept conflicting with changing rows")
    given = [m for m in memories if m.given_id and m.id in added]
    if given:  # after the insert, in its transaction: a concurrent delete cannot slip between
        reused = conn.execute(
            f"SELECT g.id FROM unnest(%s::text[], %s::text[]) AS g(id, scope) JOIN {ns}.history h"
            " ON h.memory_id = g.id WHERE h.scope IS DISTINCT FROM g.scope LIMIT 1",
            ([m.id for m in given], [m.scope for m in given]),
        ).fetchone()
        if reused:
            raise records.reused_id(reused[0])
    return [(m.id, "ADD") if m.id in added else (found[(m.scope, m.hash)], "NONE") for m in memories]


class PgTx:
    """``base.WriteTx`` on one PostgreSQL transaction of schema ``ns``; ``removed`` tells the
    int8 copies (``pgindex``) which rows are gone."""

    def __init__(self, conn: Any, ns: str, removed: Callable[[Any, list[int]], None]) -> None:
        self.conn = conn
        self.ns = ns
        self._removed = removed

    def locked(self, ids: builtins.list[str]) -> dict[str, Locked]:
        found = self.conn.execute(  # in id order: concurrent batches lock alike, never deadlock
            f"SELECT id, memory, scope, actor_id, role, rid FROM {self.ns}.memories WHERE id = ANY(%s)"
            " ORDER BY id FOR UPDATE",
            (ids,),
        ).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in found}

    def holders(self, keys: builtins.list[tuple[str, str, str]]) -> dict[str, str]:
        found = self.conn.execute(
            f"SELECT k.mid, m.id FROM unnest(%s::text[], %s::text[], %s::text[]) AS k(scope, hash, mid)"
            f" JOIN {self.ns}.memories m ON m.scope = k.scope AND m.hash = k.hash AND m.id <> k.mid",
            [list(col) for col in zip(*keys, strict=True)],
        ).fetchall()
        return {str(r[0]): str(r[1]) for r in found}

    def set_texts(self, texts: builtins.list[tuple[str, str, str]], vectors: np.ndarray, stamp: str) -> None:
        codes, scales = int8.quantise(vectors)
        ids, memories, hashes = [list(col) for col in zip(*texts, strict=True)]
        self.conn.execute(
            f"UPDATE {self.ns}.memories m SET memory = u.memory, hash = u.hash, vec = u.vec, code = u.code,"
            " scale = u.scale, tx = pg_current_xact_id(), updated_at = %s FROM unnest(%s::text[],"
            " %s::text[], %s::text[], %b, %b, %b) AS u(id, memory, hash, vec, code, scale) WHERE m.id = u.id",
            [stamp, ids, memories, hashes, pgarrays.Vectors(vectors), pgarrays.Bytes(codes),
             pgarrays.Reals(scales)],
        )  # fmt: skip

    def set_metadata(self, values: builtins.list[tuple[str, str]], stamp: str) -> None:
        self.conn.execute(
            f"UPDATE {self.ns}.memories m SET metadata = u.metadata, updated_at = %s"
            " FROM unnest(%s::text[], %s::text[]) AS u(id, metadata) WHERE m.id = u.id",
            [stamp, [i for i, _ in values], [v for _, v in values]],
        )

    def set_expiry(self, values: builtins.list[tuple[str, str | None]], stamp: str) -> None:
        self.conn.execute(
            f"UPDATE {self.ns}.memories m SET expires_at = u.expires_at, updated_at = %s"
            " FROM unnest(%s::text[], %s::text[]) AS u(id, expires_at) WHERE m.id = u.id",
            [stamp, [i for i, _ in values], [v for _, v in values]],
        )

    def changed(self, rids: builtins.list[int], vector: bool) -> None:
        """Nothing to do: ``set_text`` stamps the row's ``tx``, which the int8 copies follow."""

    def remove(self, where: Compiled) -> builtins.list[Removed]:
        ns = self.ns
        found = self.conn.execute(
            f"DELETE FROM {ns}.memories WHERE rid IN (SELECT rid FROM {ns}.memories WHERE {where.sql}"
            " ORDER BY rid FOR UPDATE) RETURNING id, memory, actor_id, role, rid, scope",
            where.params,
        ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in found]

    def removed(self, rids: builtins.list[int]) -> None:
        self._removed(self.conn, rids)

    def present(self, ids: builtins.list[str]) -> set[str]:
        found = self.conn.execute(f"SELECT id FROM {self.ns}.memories WHERE id = ANY(%s)", (ids,))
        return {str(r[0]) for r in found}

    def insert(
        self, memories: builtins.list[NewMemory], vectors: np.ndarray, updated_at: builtins.list[str]
    ) -> builtins.list[tuple[str, str]]:
        return insert_rows(self.conn, self.ns, memories, vectors, updated_at)

    def add_history(self, events: builtins.list[Event], *, skip_known: bool = False) -> None:
        add_history(self.conn, self.ns, events, skip_known)
