"""The server backend: memories, vectors and history in PostgreSQL with pgvector.

For a fleet that spans machines: every process of every machine opens the same database. The
contract is SQLite's (``base.Storage``), enforced by the database rather than by this process:

* **A batch is one transaction** at READ COMMITTED: one ``INSERT … SELECT FROM unnest(…)`` of the
  whole batch, its history rows, commit. A killed client's transaction is rolled back by the
  server, so a batch is stored whole or not at all.
* **Duplicates are refused by ``UNIQUE(scope, hash)``** with ``ON CONFLICT DO NOTHING``. A writer
  that meets another's uncommitted row with the same key waits for it; once it commits, the
  conflict skips the row and the next statement (a new snapshot under READ COMMITTED) reads the
  winner's id: event ``NONE`` with the stored id, as on SQLite.
* **No deadlocks between writers**: each batch inserts its rows sorted by (scope, hash), so two
  transactions that share keys take them in the same order and the second simply waits (two
  batches inserting the same keys in opposite order deadlock, measured). Deletes lock their rows
  in ``rid`` order. A deadlock or serialization failure reported anyway is retried.
* **Exact search by default**: ``ORDER BY vec <#> query LIMIT k`` over the rows that pass the
  filter (a sequential or index scan, no approximate index), so the top-k equals SQLite's. The
  score is the inner product (the vectors are unit length: cosine), as on SQLite. An HNSW index
  is opt-in (``hnsw=True``): approximate, much faster on large unfiltered searches; its recall is
  measured by ``benchmarks/memory.py``.
* **Namespaces**: every table lives in one PostgreSQL schema (``schema``, default ``hivemem``), so
  several stores share a database; ``reset()`` and ``delete_where`` touch only their own schema.
* The ``vec vector(dim)`` column is created when the model is bound (the first embed), and
  ``CREATE EXTENSION vector`` is tried once; without the right to do so the error says what to ask
  a DBA for.

Metadata is kept twice: ``metadata`` holds the JSON text exactly as written (returned as is, like
SQLite), ``meta`` is a generated ``jsonb`` copy that filters read. Filters compile through
``pgcompile`` (same tree, same semantics as SQLite's ``sqlcompile``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory, now
from hivemem.memory.storage import pglower
from hivemem.memory.storage.pgcompile import compile_where

T = TypeVar("T")

DEFAULT_SCHEMA = "hivemem"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LOCK_KEY = 0x68766D  # "hvm": first half of the advisory-lock key for schema changes
_FIELDS = "rid, id, memory, hash, metadata, created_at, updated_at, user_id, agent_id, run_id, actor_id, role"
_PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role")
_HISTORY = "id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted, actor_id, role"
_RETRIES = 8  # deadlock / serialization failure: the transaction is retried this often
_PLAIN_MAX_DIM = 1000  # vectors up to this width stay in the row (never TOASTed): faster scans

_TABLES = """
CREATE SCHEMA IF NOT EXISTS {ns};
CREATE TABLE IF NOT EXISTS {ns}.memories (
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    scope text COLLATE "C" NOT NULL,
    hash text COLLATE "C" NOT NULL,
    memory text COLLATE "C" NOT NULL,
    user_id text COLLATE "C", agent_id text COLLATE "C", run_id text COLLATE "C",
    actor_id text COLLATE "C", role text COLLATE "C",
    metadata text NOT NULL DEFAULT '{{}}',
    meta jsonb GENERATED ALWAYS AS (metadata::jsonb) STORED,
    created_at text COLLATE "C" NOT NULL,
    updated_at text COLLATE "C" NOT NULL,
    UNIQUE (scope, hash)
);
CREATE INDEX IF NOT EXISTS memories_user ON {ns}.memories (user_id);
CREATE INDEX IF NOT EXISTS memories_agent ON {ns}.memories (agent_id);
CREATE INDEX IF NOT EXISTS memories_run ON {ns}.memories (run_id);
CREATE TABLE IF NOT EXISTS {ns}.history (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL,
    memory_id text COLLATE "C" NOT NULL,
    old_memory text, new_memory text,
    event text NOT NULL,
    created_at text, updated_at text,
    is_deleted boolean NOT NULL DEFAULT false,
    actor_id text, role text
);
CREATE INDEX IF NOT EXISTS history_memory ON {ns}.history (memory_id);
CREATE TABLE IF NOT EXISTS {ns}.meta (key text PRIMARY KEY, value text NOT NULL);
"""


class PgVectorMissing(RuntimeError):
    """The database has no pgvector and this role may not create it."""


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


def redact(conninfo: str) -> str:
    """The connection string without its password (for messages)."""
    text = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", conninfo)
    return re.sub(r"(password=)(\S+)", r"\1***", text)


def _history_rows(rows: list[tuple]) -> list[list[Any]]:
    """Columns (as lists) of history rows, for ``unnest``."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(10)]


class PostgresStorage:
    """See the module docstring. ``conninfo``: a libpq URL or key=value string."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        hnsw: bool = False,
        ef_search: int | None = None,
        min_size: int = 1,
        max_size: int = 10,
        dims: int | None = None,
    ) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError:
            raise ImportError(
                "the PostgreSQL backend needs psycopg 3, psycopg_pool and pgvector: "
                "pip install 'hivemem[postgres]'"
            ) from None
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                "schema must be 1-63 letters, digits or underscores, not starting with a digit; "
                f"got {schema!r}"
            )
        if ef_search is not None and (isinstance(ef_search, bool) or not 1 <= ef_search <= 1000):
            raise ValueError(f"ef_search must be an integer from 1 to 1000, got {ef_search!r}")
        if not 1 <= min_size <= max_size <= 1000:
            raise ValueError(
                f"pool sizes must satisfy 1 <= minconn <= maxconn <= 1000, got {min_size}, {max_size}"
            )
        self._psycopg = psycopg
        self.schema = schema
        self.location = f"{redact(conninfo)} (schema {schema})"
        self.hnsw = hnsw
        self._dims = dims  # the width the configuration promised (Mem0's embedding_model_dims)
        self._ns = f'"{schema}"'
        self._lower = f"{self._ns}.hm_lower"
        self._model: tuple[str, int] | None = None
        self.commits = 0  # insert transactions committed by this object
        self.inserts = 0  # insert calls served
        self._ext_schema = self._prepare(conninfo)
        search_path = f'"{self._ext_schema}", pg_catalog'
        settings = {"hnsw.ef_search": str(ef_search)} if ef_search is not None else {}

        def configure(conn: Any) -> None:
            from pgvector.psycopg import register_vector

            conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))
            for key, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, false)", (key, value))
            register_vector(conn)

        self._pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=configure,
            open=False,
            name=f"hivemem:{schema}",
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise ConnectionError(f"cannot open connections to {self.location}: {exc}") from None

    # -- set-up --------------------------------------------------------------------------------

    def _prepare(self, conninfo: str) -> str:
        """Check the server, create pgvector (if needed and allowed) and this schema's tables;
        → the schema holding pgvector."""
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            raise ConnectionError(f"cannot connect to PostgreSQL at {redact(conninfo)}: {exc}") from None
        with conn:
            encoding = conn.execute("SHOW server_encoding").fetchone()[0]
            if encoding.upper() not in ("UTF8", "UTF-8"):
                raise ValueError(
                    f"database at {self.location} has encoding {encoding}; hivemem needs UTF8 "
                    "(create the database with ENCODING 'UTF8')"
                )
            ext = self._ensure_vector(conn)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_KEY, self.schema))
                conn.execute(_TABLES.format(ns=self._ns))
                stored = conn.execute(f"SELECT value FROM {self._ns}.meta WHERE key = 'lower_fn'").fetchone()
                if stored is None or stored[0] != pglower.VERSION:
                    how = pglower.install(conn, self._lower, conninfo)
                    conn.execute(
                        f"INSERT INTO {self._ns}.meta (key, value) VALUES ('lower_fn', %s), ('lower_how', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (pglower.VERSION, how),
                    )
        return ext

    def _ensure_vector(self, conn: Any) -> str:
        psycopg = self._psycopg
        find = (
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        )
        row = conn.execute(find).fetchone()
        if row is None:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (_LOCK_KEY,))
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFile,
                    psycopg.errors.FeatureNotSupported) as exc:  # fmt: skip
                db = conn.info.dbname
                raise PgVectorMissing(
                    f"the pgvector extension is not enabled in database {db!r} and this role cannot "
                    f"enable it ({type(exc).__name__}: {str(exc).strip()}). Ask a database administrator "
                    f"to run: CREATE EXTENSION vector;  in database {db!r} (the server needs the pgvector "
                    "package; managed services list it as the 'vector' extension)"
                ) from None
            row = conn.execute(find).fetchone()
        return row[0]

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._pool.connection() as conn:
            yield conn

    def _write(self, body: Callable[[Any], T]) -> T:
        """Run ``body(conn)`` in one READ COMMITTED transaction; retried on deadlock/serialization."""
        errors = self._psycopg.errors
        for attempt in range(_RETRIES):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    return body(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    # -- model ---------------------------------------------------------------------------------

    def bind_model(self, model_id: str, dim: int) -> None:
        if self._model == (model_id, dim):
            return
        if self._dims is not None and self._dims != dim:
            raise ValueError(
                f"the configuration says embedding_model_dims={self._dims}, but the embedder {model_id} "
                f"gives {dim} dimensions"
            )
        ns = self._ns

        def bind(conn: Any) -> tuple[str, int]:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_KEY, self.schema))
            conn.execute(
                f"INSERT INTO {ns}.meta (key, value) VALUES ('model_id', %s), ('dim', %s)"
                " ON CONFLICT (key) DO NOTHING",
                (model_id, str(dim)),
            )
            stored = dict(conn.execute(f"SELECT key, value FROM {ns}.meta WHERE key IN ('model_id','dim')"))
            if (stored["model_id"], int(stored["dim"])) != (model_id, dim):
                return stored["model_id"], int(stored["dim"])
            width = conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'vec'"
                " AND NOT attisdropped",
                (f"{ns}.memories",),
            ).fetchone()
            if width is None:
                conn.execute(f"ALTER TABLE {ns}.memories ADD COLUMN vec vector({int(dim)}) NOT NULL")
                if dim <= _PLAIN_MAX_DIM:
                    conn.execute(f"ALTER TABLE {ns}.memories ALTER COLUMN vec SET STORAGE PLAIN")
            if self.hnsw:
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS memories_vec_hnsw ON {ns}.memories"
                    " USING hnsw (vec vector_ip_ops)"
                )
            return model_id, dim

        stored = self._write(bind)
        if stored != (model_id, dim):
            raise ValueError(
                f"{self.location} holds vectors of {stored[0]} (dim {stored[1]}); this embedder is "
                f"{model_id} (dim {dim}). Vectors of different models cannot be compared: use another schema"
            )
        self._model = (model_id, dim)

    # -- writes --------------------------------------------------------------------------------

    def existing(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        if not keys:
            return {}
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT scope, hash, id FROM {self._ns}.memories WHERE (scope, hash) IN"
                " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([k[0] for k in keys], [k[1] for k in keys]),
            ).fetchall()
        return {(s, h): i for s, h, i in rows}

    def insert(self, memories: list[NewMemory], vectors: np.ndarray) -> list[tuple[str, str]]:
        if len(memories) != len(vectors):
            raise ValueError(f"{len(memories)} memories but {len(vectors)} vectors")
        if self._model is None:
            raise RuntimeError("bind_model() must be called before insert()")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) and vectors.shape[1:] != (self._model[1],):
            raise ValueError(f"vectors must have {self._model[1]} columns, got shape {vectors.shape}")
        if not memories:
            return []
        # one lock order for every writer: sorted by the unique key (see the module docstring)
        order = sorted(range(len(memories)), key=lambda i: (memories[i].scope, memories[i].hash))
        rows = [(memories[i], vectors[i], None) for i in order]
        try:
            results = self._write(lambda conn: self._insert_rows(conn, rows))
        finally:
            self.inserts += 1
        self.commits += 1
        out: list[tuple[str, str]] = [("", "")] * len(memories)
        for i, r in zip(order, results, strict=True):
            out[i] = r
        return out

    def _insert_rows(
        self, conn: Any, rows: list[tuple[NewMemory, np.ndarray, dict[str, Any] | None]]
    ) -> list[tuple[str, str]]:
        """Insert ``(memory, vector, restored)`` rows (sorted by key) → ``(id, event)`` per row.

        ``restored`` (import): ``{"updated_at", "history"}`` kept from the source store instead of a
        new ADD event; such a row is also skipped when its id is already taken.
        """
        ns = self._ns
        todo = list(range(len(rows)))
        added: set[str] = set()
        found: dict[tuple[str, str], str] = {}
        for _ in range(_RETRIES):
            cols: list[list[Any]] = [[] for _ in range(12)]
            for i in todo:
                m, _, restored = rows[i]
                updated = restored["updated_at"] if restored else m.created_at
                for col, value in zip(cols, (m.id, m.scope, m.hash, m.memory, m.user_id, m.agent_id,
                                             m.run_id, m.actor_id, m.role, m.metadata, m.created_at,
                                             updated), strict=True):  # fmt: skip
                    col.append(value)
            vecs = [rows[i][1] for i in todo]
            restoring = any(rows[i][2] is not None for i in todo)
            conflict = "" if restoring else "(scope, hash)"  # restore: an existing id is skipped too
            inserted = conn.execute(
                f"INSERT INTO {ns}.memories (id, scope, hash, memory, user_id, agent_id, run_id, actor_id,"
                " role, metadata, created_at, updated_at, vec)"
                " SELECT id, scope, hash, memory, user_id, agent_id, run_id, actor_id, role, metadata,"
                " created_at, updated_at, vec FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %b::vector[]) WITH ORDINALITY AS u(id, scope, hash, memory, user_id, agent_id,"
                " run_id, actor_id, role, metadata, created_at, updated_at, vec, ord)"
                f" ORDER BY ord ON CONFLICT {conflict} DO NOTHING RETURNING id",
                [*cols, vecs],
            ).fetchall()
            added.update(r[0] for r in inserted)
            missing = [i for i in todo if rows[i][0].id not in added]
            if missing:
                keys = [(rows[i][0].scope, rows[i][0].hash) for i in missing]
                found.update(self._existing_in(conn, keys))
            # a conflicting row deleted again before we could read it: insert those once more
            todo = [i for i in missing if (rows[i][0].scope, rows[i][0].hash) not in found]
            if not todo:
                break
        else:
            raise RuntimeError("could not insert the batch: its rows kept conflicting with changing rows")
        history: list[tuple] = []
        results: list[tuple[str, str]] = []
        for m, _, restored in rows:
            if m.id in added:
                results.append((m.id, "ADD"))
                if restored is None:
                    history.append((str(uuid.uuid4()), m.id, None, m.memory, "ADD", m.created_at,
                                    m.created_at, False, m.actor_id, m.role))  # fmt: skip
                else:
                    history.extend(restored["history"])
            else:
                results.append((found[(m.scope, m.hash)], "NONE"))
        self._insert_history(conn, history)
        return results

    def _existing_in(self, conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        rows = conn.execute(
            f"SELECT scope, hash, id FROM {self._ns}.memories WHERE (scope, hash) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return {(s, h): i for s, h, i in rows}

    def _insert_history(self, conn: Any, rows: list[tuple]) -> None:
        if not rows:
            return
        conn.execute(
            f"INSERT INTO {self._ns}.history ({_HISTORY}) SELECT * FROM unnest(%s::text[], %s::text[],"
            " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::boolean[], %s::text[],"
            " %s::text[])",
            _history_rows(rows),
        )

    def update(
        self,
        memory_id: str,
        text: str | None,
        vector: np.ndarray | None,
        metadata: str | None,
        hash_: str | None = None,
    ) -> None:
        ns, stamp = self._ns, now()
        errors = self._psycopg.errors

        def change(conn: Any) -> None:
            row = conn.execute(
                f"SELECT memory, scope, actor_id, role FROM {ns}.memories WHERE id = %s FOR UPDATE",
                (memory_id,),
            ).fetchone()
            if row is None:
                raise KeyError(memory_id)
            old, scope, actor, role = row
            if text is not None:
                assert vector is not None and hash_ is not None
                clash = conn.execute(
                    f"SELECT id FROM {ns}.memories WHERE scope = %s AND hash = %s AND id <> %s",
                    (scope, hash_, memory_id),
                ).fetchone()
                if clash:
                    raise ValueError(f"memory {clash[0]} in the same scope already has this text")
                conn.execute(
                    f"UPDATE {ns}.memories SET memory = %s, hash = %s, vec = %b, updated_at = %s"
                    " WHERE id = %s",
                    (text, hash_, np.asarray(vector, dtype=np.float32), stamp, memory_id),
                )
            if metadata is not None:
                conn.execute(
                    f"UPDATE {ns}.memories SET metadata = %s, updated_at = %s WHERE id = %s",
                    (metadata, stamp, memory_id),
                )
            new = text if text is not None else old
            self._insert_history(
                conn, [(str(uuid.uuid4()), memory_id, old, new, "UPDATE", stamp, stamp, False, actor, role)]
            )

        try:
            self._write(change)
        except errors.UniqueViolation:  # another writer stored the same text in the scope meanwhile
            raise ValueError("a memory in the same scope already has this text") from None

    def _delete(self, conn: Any, where: str, params: list[Any]) -> int:
        ns, stamp = self._ns, now()
        rows = conn.execute(
            f"DELETE FROM {ns}.memories WHERE rid IN (SELECT rid FROM {ns}.memories WHERE {where}"
            " ORDER BY rid FOR UPDATE) RETURNING id, memory, actor_id, role",
            params,
        ).fetchall()
        self._insert_history(
            conn, [(str(uuid.uuid4()), i, m, None, "DELETE", stamp, stamp, True, a, r) for i, m, a, r in rows]
        )
        return len(rows)

    def delete(self, memory_id: str) -> bool:
        return self._write(lambda conn: self._delete(conn, "id = %s", [memory_id])) == 1

    def delete_where(self, where: Node) -> int:
        sql, params = compile_where(where, self._lower)
        return self._write(lambda conn: self._delete(conn, sql, params))

    def reset(self) -> None:
        ns = self._ns

        def clear(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_KEY, self.schema))
            conn.execute(f"TRUNCATE {ns}.memories, {ns}.history")
            conn.execute(f"DELETE FROM {ns}.meta WHERE key IN ('model_id', 'dim')")
            conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN IF EXISTS vec")

        self._write(clear)
        self._model = None

    # -- restore (import) ----------------------------------------------------------------------

    def restore(
        self,
        memories: list[NewMemory],
        vectors: np.ndarray,
        updated_at: list[str],
        history: list[list[tuple]],
    ) -> list[tuple[str, str]]:
        """Insert memories keeping their ids, timestamps and history (``import``): ``ADD`` per row
        stored, ``NONE`` with the stored id for a row whose id or (scope, text) is already there."""
        if self._model is None:
            raise RuntimeError("bind_model() must be called before restore()")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        order = sorted(range(len(memories)), key=lambda i: (memories[i].scope, memories[i].hash))
        rows = [
            (memories[i], vectors[i], {"updated_at": updated_at[i], "history": history[i]}) for i in order
        ]
        results = self._write(lambda conn: self._restore_rows(conn, rows))
        out: list[tuple[str, str]] = [("", "")] * len(memories)
        for i, r in zip(order, results, strict=True):
            out[i] = r
        return out

    def _restore_rows(self, conn: Any, rows: list[tuple]) -> list[tuple[str, str]]:
        taken = {
            r[0]
            for r in conn.execute(
                f"SELECT id FROM {self._ns}.memories WHERE id = ANY(%s::text[])",
                ([m.id for m, _, _ in rows],),
            )
        }
        fresh = [r for r in rows if r[0].id not in taken]
        done = (
            dict(zip((r[0].id for r in fresh), self._insert_rows(conn, fresh), strict=True)) if fresh else {}
        )
        return [done.get(m.id, (m.id, "NONE")) for m, _, _ in rows]

    def restore_history(self, memory_id: str, rows: list[tuple]) -> bool:
        """History of a memory deleted in the source store; skipped when this id has history."""

        def add(conn: Any) -> bool:
            if conn.execute(
                f"SELECT 1 FROM {self._ns}.history WHERE memory_id = %s", (memory_id,)
            ).fetchone():
                return False
            self._insert_history(conn, rows)
            return True

        return self._write(add)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, memory_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_FIELDS} FROM {self._ns}.memories WHERE id = %s", (memory_id,)
            ).fetchone()
        return _record(row, with_score=True) if row else None

    def list(self, where: Node | None, limit: int) -> list[dict[str, Any]]:
        sql, params = compile_where(where, self._lower)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_FIELDS} FROM {self._ns}.memories WHERE {sql} ORDER BY rid LIMIT %s",
                [*params, limit],
            ).fetchall()
        return [_record(r) for r in rows]

    def history(self, memory_id: str) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_HISTORY} FROM {self._ns}.history WHERE memory_id = %s ORDER BY seq", (memory_id,)
            ).fetchall()
        keys = _HISTORY.split(", ")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def count(self) -> int:
        with self._read() as conn:
            return conn.execute(f"SELECT count(*) FROM {self._ns}.memories").fetchone()[0]

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory in insertion order, read through a server-side cursor."""
        with self._read() as conn, conn.transaction():
            cur = conn.cursor(name=f"hm_export_{uuid.uuid4().hex}")
            cur.itersize = 1000
            cur.execute(f"SELECT {_FIELDS} FROM {self._ns}.memories ORDER BY rid")
            for row in cur:
                yield _record(row)

    def deleted_history(self) -> Iterator[tuple[str, list[dict[str, Any]]]]:
        """``(memory_id, history)`` of every memory that has history but no row (deleted ones)."""
        with self._read() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT h.memory_id FROM {self._ns}.history h WHERE NOT EXISTS"
                    f" (SELECT 1 FROM {self._ns}.memories m WHERE m.id = h.memory_id) ORDER BY 1"
                )
            ]
        for memory_id in ids:
            yield memory_id, self.history(memory_id)

    def search(
        self, vector: np.ndarray, where: Node | None, k: int, threshold: float | None
    ) -> list[dict[str, Any]]:
        if self._model is None:
            raise RuntimeError("bind_model() must be called before search()")
        sql, params = compile_where(where, self._lower)
        q = np.asarray(vector, dtype=np.float32)
        cut = ""
        if threshold is not None:
            cut = " AND (vec <#> %b) <= %s"
            params = [*params, q, -float(threshold)]
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_FIELDS}, (vec <#> %b) FROM {self._ns}.memories WHERE {sql}{cut}"
                " ORDER BY vec <#> %b LIMIT %s",
                [q, *params, q, k],
            ).fetchall()
        return [_record(r, -float(r[12]), with_score=True) for r in rows]

    def close(self) -> None:
        self._pool.close()
