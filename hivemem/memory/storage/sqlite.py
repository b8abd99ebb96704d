"""The embedded default backend: memories, vectors and history in one SQLite file.

Why it is safe across threads and processes:

* WAL journal (readers never block the writer), ``busy_timeout`` (a writer waits for another
  instead of failing with "database is locked"), one ``BEGIN IMMEDIATE`` transaction per batch,
  so a batch is stored whole or not at all — also when the process is killed mid-write.
* Duplicates are refused by ``UNIQUE(scope, hash)`` with ``INSERT … ON CONFLICT DO NOTHING``;
  the loser of a race gets the winner's id back (event ``NONE``). No check-then-insert.
* Group commit (``hivemem.infra.grouping.Combiner``): inserts from concurrent threads of one process
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
same transactions (``ftscontext.py``). Both apply the compiled filter before ranking. Hybrid fusion is
not here but in ``hivemem.memory.hybrid``, the same for every backend.
"""

from __future__ import annotations

import builtins
import json
import logging
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.infra.grouping import Combiner, Release, each_alone
from hivemem.infra.sqlitedb import Connections, disk_full, enable_wal, in_chunks, int_array, retry_locked
from hivemem.memory import records
from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory
from hivemem.memory.storage import fts, ftscontext, rows, sqlwrite
from hivemem.memory.storage.base import KEYWORD_PARTS, ROW, Capabilities, Storage, T, WriteTx, window_sums
from hivemem.memory.storage.sqlcompile import SQLITE
from hivemem.memory.storage.vectorindex import SharedIndex, StoreState, read_state

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
    expires_at TEXT,  -- records.expiry: the UTC instant it expires; NULL: never
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
_FIELDS = rows.FIELDS  # the names the search methods below use
_record = rows.record
# Reads of search results as ONE result row each (JSON; vectors end to end, as in
# ``indexrank.fetch``): a result row is a step of sqlite3, which lets other threads take the GIL,
# and with threads searching at once each of those is a hand-off (docs/memory.md#concurrent-searches).
_RECORDS = (
    f"SELECT json_group_array(json_array({_FIELDS})) FROM memories"
    " WHERE rid IN (SELECT value FROM json_each(?))"
)
# What the fusion needs of a hybrid search's candidates (rids ?1), as ONE result row: their rids
# and ids ({dates}: their created_at too, else NULL), and the vectors of those without a cosine yet
# (rids ?2) end to end, all in the order of the rows (group_concat skips the NULLs). Flat lists:
# a JSON array per row cost ~1.4x as much
_IDENTIFY = (
    "SELECT group_concat(rid), json_group_array(id), {dates},"
    " CAST(group_concat(CASE WHEN rid IN (SELECT value FROM json_each(?2)) THEN vec END, '') AS BLOB)"
    " FROM memories WHERE rid IN (SELECT value FROM json_each(?1))"
)
_IDENTIFY_DATED = _IDENTIFY.format(dates="json_group_array(created_at)")
_IDENTIFY = _IDENTIFY.format(dates="NULL")
# In id order (as the planner read them when it was not said): ``identify`` scores its vectors in
# this order too, so a cosine is computed in the same matrix, bit for bit (a BLAS product's rounding
# may depend on where a row sits in it)
_COSINES = (
    "SELECT json_group_array(id), CAST(group_concat(vec, '') AS BLOB) FROM"
    " (SELECT id, vec FROM memories WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id)"
)
# Each memory's window (it and the fts.CONTEXT_BEFORE rows before it in its scope), one row per
# member, as ONE result row (see _RECORDS), by the (scope, rid) index ``enable_vector_context`` makes
# (named: the planner preferred UNIQUE (scope, hash) and sorted the whole scope for each memory)
_WINDOWS = (
    "SELECT json_group_array(id), CAST(group_concat(vec, '') AS BLOB) FROM"
    " (SELECT m.id AS id, w.vec AS vec FROM memories m JOIN memories w ON w.rid IN"
    " (SELECT x.rid FROM memories x INDEXED BY memories_scope_rid WHERE x.scope = m.scope AND x.rid <= m.rid"
    f" ORDER BY x.rid DESC LIMIT {fts.CONTEXT_BEFORE + 1})"
    " WHERE m.id IN (SELECT value FROM json_each(?)) ORDER BY m.rid, w.rid DESC)"
)
SCOPE_RID_INDEX = "CREATE INDEX IF NOT EXISTS memories_scope_rid ON memories(scope, rid)"  # as fts's
_BUSY_MS = 60_000
_log = logging.getLogger("hivemem.memory")


def _scored(names: list[str], vecs: np.ndarray, vector: np.ndarray) -> dict[str, float]:
    """name → cosine, for the rows of ``vecs`` (``names``, in that order)."""
    return dict(zip(names, (vecs @ np.asarray(vector, dtype=np.float32)).tolist(), strict=True))


def _lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text


# One insert call's memories and vectors: a member of a group commit.
_Batch = tuple[list[NewMemory], np.ndarray]


class SQLiteStorage(Storage):
    """See the module docstring. ``path`` is created with its parent directories."""

    capabilities = Capabilities(keywords=True, group_commit=True)
    dialect = SQLITE
    _memories = "memories"
    _history = "history"

    def __init__(self, path: str | Path, dates: bool | None = None) -> None:
        """``dates``: the ``keyword_dates`` wanted (``backends.open_storage``), applied in the
        opening transaction, before the keyword context is brought up to date; None: as the store has it."""
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
        self._dated: bool | None = None  # the keyword layout's date words, as last seen (has_dates)
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
        self._keywords = fts.KeywordIndex()
        self._init_schema(dates)

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

    def _init_schema(self, dates: bool | None) -> None:
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
                if "expires_at" not in {r[1] for r in db.execute("PRAGMA table_info(memories)")}:
                    db.execute("ALTER TABLE memories ADD COLUMN expires_at TEXT")  # a file made before
                db.execute(sqlwrite.EXPIRY_INDEX)
                fts.ensure_schema(db, dates)  # before the context (below): its windows made once
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise
            sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'memories'").fetchone()[0]
            # Files made before row ids were AUTOINCREMENT may reuse the id of a deleted last
            # row, which an incremental index cannot tell apart: there, deletes rebuild it.
            self._logged = "AUTOINCREMENT" in sql.upper()

        self._opening(create)
        self.enable_context(create=False)

    def _opening(self, step: Callable[[], None]) -> None:
        """Run a schema step of opening: retried while another opener holds the file; a full
        disk is ``DiskFull`` naming the file."""
        try:
            retry_locked(step, _BUSY_MS / 1000)
        except sqlite3.Error as exc:
            full = disk_full(exc, f"memory database {self.path}")
            if full is None:
                raise
            raise full from exc

    def enable_context(self, create: bool = True) -> None:
        """Bring the keyword context index (``ftscontext.py``) up to date: create it if this store has
        none (``create``; else only a store that has one is upgraded), then index the rows stored
        before it in steps, one transaction each (resumed by the next open if interrupted)."""

        pending = [False]

        def step(work: Callable[[sqlite3.Connection], bool]) -> None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                pending[0] = work(db)
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise

        self._opening(lambda: step(lambda db: ftscontext.ensure_context(db, create)))
        while pending[0]:
            self._opening(lambda: step(ftscontext.backfill_context))

    def has_dates(self) -> bool:
        """In a snapshot: its state (read once per snapshot, no statement of its own); outside one:
        as the last snapshot saw it (a search follows another process's toggle from its next one)."""
        if getattr(self._local, "depth", 0):
            self._dated = self._state(self._db()).keywords == fts.LAYOUT_DATED
        elif self._dated is None:
            self._dated = fts.dated(self._db())
        return self._dated

    def keyword_dates(self, on: bool) -> None:
        """Index each memory's date words with its text (``on``) or not (``datewords``): when the
        store has the other layout, ``memories_fts`` is re-indexed in one transaction (``fts``),
        and the keyword context's windows, if the store has them, are re-made in that transaction
        and re-filled in steps (``enable_context``)."""
        self._dated = None  # read again by the next has_dates
        if fts.dated(self._db()) == on:
            return  # a read: no write at each open

        def rebuild() -> None:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                fts.ensure_schema(db, on)
                ftscontext.ensure_context(db, create=False)
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise

        self._opening(rebuild)
        self.enable_context(create=False)

    def enable_vector_context(self) -> None:
        db = self._db()
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_scope_rid'").fetchone():
            return  # a read: no write at each open

        def create() -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(SCOPE_RID_INDEX)
                db.execute("COMMIT")
            except BaseException:
                self._rollback(db)
                raise

        self._opening(create)

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
        return sqlwrite.insert_rows(db, memories, vectors)

    def _transact(self, body: Callable[[WriteTx], T]) -> T:
        with self._write() as db:
            result = body(sqlwrite.SQLiteTx(db, self._logged))
        self._after_write()
        return result

    def _fetch(self, sql: str, params: builtins.list[Any]) -> builtins.list[tuple[Any, ...]]:
        return self._db().execute(sql, params).fetchall()

    def reset(self) -> None:
        with self._write() as db:
            fts.drop(db)
            ftscontext.drop(db)
            db.execute("DELETE FROM memories")
            fts.ensure_schema(db)
            ftscontext.ensure_context(db, create=False)  # re-created empty if the store had it
            db.execute("DELETE FROM history")
            db.execute("DELETE FROM changes")
            db.execute("UPDATE meta SET value = 0 WHERE key = 'pruned'")  # the log starts again
            db.execute("DELETE FROM meta WHERE key IN ('model_id', 'dim')")
            sqlwrite.bump(db, rewrite=True)
        self._model = None

    # -- export / import (``hivemem.memory.transfer``; ``import_rows`` is ``Storage``'s) ------------

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory with its scope fields and metadata, in insertion order (for JSONL export)."""
        for row in self._db().execute(f"SELECT {_FIELDS} FROM memories ORDER BY rid"):
            yield _record(row)

    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        out: dict[str, list[dict[str, Any]]] = {}
        for marks, chunk in in_chunks(ids):
            found = self._db().execute(
                f"SELECT {rows.HISTORY} FROM history WHERE memory_id IN ({marks}) ORDER BY seq", chunk
            )
            for r in found:
                out.setdefault(r[1], []).append(rows.event_dict(r))
        return out

    def deleted_ids(self) -> builtins.list[str]:
        """Ids that have history but no memory any more (deleted), in order of first event."""
        found = self._db().execute(
            "SELECT memory_id FROM history WHERE memory_id NOT IN (SELECT id FROM memories)"
            " GROUP BY memory_id ORDER BY min(seq)"
        )
        return [r[0] for r in found]

    # -- the shared vector index -----------------------------------------------------------------

    def _after_write(self) -> None:
        """After a commit: the shared index catches up if it lags (``SharedIndex.after_write``)."""
        self.index.after_write(self._db())

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
        self.index.begin()  # the index header is read before the snapshot: see vectorindex.py
        db.execute("BEGIN")
        local.depth, local.state = 1, None
        try:
            yield
        finally:
            local.depth, local.state = 0, None
            db.execute("COMMIT")
        if self.index.lagging():  # the files lag behind: bring them up to date, if nobody is
            self._after_write()

    def _state(self, db: sqlite3.Connection) -> StoreState:
        """The store's state in this thread's snapshot: read once per snapshot (both sides of a
        hybrid search use it)."""
        local = self._local
        if not getattr(local, "depth", 0):
            return read_state(db)
        if local.state is None:
            local.state = read_state(db)
        state: StoreState = local.state
        return state

    @staticmethod
    def _stubs(
        hits: builtins.list[tuple[int, float]], parts: fts.Parts | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Ranked ``(rid, score)`` as stubs (``ROW``), with each one's raw keyword parts if given."""
        if parts:  # keyword_search with context: each hit's raw (body, context) scores
            return [{ROW: rid, "score": s, KEYWORD_PARTS: parts[rid]} for rid, s in hits]
        return [{ROW: rid, "score": s} for rid, s in hits]

    def _completed(
        self, stubs: builtins.list[dict[str, Any]], with_records: bool
    ) -> builtins.list[dict[str, Any]]:
        """``stubs``, or ``with_records`` their records (read here) with their scores."""
        if not with_records or not stubs:
            return stubs
        found = self.records([h[ROW] for h in stubs])
        out = []
        for h in stubs:
            if h[ROW] in found:
                out.append(record := {**found[h[ROW]], "score": h["score"]})
                if KEYWORD_PARTS in h:
                    record[KEYWORD_PARTS] = h[KEYWORD_PARTS]
        return out

    def search(
        self,
        vector: np.ndarray,
        where: Node | None,
        k: int,
        threshold: float | None,
        with_records: bool = True,
    ) -> builtins.list[dict[str, Any]]:
        if self._model is None:
            raise RuntimeError("bind_model() must be called before search()")
        where_ = self.compile(where)
        db = self._db()
        with self.snapshot():
            hits = self.index.nearest(db, vector, where_, k, threshold, self._state(db))
            return self._completed(self._stubs(hits), with_records)

    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int, with_records: bool = True
    ) -> builtins.list[dict[str, Any]]:
        compiled = self.compile(where)
        sql, params = compiled.sql, compiled.params
        db = self._db()
        with self.snapshot():
            state = self._state(db)
            kept, scope, rows = self._keywords.plan(db, state, terms, fts.scope_tokens(where))
            hits, parts = self._keywords.search(db, kept, scope, rows, sql, params, k, self.context)
            return self._completed(self._stubs(hits, parts), with_records)

    def identify(
        self, vector_hits: builtins.list[dict[str, Any]], keyword_hits: builtins.list[dict[str, Any]],
        vector: np.ndarray, dates: bool = False,
    ) -> tuple[builtins.list[dict[str, Any]], builtins.list[dict[str, Any]], dict[str, float]]:  # fmt: skip
        """Stubs (``ROW``) identified by ONE statement (``_IDENTIFY``), which also reads the vectors
        of the keyword hits that are not vector hits; records as ``Storage.identify``."""
        stubs = [*vector_hits, *keyword_hits]
        if not stubs or ROW not in stubs[0]:
            return super().identify(vector_hits, keyword_hits, vector, dates)
        seen = {h[ROW] for h in vector_hits}
        lacking = {h[ROW] for h in keyword_hits} - seen
        wanted = json.dumps(list(dict.fromkeys(h[ROW] for h in stubs)))
        sql = _IDENTIFY_DATED if dates else _IDENTIFY
        listed, names, created, blob = self._db().execute(sql, (wanted, json.dumps(list(lacking)))).fetchone()
        rids: builtins.list[int] = int_array(listed).tolist()
        ids: builtins.list[str] = json.loads(names)
        known = dict(zip(rids, ids, strict=True))
        stamps = dict(zip(rids, json.loads(created), strict=True)) if dates else {}
        for h in stubs:
            if h[ROW] in known:
                h["id"] = known[h[ROW]]
                if dates:
                    h["created_at"] = stamps[h[ROW]]
        cosines: dict[str, float] = {}
        read = [i for rid, i in known.items() if rid in lacking]  # the vectors' rows, in order
        if read:  # scored in id order, as ``cosines``
            vecs = np.frombuffer(blob, dtype=np.float32).reshape(len(read), -1)
            order = sorted(range(len(read)), key=read.__getitem__)
            cosines = _scored([read[i] for i in order], vecs[order], vector)
        return (
            [h for h in vector_hits if h[ROW] in known],
            [h for h in keyword_hits if h[ROW] in known],
            cosines,
        )

    def records(self, handles: builtins.list[Any]) -> dict[Any, dict[str, Any]]:
        """By rid, as ONE result row (``_RECORDS``)."""
        if not handles:
            return {}
        found = self._db().execute(_RECORDS, (json.dumps(list(dict.fromkeys(handles))),)).fetchone()[0]
        return {r[0]: _record(r, with_score=True) for r in json.loads(found)}

    def cosines(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, float]:
        if not ids:
            return {}
        found, blob = self._db().execute(_COSINES, (json.dumps(ids),)).fetchone()
        names: builtins.list[str] = json.loads(found)
        if not names:
            return {}
        return _scored(names, np.frombuffer(blob, dtype=np.float32).reshape(len(names), -1), vector)

    def window_scores(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, tuple[float, float]]:
        if not ids:
            return {}
        found, blob = self._db().execute(_WINDOWS, (json.dumps(ids),)).fetchone()
        names: builtins.list[str] = json.loads(found)
        if not names:
            return {}
        return window_sums(names, np.frombuffer(blob, dtype=np.float32).reshape(len(names), -1), vector)

    def close(self) -> None:
        self._conns.close()
        self._local = threading.local()
        self.index.close()
