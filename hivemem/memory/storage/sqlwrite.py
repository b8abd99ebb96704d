"""SQLite's write steps: the rows of a batch, the change log of the shared vector index, and the
``base.WriteTx`` steps (update, delete, import) in SQLite's SQL.

Every function here runs inside the ``BEGIN IMMEDIATE`` transaction of ``SQLiteStorage`` (the caller
holds its write lock). ``meta.version`` counts writes and ``changes`` lists the rows deleted or
given a new vector, so that the shared vector index (``vectorindex.py``) can catch up.
"""

from __future__ import annotations

import builtins
import sqlite3

import numpy as np

from hivemem.memory import records
from hivemem.memory.records import NewMemory
from hivemem.memory.storage import ftscontext, rows
from hivemem.memory.storage.base import Locked, Removed
from hivemem.memory.storage.rows import Event
from hivemem.memory.storage.sqlcompile import Compiled

# Row ids of deleted/updated rows, for the shared vector index. Trimmed to this many;
# an index that fell further behind is rebuilt (meta 'pruned' says how far the log was cut).
CHANGES_KEPT = 100_000
# ``expires_at`` ordered: ``purge --expired`` and the "anything expired?" probe of a search are one
# index seek, at any size
EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS memories_expires ON memories(expires_at)"
_ADD_EVENTS = (
    "INSERT INTO history (id, memory_id, old_memory, new_memory, event, created_at, updated_at,"
    " is_deleted, actor_id, role, scope) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def bump(db: sqlite3.Connection, rewrite: bool) -> None:
    """Count one write (``rewrite``: one the index cannot follow row by row: it rebuilds)."""
    keys = "('version','rewrites')" if rewrite else "('version')"
    db.execute(f"UPDATE meta SET value = value + 1 WHERE key IN {keys}")


def log_changes(db: sqlite3.Connection, rids: list[int], logged: bool) -> None:
    """Tell the shared vector index which rows were deleted or got a new vector (``logged``: the
    file's row ids never repeat, else every such change is a rewrite)."""
    if not logged:
        bump(db, rewrite=True)
        return
    db.executemany("INSERT INTO changes (rid) VALUES (?)", [(r,) for r in rids])
    bump(db, rewrite=False)
    last = db.execute("SELECT max(seq) FROM changes").fetchone()[0]
    if last > 2 * CHANGES_KEPT and last % 1024 < len(rids):  # now and then, trim the log
        db.execute("DELETE FROM changes WHERE seq <= ?", (last - CHANGES_KEPT,))
        db.execute("UPDATE meta SET value = ? WHERE key = 'pruned'", (last - CHANGES_KEPT,))


def insert_rows(
    db: sqlite3.Connection,
    memories: list[NewMemory],
    vectors: np.ndarray,
    updated_at: list[str] | None = None,
) -> list[tuple[str, str]]:
    """Insert a batch → ``(id, "ADD" | "NONE")`` per memory. ``updated_at`` (an import): kept from
    the source store, and no ADD events written (the importer writes the history)."""
    results: list[tuple[str, str]] = []
    history: list[Event] = []
    deferred = ftscontext.defer(db, len(memories))  # the keyword context's windows: each once, after
    added: list[tuple[str, int]] = []
    for n, (m, vec) in enumerate(zip(memories, vectors, strict=True)):
        updated = m.created_at if updated_at is None else updated_at[n]
        try:
            cur = db.execute(
                "INSERT INTO memories (id, scope, hash, memory, user_id, agent_id, run_id, actor_id,"
                " role, metadata, created_at, updated_at, vec, expires_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (scope, hash) DO NOTHING",
                (
                    m.id, m.scope, m.hash, m.memory, m.user_id, m.agent_id, m.run_id, m.actor_id,
                    m.role, m.metadata, m.created_at, updated, vec.tobytes(), m.expires_at,
                ),
            )  # fmt: skip
        except sqlite3.IntegrityError:  # UNIQUE(id): a caller-chosen id that names another memory
            raise ValueError(
                f"memory id {m.id!r} is already taken by another memory; update or delete that one"
            ) from None
        if cur.rowcount == 1:
            added.append((m.scope, int(cur.lastrowid or 0)))
            if (
                m.given_id
                and db.execute(  # an id another scope used: never again (records)
                    "SELECT 1 FROM history WHERE memory_id = ? AND (scope IS NULL OR scope != ?) LIMIT 1",
                    (m.id, m.scope),
                ).fetchone()
            ):
                raise records.reused_id(m.id)
            results.append((m.id, "ADD"))
            if updated_at is None:
                history.append(rows.added(m))
        else:
            row = db.execute(
                "SELECT id FROM memories WHERE scope = ? AND hash = ?", (m.scope, m.hash)
            ).fetchone()
            results.append((row[0], "NONE"))
    if deferred:
        ftscontext.reindex_around(db, added, itself=True)
    db.executemany(_ADD_EVENTS, history)
    if any(event == "ADD" for _, event in results):
        bump(db, rewrite=False)
    return results


class SQLiteTx:
    """``base.WriteTx`` on one SQLite transaction."""

    def __init__(self, db: sqlite3.Connection, logged: bool) -> None:
        self.db = db
        self.logged = logged  # see log_changes

    def locked(self, ids: builtins.list[str]) -> dict[str, Locked]:
        from hivemem.infra.sqlitedb import in_chunks

        return {  # BEGIN IMMEDIATE: the whole file is locked already
            r[0]: (r[1], r[2], r[3], r[4], r[5])
            for marks, chunk in in_chunks(ids)
            for r in self.db.execute(
                f"SELECT id, memory, scope, actor_id, role, rid FROM memories WHERE id IN ({marks})", chunk
            )
        }

    def holders(self, keys: builtins.list[tuple[str, str, str]]) -> dict[str, str]:
        out = {}
        for scope, hash_, memory_id in keys:  # one index probe each, in process: no round trips
            row = self.db.execute(
                "SELECT id FROM memories WHERE scope = ? AND hash = ? AND id != ?", (scope, hash_, memory_id)
            ).fetchone()
            if row is not None:
                out[memory_id] = str(row[0])
        return out

    def set_texts(self, texts: builtins.list[tuple[str, str, str]], vectors: np.ndarray, stamp: str) -> None:
        self.db.executemany(
            "UPDATE memories SET memory = ?, hash = ?, vec = ?, updated_at = ? WHERE id = ?",
            [(t, h, v.tobytes(), stamp, i) for (i, t, h), v in zip(texts, vectors, strict=True)],
        )

    def set_metadata(self, values: builtins.list[tuple[str, str]], stamp: str) -> None:
        self.db.executemany(
            "UPDATE memories SET metadata = ?, updated_at = ? WHERE id = ?",
            [(m, stamp, i) for i, m in values],
        )

    def set_expiry(self, values: builtins.list[tuple[str, str | None]], stamp: str) -> None:
        self.db.executemany(
            "UPDATE memories SET expires_at = ?, updated_at = ? WHERE id = ?",
            [(e, stamp, i) for i, e in values],
        )

    def changed(self, rids: builtins.list[int], vector: bool) -> None:
        if vector:
            log_changes(self.db, rids, self.logged)
        else:
            bump(self.db, rewrite=False)  # metadata only: the vectors are unchanged

    def remove(self, where: Compiled) -> builtins.list[Removed]:
        found = self.db.execute(
            f"SELECT id, memory, actor_id, role, rid, scope FROM memories WHERE {where.sql}", where.params
        ).fetchall()
        ftscontext.delete_rows(self.db, [(r[5], r[4]) for r in found])
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in found]

    def removed(self, rids: builtins.list[int]) -> None:
        log_changes(self.db, rids, self.logged)

    def present(self, ids: builtins.list[str]) -> set[str]:
        from hivemem.infra.sqlitedb import in_chunks

        return {
            str(r[0])
            for marks, chunk in in_chunks(ids)
            for r in self.db.execute(f"SELECT id FROM memories WHERE id IN ({marks})", chunk)
        }

    def insert(
        self, memories: builtins.list[NewMemory], vectors: np.ndarray, updated_at: builtins.list[str]
    ) -> builtins.list[tuple[str, str]]:
        return insert_rows(self.db, memories, vectors, updated_at)

    def add_history(self, events: builtins.list[Event], *, skip_known: bool = False) -> None:
        if not skip_known:
            self.db.executemany(_ADD_EVENTS, events)
            return
        self.db.executemany(
            f"INSERT INTO history ({rows.HISTORY}, scope) SELECT ?,?,?,?,?,?,?,?,?,?,?"
            " WHERE NOT EXISTS (SELECT 1 FROM history WHERE id = ?)",
            [(*e, e[0]) for e in events],
        )
