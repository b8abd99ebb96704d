"""The embedded default backend: memories, vectors and history in one SQLite file.

Why it is safe across threads and processes:

* WAL journal (readers never block the writer), ``busy_timeout`` (a writer waits for another
  instead of failing with "database is locked"), one ``BEGIN IMMEDIATE`` transaction per batch,
  so a batch is stored whole or not at all — also when the process is killed mid-write.
* Duplicates are refused by ``UNIQUE(scope, hash)`` with ``INSERT … ON CONFLICT DO NOTHING``;
  the loser of a race gets the winner's id back (event ``NONE``). No check-then-insert.
* Group commit (``hivemem.grouping.Combiner``): inserts from concurrent threads of one process
  are merged into ONE ``BEGIN IMMEDIATE`` transaction by whichever thread takes the write lock
  next; it commits everything queued meanwhile. ``insert_many`` queues the batches of a whole
  ``Memory`` group of calls at once, so they share a transaction: twenty threads adding one
  memory each pay for one commit, not twenty (docs/memory.md). Each caller gets its own result;
  if a merged transaction fails, its members are retried one transaction each, so an error lands
  on the call that caused it and a batch is still stored whole or not at all. Embedding happens
  before, outside any lock.

Search: the vector side ranks an int8 index shared by every process of the machine (memory-mapped
files next to the store, derived from it: see ``vectorindex.py``) and re-scores the best rows
exactly from the float32 blobs here; the keyword side is an FTS5 index kept by triggers in the
same transactions (``fts.py``). Both apply the compiled filter before ranking. Hybrid fusion is
not here but in ``hivemem.memory.hybrid``, the same for every backend.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.grouping import Combiner, Release, each_alone
from hivemem.memory import records
from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory, now
from hivemem.memory.storage import fts, vectorindex
from hivemem.memory.storage.sqlcompile import compile_where
from hivemem.memory.storage.vectorindex import SharedIndex, StaleIndex, read_state
from hivemem.sqlite import Connections, disk_full, enable_wal, in_chunks, retry_locked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    rid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    hash TEXT NOT NULL,
    memory TEXT NOT NULL,
    user_id TEXT, agent_id TEXT, run_id TEXT, actor_id TEXT, role TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    vec BLOB NOT NULL,
    UNIQUE (scope, hash)
);
CREATE INDEX IF NOT EXISTS memories_user ON memories(user_id);
CREATE INDEX IF NOT EXISTS memories_agent ON memories(agent_id);
CREATE INDEX IF NOT EXISTS memories_run ON memories(run_id);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    memory_id TEXT NOT NULL,
    old_memory TEXT, new_memory TEXT,
    event TEXT NOT NULL,
    created_at TEXT, updated_at TEXT,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    actor_id TEXT, role TEXT,
    scope TEXT  -- the memory's scope when the event happened (NULL: unknown, from an older file)
);
CREATE INDEX IF NOT EXISTS history_memory ON history(memory_id);
CREATE INDEX IF NOT EXISTS history_id ON history(id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0), ('rewrites', 0), ('pruned', 0);
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, rid INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('uid', lower(hex(randomblob(16))))
"""
# Row ids of deleted/updated rows, for the shared vector index. Trimmed to this many;
# an index that fell further behind is rebuilt (meta 'pruned' says how far the log was cut).
_CHANGES_KEPT = 100_000
_FIELDS = "rid, id, memory, hash, metadata, created_at, updated_at, user_id, agent_id, run_id, actor_id, role"
_PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role")
_HISTORY = "id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted, actor_id, role"
_HISTORY_KEYS = tuple(_HISTORY.split(", "))
_BUSY_MS = 60_000
_log = logging.getLogger("hivemem.memory")


def _record(row: tuple, score: float | None = None, *, with_score: bool = False) -> dict[str, Any]:
    """A row in Mem0's record shape (promoted keys only when set, metadata None when empty)."""
    meta = json.loads(row[4]) if row[4] and row[4] != "{}" else None
    out: dict[str, Any] = {"id": row[1], "memory": row[2], "hash": row[3], "metadata": meta}
    if with_score:
        out["score"] = score
    out["created_at"], out["updated_at"] = row[5], row[6]
    for key, value in zip(_PROMOTED, row[7:12], strict=True):
        if value is not None:
            out[key] = value
    return out


def _lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text


# One insert call's memories and vectors: a member of a group commit.
_Batch = tuple[list[NewMemory], np.ndarray]


class SQLiteStorage:
    """See the module docstring. ``path`` is created with its parent directories."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(
                f"memory database {self.path} is a directory; "
                f"give a file such as {self.path / 'memory.sqlite'}"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"cannot create the directory of memory database {self.path}: {exc.strerror}"
            ) from None
        self._local = threading.local()  # per thread: the index header seen last, the lag measured
        self._conns = Connections(self._connect)  # one connection per thread and process
        self._write_lock = threading.Lock()
        # Group commit: whoever takes the write lock next commits every insert queued meanwhile.
        self._jobs: Combiner[_Batch, list[tuple[str, str]]] = Combiner(
            self._commit_group,
            max_wait_ms=0,
            max_size=sys.maxsize,
            lock=self._write_lock,
            then=self._after_write,
        )
        self.commits = 0  # insert transactions committed by this object
        self.inserts = 0  # insert calls served (inserts / commits = mean group size)
        self._model: tuple[str, int] | None = None
        self.index = SharedIndex(Path(f"{self.path}-index"))
        self._warned = False  # said once that the index cannot be used
        self._keywords = fts.KeywordIndex()
        self._init_schema()

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.OperationalError as exc:  # "unable to open database file": say which
            raise sqlite3.OperationalError(f"cannot open memory database {self.path}: {exc}") from None
        db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a killed process loses nothing committed
        db.create_function("hm_lower", 1, _lower, deterministic=True)
        return db

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def _init_schema(self) -> None:
        def create() -> None:
            db = self._db()
            enable_wal(db)
            db.execute("BEGIN IMMEDIATE")  # one opener at a time creates (and fills) the FTS index
            try:
                for statement in _SCHEMA.split(";\n"):
                    db.execute(statement)
                if "scope" not in {r[1] for r in db.execute("PRAGMA table_info(history)")}:
                    db.execute("ALTER TABLE history ADD COLUMN scope TEXT")
                    db.execute(records.BACKFILL_SCOPES.format(history="history", memories="memories"))
                fts.ensure_schema(db)
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise
            sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'memories'").fetchone()[0]
            # Files made before row ids were AUTOINCREMENT may reuse the id of a deleted last
            # row, which an incremental index cannot tell apart: there, deletes rebuild it.
            self._logged = "AUTOINCREMENT" in sql.upper()

        try:
            retry_locked(create, _BUSY_MS / 1000)
        except sqlite3.Error as exc:
            full = disk_full(exc, f"memory database {self.path}")
            if full is None:
                raise
            raise full from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; the caller holds ``_write_lock``."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise
        except Exception as exc:
            full = disk_full(exc, f"memory database {self.path}")
            if full is None or full is exc:
                raise
            raise full from exc

    @staticmethod
    def _rollback(db: sqlite3.Connection) -> None:
        """Undo the open transaction, if any. A COMMIT that failed (SQLITE_FULL, an I/O error) has
        already rolled back: a ROLLBACK then fails with "no transaction is active", and must not
        replace the real cause."""
        if db.in_transaction:
            with suppress(sqlite3.Error):
                db.execute("ROLLBACK")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._transaction() as db:
            yield db

    def _log_changes(self, db: sqlite3.Connection, rids: list[int]) -> None:
        """Tell the shared vector index which rows were deleted or got a new vector."""
        if not self._logged:
            self._bump(db, rewrite=True)
            return
        db.executemany("INSERT INTO changes (rid) VALUES (?)", [(r,) for r in rids])
        self._bump(db, rewrite=False)
        last = db.execute("SELECT max(seq) FROM changes").fetchone()[0]
        if last > 2 * _CHANGES_KEPT and last % 1024 < len(rids):  # now and then, trim the log
            db.execute("DELETE FROM changes WHERE seq <= ?", (last - _CHANGES_KEPT,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'pruned'", (last - _CHANGES_KEPT,))

    @staticmethod
    def _bump(db: sqlite3.Connection, rewrite: bool) -> None:
        keys = "('version','rewrites')" if rewrite else "('version')"
        db.execute(f"UPDATE meta SET value = value + 1 WHERE key IN {keys}")

    # -- model ---------------------------------------------------------------------------------

    def bind_model(self, model_id: str, dim: int) -> None:
        if self._model == (model_id, dim):
            return
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('model_id', ?), ('dim', ?)", (model_id, dim)
            )
            stored = dict(
                db.execute("SELECT key, value FROM meta WHERE key IN ('model_id','dim')").fetchall()
            )
        if (stored["model_id"], int(stored["dim"])) != (model_id, dim):
            raise ValueError(
                f"{self.path} holds vectors of {stored['model_id']} (dim {stored['dim']}); this embedder is "
                f"{model_id} (dim {dim}). Vectors of different models cannot be compared: use another path"
            )
        self._model = (model_id, dim)

    # -- writes --------------------------------------------------------------------------------

    def existing(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        if not keys:
            return out
        db = self._db()
        if len(keys) == 1:
            row = db.execute("SELECT id FROM memories WHERE scope = ? AND hash = ?", keys[0]).fetchone()
            if row:
                out[keys[0]] = row[0]
            return out
        for start in range(0, len(keys), 400):
            chunk = keys[start : start + 400]
            marks = ",".join(["(?,?)"] * len(chunk))
            flat = [v for key in chunk for v in key]
            # One index probe per key. ``WHERE (scope, hash) IN (VALUES …)`` scanned the whole
            # table instead: 1,000 keys (an add_batch(1000)) took 220 ms at 100,000 rows, now 2–4
            # ms; 14 keys (a group of single adds) at 20,000 rows 4 ms, now 19 µs.
            sql = (
                f"SELECT m.scope, m.hash, m.id FROM (VALUES {marks}) AS k CROSS JOIN memories AS m"
                " ON m.scope = k.column1 AND m.hash = k.column2"
            )
            for scope, hash_, id_ in db.execute(sql, flat):
                out[(scope, hash_)] = id_
        return out

    def insert(self, memories: list[NewMemory], vectors: np.ndarray) -> list[tuple[str, str]]:
        (outcome,) = self.insert_many([(memories, vectors)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def insert_many(self, batches: list[_Batch]) -> list[list[tuple[str, str]] | BaseException]:
        """Several batches (one per ``add`` call of a ``Memory`` group) in one group commit.

        → per batch, what ``insert`` returns for it, or the exception that refused it: each batch
        is stored whole or not at all, and the others do not depend on it.
        """
        out: list[list[tuple[str, str]] | BaseException] = []
        jobs: list[tuple[int, _Batch]] = []  # (where in out, the batch)
        for memories, vectors in batches:
            if len(memories) != len(vectors):
                out.append(ValueError(f"{len(memories)} memories but {len(vectors)} vectors"))
                continue
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if self._model is not None and len(vectors) and vectors.shape[1:] != (self._model[1],):
                width = self._model[1]
                out.append(ValueError(f"vectors must have {width} columns, got shape {vectors.shape}"))
                continue
            jobs.append((len(out), (memories, vectors)))
            out.append([])
        if jobs:  # queued together: one leader takes them all
            for (i, _), outcome in zip(jobs, self._jobs.submit_many([(j, 1) for _, j in jobs]), strict=True):
                out[i] = outcome
        return out

    def _commit_group(self, group: list[_Batch], release: Release) -> list[Any]:
        """The group-commit runner (the write lock is held): ``group`` in one transaction; if that
        fails, each member in its own, so an error lands on the batch that caused it."""
        self.inserts += len(group)
        try:
            with self._transaction() as db:
                results = [self._insert_rows(db, memories, vectors) for memories, vectors in group]
        except Exception as exc:
            return [exc] if len(group) == 1 else each_alone(self._commit_one, group)
        self.commits += 1
        return results

    def _commit_one(self, batch: _Batch) -> list[tuple[str, str]]:
        with self._transaction() as db:
            result = self._insert_rows(db, *batch)
        self.commits += 1
        return result

    def _insert_rows(
        self, db: sqlite3.Connection, memories: list[NewMemory], vectors: np.ndarray
    ) -> list[tuple[str, str]]:
        results: list[tuple[str, str]] = []
        history: list[tuple] = []
        for m, vec in zip(memories, vectors, strict=True):
            try:
                cur = db.execute(
                    "INSERT INTO memories (id, scope, hash, memory, user_id, agent_id, run_id, actor_id,"
                    " role, metadata, created_at, updated_at, vec) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (scope, hash) DO NOTHING",
                    (
                        m.id, m.scope, m.hash, m.memory, m.user_id, m.agent_id, m.run_id, m.actor_id,
                        m.role, m.metadata, m.created_at, m.created_at, vec.tobytes(),
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError:  # UNIQUE(id): a caller-chosen id that names another memory
                raise ValueError(
                    f"memory id {m.id!r} is already taken by another memory; update or delete that one"
                ) from None
            if cur.rowcount == 1:
                if (
                    m.given_id
                    and db.execute(  # an id another scope used: never again (records)
                        "SELECT 1 FROM history WHERE memory_id = ? AND (scope IS NULL OR scope != ?) LIMIT 1",
                        (m.id, m.scope),
                    ).fetchone()
                ):
                    raise records.reused_id(m.id)
                results.append((m.id, "ADD"))
                history.append(
                    (str(uuid.uuid4()), m.id, None, m.memory, "ADD", m.created_at, m.created_at, 0,
                     m.actor_id, m.role, m.scope)
                )  # fmt: skip
            else:
                row = db.execute(
                    "SELECT id FROM memories WHERE scope = ? AND hash = ?", (m.scope, m.hash)
                ).fetchone()
                results.append((row[0], "NONE"))
        if history:
            db.executemany(
                "INSERT INTO history (id, memory_id, old_memory, new_memory, event, created_at,"
                " updated_at, is_deleted, actor_id, role, scope) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                history,
            )
            self._bump(db, rewrite=False)
        return results

    def update(
        self,
        memory_id: str,
        text: str | None,
        vector: np.ndarray | None,
        metadata: str | None,
        hash_: str | None = None,
    ) -> None:
        stamp = now()
        with self._write() as db:
            row = db.execute(
                "SELECT memory, scope, actor_id, role, rid FROM memories WHERE id = ?", (memory_id,)
            ).fetchone()
            if row is None:
                raise KeyError(memory_id)
            old, scope, actor, role, rid = row
            if text is not None:
                assert vector is not None and hash_ is not None
                clash = db.execute(
                    "SELECT id FROM memories WHERE scope = ? AND hash = ? AND id != ?",
                    (scope, hash_, memory_id),
                ).fetchone()
                if clash:
                    raise ValueError(f"memory {clash[0]} in the same scope already has this text")
                db.execute(
                    "UPDATE memories SET memory = ?, hash = ?, vec = ?, updated_at = ? WHERE id = ?",
                    (text, hash_, np.asarray(vector, dtype=np.float32).tobytes(), stamp, memory_id),
                )
            if metadata is not None:
                db.execute(
                    "UPDATE memories SET metadata = ?, updated_at = ? WHERE id = ?",
                    (metadata, stamp, memory_id),
                )
            db.execute(
                "INSERT INTO history (id, memory_id, old_memory, new_memory, event, created_at, updated_at,"
                " is_deleted, actor_id, role, scope) VALUES (?,?,?,?,'UPDATE',?,?,0,?,?,?)",
                (
                    str(uuid.uuid4()),
                    memory_id,
                    old,
                    text if text is not None else old,
                    stamp,
                    stamp,
                    actor,
                    role,
                    scope,
                ),
            )
            if text is not None:
                self._log_changes(db, [rid])
            else:
                self._bump(db, rewrite=False)  # metadata only: the vectors are unchanged
        self._after_write()

    def _delete_rows(self, db: sqlite3.Connection, rows: list[tuple]) -> int:
        stamp = now()
        db.executemany("DELETE FROM memories WHERE rid = ?", [(r[4],) for r in rows])
        db.executemany(
            "INSERT INTO history (id, memory_id, old_memory, new_memory, event, created_at, updated_at,"
            " is_deleted, actor_id, role, scope) VALUES (?,?,?,NULL,'DELETE',?,?,1,?,?,?)",
            [(str(uuid.uuid4()), r[0], r[1], stamp, stamp, r[2], r[3], r[5]) for r in rows],
        )
        if rows:
            self._log_changes(db, [r[4] for r in rows])
        return len(rows)

    def delete(self, memory_id: str) -> bool:
        with self._write() as db:
            rows = db.execute(
                "SELECT id, memory, actor_id, role, rid, scope FROM memories WHERE id = ?", (memory_id,)
            ).fetchall()
            deleted = self._delete_rows(db, rows)
        self._after_write()
        return deleted == 1

    def delete_where(self, where: Node) -> int:
        sql, params = compile_where(where)
        with self._write() as db:
            rows = db.execute(
                f"SELECT id, memory, actor_id, role, rid, scope FROM memories WHERE {sql}", params
            ).fetchall()
            deleted = self._delete_rows(db, rows)
        self._after_write()
        return deleted

    def reset(self) -> None:
        with self._write() as db:
            fts.drop(db)
            db.execute("DELETE FROM memories")
            fts.ensure_schema(db)
            db.execute("DELETE FROM history")
            db.execute("DELETE FROM changes")
            db.execute("UPDATE meta SET value = 0 WHERE key = 'pruned'")  # the log starts again
            db.execute("DELETE FROM meta WHERE key IN ('model_id', 'dim')")
            self._bump(db, rewrite=True)
        self._model = None

    # -- reads ---------------------------------------------------------------------------------

    def get(self, memory_id: str) -> dict[str, Any] | None:
        row = self._db().execute(f"SELECT {_FIELDS} FROM memories WHERE id = ?", (memory_id,)).fetchone()
        return _record(row, with_score=True) if row else None

    def list(self, where: Node | None, limit: int) -> list[dict[str, Any]]:
        sql, params = compile_where(where)
        rows = self._db().execute(
            f"SELECT {_FIELDS} FROM memories WHERE {sql} ORDER BY rid LIMIT ?", [*params, limit]
        )
        return [_record(r) for r in rows]

    def history(
        self, memory_id: str, entities: dict[str, str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Events of ``memory_id``, oldest first; with ``entities`` (e.g. ``{"user_id": "bob"}``)
        only those that happened in a scope with these ids (``records.in_scope``)."""
        rows = self._db().execute(
            f"SELECT {_HISTORY}, scope FROM history WHERE memory_id = ? ORDER BY seq", (memory_id,)
        )
        return [
            {**dict(zip(_HISTORY_KEYS, r[:-1], strict=True)), "is_deleted": bool(r[7])}
            for r in rows
            if entities is None or records.in_scope(r[-1], entities)
        ]

    def count(self) -> int:
        return self._db().execute("SELECT count(*) FROM memories").fetchone()[0]

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory with its scope fields and metadata, in insertion order (for JSONL export)."""
        for row in self._db().execute(f"SELECT {_FIELDS} FROM memories ORDER BY rid"):
            yield _record(row)

    # -- export / import (``hivemem.memory.transfer``) ----------------------------------------

    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        out: dict[str, list[dict[str, Any]]] = {}
        for marks, chunk in in_chunks(ids):
            rows = self._db().execute(
                f"SELECT {_HISTORY} FROM history WHERE memory_id IN ({marks}) ORDER BY seq", chunk
            )
            for r in rows:
                out.setdefault(r[1], []).append(
                    {**dict(zip(_HISTORY_KEYS, r, strict=True)), "is_deleted": bool(r[7])}
                )
        return out

    def deleted_ids(self) -> builtins.list[str]:
        """Ids that have history but no memory any more (deleted), in order of first event."""
        rows = self._db().execute(
            "SELECT memory_id FROM history WHERE memory_id NOT IN (SELECT id FROM memories)"
            " GROUP BY memory_id ORDER BY min(seq)"
        )
        return [r[0] for r in rows]

    def import_rows(
        self,
        memories: builtins.list[NewMemory],
        vectors: np.ndarray,
        updated_at: builtins.list[str],
        history: builtins.list[dict[str, Any]],
    ) -> builtins.list[tuple[str, str]]:
        """Copy memories and their history from another store (``hivemem memory import
        --from-mem0``) in ONE transaction: memories whose id is already here are skipped (``"SKIP"``),
        the others inserted as by ``insert`` (``"ADD"``, or ``"NONE"`` for a text already stored in
        the scope); history rows replace the synthetic ``ADD`` row of the memories they describe and
        are skipped when their id is already here, so an import can be repeated."""
        with self._write() as db:
            ids = [m.id for m in memories]
            here = {
                r[0]
                for marks, chunk in in_chunks(ids)
                for r in db.execute(f"SELECT id FROM memories WHERE id IN ({marks})", chunk)
            }
            keep = [i for i, m in enumerate(memories) if m.id not in here]
            seq = db.execute("SELECT coalesce(max(seq), 0) FROM history").fetchone()[0]
            stored = self._insert_rows(db, [memories[i] for i in keep], vectors[keep]) if keep else []
            added = {mid for mid, event in stored if event == "ADD"}
            db.executemany(
                "UPDATE memories SET updated_at = ? WHERE id = ?",
                [(updated_at[i], memories[i].id) for i in keep if memories[i].id in added],
            )
            described = added & {h["memory_id"] for h in history}
            db.executemany(
                "DELETE FROM history WHERE seq > ? AND memory_id = ?", [(seq, mid) for mid in described]
            )
            cols = ("id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at",
                    "is_deleted", "actor_id", "role")  # fmt: skip
            scopes = {m.id: m.scope for m in memories}  # events of deleted memories: unknown (NULL)
            db.executemany(
                f"INSERT INTO history ({', '.join(cols)}, scope) SELECT {', '.join('?' * len(cols))}, ?"
                " WHERE NOT EXISTS (SELECT 1 FROM history WHERE id = ?)",
                [(*(h.get(c) for c in cols), scopes.get(h["memory_id"]), h["id"]) for h in history],
            )
        self._after_write()
        out = dict(zip(keep, stored, strict=True))
        return [out.get(i, (m.id, "SKIP")) for i, m in enumerate(memories)]

    # -- the shared vector index -----------------------------------------------------------------

    def _after_write(self) -> None:
        """After a commit: bring the shared index up to date if it lags ``vectorindex.CATCH_UP`` rows or more.

        Never waits for the index lock (whoever holds it is doing the same work) and never fails
        the write, which is committed already: the index is derived, and readers repair it.
        """
        with suppress(OSError, StaleIndex):
            self._catch_up(wait=False)

    def _catch_up(self, wait: bool) -> None:
        db = self._db()
        header = self.index.read_header()  # before the snapshot: see vectorindex.py
        db.execute("BEGIN")
        try:
            state = read_state(db)
            if state.model is None or not state.dim:
                return
            try:
                view = self.index.view(db, state, header)
                if (state.high - view.last_rid) + (state.seq - view.seq) < vectorindex.CATCH_UP:
                    return
            except StaleIndex:
                small = vectorindex.SMALL_REBUILD
                rows = db.execute("SELECT count(*) FROM (SELECT 1 FROM memories LIMIT ?)", (small + 1,))
                if not wait and rows.fetchone()[0] > small:
                    return  # a writer does not pay for rebuilding a large store: the first search does
            with self.index.locked(wait) as got:
                if got:
                    self._refresh(db, state, header)
        finally:
            db.execute("COMMIT")

    def _refresh(self, db: sqlite3.Connection, state: Any, before: dict[str, Any] | None) -> Any:
        """Under the index lock, in a snapshot: the files brought up to this snapshot (or later).

        ``before`` is the header read before the snapshot began. A header published since (by
        whoever held the lock meanwhile) may be ahead of this snapshot, and is fine to use; the
        very header that was ahead of it before it began means lost commits: rebuilt.
        """
        header = self.index.read_header()
        try:
            view = self.index.view(db, state, header, ahead_ok=header != before)
            if view.seq >= state.seq and view.last_rid >= state.high:
                return view  # someone else is there already
            header = self.index.catch_up(db, state, view.header)
        except (StaleIndex, FileNotFoundError):
            header = self.index.rebuild(db, state)
        return self.index.view(db, state, header, ahead_ok=True)

    def _view(self, db: sqlite3.Connection, state: Any) -> Any:
        """The index as of this snapshot, or None: it cannot be built here (a full disk, an
        unwritable folder), and the search scans SQLite exactly instead."""
        try:
            return self.index.view(db, state, self._local.header)
        except StaleIndex:  # missing, stale, truncated, damaged or foreign: rebuilt (once), never used
            pass
        try:
            with self.index.locked(wait=True):
                return self._refresh(db, state, self._local.header)
        except (OSError, StaleIndex) as exc:
            self._unusable(exc)
            return None

    def _rebuilt(self, db: sqlite3.Connection, state: Any, view: Any, exc: StaleIndex) -> Any:
        """After damage found while a search read the files (a file truncated under it): the index
        rebuilt under the lock, unless someone did already; None if that fails too."""
        _log.warning("the vector index of %s is damaged (%s): rebuilding it", self.path, exc)
        try:
            with self.index.locked(wait=True):
                header = self.index.read_header()
                if header == view.header:
                    header = self.index.rebuild(db, state)
                return self.index.view(db, state, header, ahead_ok=True)
        except (OSError, StaleIndex) as exc2:
            self._unusable(exc2)
            return None

    def _unusable(self, exc: BaseException) -> None:
        """Say once per process why searches scan SQLite exactly (slower, never wrong)."""
        if not self._warned:
            self._warned = True
            _log.warning("the vector index of %s cannot be used (%s): exact searches", self.path, exc)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction for the search calls inside (re-entrant, per thread)."""
        local = self._local
        if getattr(local, "depth", 0):
            local.depth += 1
            try:
                yield
            finally:
                local.depth -= 1
            return
        db = self._db()
        local.header = self.index.read_header()  # before the snapshot: see vectorindex.py
        local.lag = 0
        db.execute("BEGIN")
        local.depth = 1
        try:
            yield
        finally:
            local.depth = 0
            db.execute("COMMIT")
        if local.lag >= vectorindex.CATCH_UP:  # the files lag behind: bring them up to date, if nobody is
            self._after_write()

    def _records(
        self, db: sqlite3.Connection, hits: builtins.list[tuple[int, float]]
    ) -> builtins.list[dict[str, Any]]:
        if not hits:
            return []
        rows = db.execute(
            f"SELECT {_FIELDS} FROM memories WHERE rid IN (SELECT value FROM json_each(?))",
            (json.dumps([rid for rid, _ in hits]),),
        ).fetchall()
        by_rid = {r[0]: r for r in rows}
        return [_record(by_rid[rid], s, with_score=True) for rid, s in hits if rid in by_rid]

    def search(
        self, vector: np.ndarray, where: Node | None, k: int, threshold: float | None
    ) -> builtins.list[dict[str, Any]]:
        if self._model is None:
            raise RuntimeError("bind_model() must be called before search()")
        sql, params = compile_where(where)
        db = self._db()
        with self.snapshot():
            state = read_state(db)
            view = self._view(db, state)
            hits = None
            if view is not None:
                try:
                    hits, lag = self.index.search(db, state, view, vector, sql, params, k, threshold)
                except StaleIndex as exc:  # a file changed under this search: rebuilt, searched again
                    view = self._rebuilt(db, state, view, exc)
                    if view is not None:
                        with suppress(StaleIndex):
                            hits, lag = self.index.search(db, state, view, vector, sql, params, k, threshold)
            if hits is None:  # no usable index: every row, exactly
                hits, lag = vectorindex.exact_search(db, vector, sql, params, k, threshold), 0
            self._local.lag = max(self._local.lag, lag)
            return self._records(db, hits)

    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int
    ) -> builtins.list[dict[str, Any]]:
        sql, params = compile_where(where)
        db = self._db()
        with self.snapshot():
            state = read_state(db)
            kept, scope, rows = self._keywords.plan(db, state.uid, state.high, terms, fts.scope_tokens(where))
            return self._records(db, self._keywords.search(db, kept, scope, rows, sql, params, k))

    def cosines(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, float]:
        if not ids:
            return {}
        rows = (
            self._db()
            .execute(
                "SELECT id, vec FROM memories WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            )
            .fetchall()
        )
        if not rows:
            return {}
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        scores = vecs @ np.asarray(vector, dtype=np.float32)
        return {r[0]: float(s) for r, s in zip(rows, scores, strict=True)}

    def close(self) -> None:
        self._conns.close()
        self._local = threading.local()
        self.index.close()
