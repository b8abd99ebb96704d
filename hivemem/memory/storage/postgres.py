"""The server backend: memories, vectors and history in PostgreSQL with pgvector.

For a fleet that spans machines: every process of every machine opens the same database. The
contract is SQLite's (``base.Storage``), enforced by the database rather than by this process:

* **A batch is one transaction** at READ COMMITTED: one statement draws the batch's row ids,
  inserts its rows (``INSERT … SELECT FROM unnest(…)``) and writes their ADD events; BEGIN is
  pipelined with it, so a batch costs two round trips. A killed client's transaction is rolled
  back by the server, so a batch is stored whole or not at all.
* **Duplicates are refused by ``UNIQUE(scope, hash)``** with ``ON CONFLICT DO NOTHING``. A writer
  that meets another's uncommitted row with the same key waits for it; once it commits, the
  conflict skips the row and the next statement (a new snapshot under READ COMMITTED) reads the
  winner's id: event ``NONE`` with the stored id, as on SQLite.
* **No deadlocks between writers**: each batch inserts its rows sorted by (scope, hash), so two
  transactions that share keys take them in the same order and the second simply waits (two
  batches inserting the same keys in opposite order deadlock, measured). Deletes lock their rows
  in ``rid`` order. A deadlock or serialization failure reported anyway is retried.
* **Exact search by default** (``search="local"``): fewer than ``INDEX_MIN`` candidates are
  scored by PostgreSQL (``ORDER BY vec <#> q, rid``), more are ranked by an in-process int8 copy
  (``pgindex``) and the best re-scored by PostgreSQL, so the top-10 equals SQLite's (tested and
  measured). The score is the inner product (the vectors are unit length: cosine), as on SQLite.
  ``search="server"``: exact scans only, nothing kept in the client; ``search="hnsw"``: pgvector's
  HNSW index, approximate (its recall is measured by ``benchmarks/memory_backends.py``).
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

import builtins
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import numpy as np

from hivemem.errors import PgVectorMissing
from hivemem.memory import records
from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory, now
from hivemem.memory.storage import int8, pgarrays, pgindex, pgkeyword, pglower
from hivemem.memory.storage.pgcompile import compile_where

T = TypeVar("T")

DEFAULT_SCHEMA = "hivemem"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_LOCK_KEY = 0x68766D  # "hvm": first half of the advisory-lock key for schema changes
_FIELDS = "rid, id, memory, hash, metadata, created_at, updated_at, user_id, agent_id, run_id, actor_id, role"
_PROMOTED = ("user_id", "agent_id", "run_id", "actor_id", "role")
_HISTORY = "id, memory_id, old_memory, new_memory, event, created_at, updated_at, is_deleted, actor_id, role"


@contextmanager
def _session_lock(conn: Any, schema: str | None) -> Iterator[None]:
    """Hold the advisory lock for DDL on ``schema`` (None: the database's, for the extension)
    across transactions (``conn`` in autocommit).

    A session lock, not a transaction's: the DDL runs in a transaction that *starts* after the
    lock is granted, and the caller checks again in it whether a competitor made the schema
    meanwhile. Waiting for the lock inside the DDL transaction was not enough: three processes
    opening one store of a database whose pgvector they had just created failed two of three
    every time with a duplicate key on ``pg_namespace`` from ``CREATE SCHEMA IF NOT EXISTS`` (that
    transaction's catalog view predated the winner's commit; tests/memory/test_postgres.py)."""
    second, params = ("0", (_LOCK_KEY,)) if schema is None else ("hashtext(%s)", (_LOCK_KEY, schema))
    conn.execute(f"SELECT pg_advisory_lock(%s, {second})", params)
    try:
        yield
    except BaseException:
        with suppress(Exception):  # a broken connection releases it anyway; keep the real error
            conn.execute(f"SELECT pg_advisory_unlock(%s, {second})", params)
        raise
    conn.execute(f"SELECT pg_advisory_unlock(%s, {second})", params)


_RETRIES = 8  # deadlock / serialization failure: the transaction is retried this often
_PLAIN_MAX_DIM = 1000  # vectors up to this width stay in the row (never TOASTed): faster scans
# Below this many rows (in the store, or matching the filter) PostgreSQL scores the candidates
# itself (pgvector's exact scan: ~5 ms at 5,000 rows here); above, the int8 copy ranks first.
INDEX_MIN = 5_000
# local: int8 copy + exact re-scoring (default); server: exact scans only, no copy in the client;
# hnsw: pgvector's HNSW index (approximate)
SEARCH_MODES = ("local", "server", "hnsw")
LARGE_TTL = 30.0  # seconds a filter known to match INDEX_MIN rows or more is believed to still do

LAYOUT = "2"  # the version of the tables below; a store of another layout is refused
# Older layouts this code brings up to date in place (1 → 2: history events keep their scope).
_UPGRADES = ("1",)
_TABLES = """
CREATE SCHEMA IF NOT EXISTS {ns};
CREATE TABLE IF NOT EXISTS {ns}.memories (
    rid bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,  -- drawn per batch, in batch order
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
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- the transaction that last wrote the vector
    code bytea, scale real,  -- int8 copy of the vector for pgindex (written with it)
    UNIQUE (scope, hash)
);
CREATE INDEX IF NOT EXISTS memories_tx ON {ns}.memories (tx);
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
    actor_id text, role text,
    scope text COLLATE "C"  -- the memory's scope when the event happened (NULL: unknown, layout 1)
);
ALTER TABLE {ns}.history ADD COLUMN IF NOT EXISTS scope text COLLATE "C";
CREATE INDEX IF NOT EXISTS history_memory ON {ns}.history (memory_id);
CREATE INDEX IF NOT EXISTS history_id ON {ns}.history (id);
CREATE TABLE IF NOT EXISTS {ns}.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO {ns}.meta (key, value) VALUES ('epoch', '0'), ('pruned', '0') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {ns}.tombstones (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx xid8 NOT NULL DEFAULT pg_current_xact_id(),
    rid bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_tx ON {ns}.tombstones (tx);
"""


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


def _check_nul(memories: list[NewMemory]) -> None:
    """PostgreSQL text (and jsonb) cannot hold U+0000: refuse it up front, naming the field."""
    for m in memories:
        for name in ("memory", "id", "user_id", "agent_id", "run_id", "actor_id", "role"):
            value = getattr(m, name)
            if value is not None and "\x00" in value:
                raise ValueError(f"{name} contains a NUL character (U+0000), which PostgreSQL cannot store")
        if "\\u0000" in m.metadata and _has_nul(json.loads(m.metadata)):
            raise ValueError("metadata contains a NUL character (U+0000), which PostgreSQL cannot store")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def redact(conninfo: str) -> str:
    """The connection string without its password (for messages)."""
    text = re.sub(r"(://[^:/@?]*):[^@/?]*@", r"\1:***@", conninfo)
    return re.sub(r"(password=)(\S+)", r"\1***", text)


def _history_rows(rows: list[tuple]) -> list[list[Any]]:
    """Columns (as lists) of history rows, for ``unnest``."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(11)]


class PostgresStorage:
    """See the module docstring. ``conninfo``: a libpq URL or key=value string."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        search: str = "local",
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
        if search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {', '.join(SEARCH_MODES)}, got {search!r}")
        self.mode = search
        self._index: pgindex.PgVectorIndex | None = None
        self._large: OrderedDict[tuple, float] = OrderedDict()
        self._large_lock = threading.Lock()
        self._dims = dims  # the width the configuration promised (Mem0's embedding_model_dims)
        self._ns = f'"{schema}"'
        self._lower = f"{self._ns}.hm_lower"
        self._model: tuple[str, int] | None = None
        self._keywords = pgkeyword.KeywordSearch(self._ns, _FIELDS)
        self._local = threading.local()  # .conn: the connection of the open snapshot, if any
        self.commits = 0  # insert transactions committed by this object
        self.inserts = 0  # insert calls served
        self.retries = 0  # transactions retried after a deadlock or serialization failure
        self._ext_schema = self._prepare(conninfo)
        search_path = f'"{self._ext_schema}", pg_catalog'
        settings = {"hnsw.ef_search": str(ef_search)} if ef_search is not None else {}

        def configure(conn: Any) -> None:
            from pgvector.psycopg import register_vector

            conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))
            for key, value in settings.items():
                conn.execute("SELECT set_config(%s, %s, false)", (key, value))
            register_vector(conn)
            pgarrays.register(conn)

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
            if self._ready(conn):
                return ext  # no DDL: CREATE … IF NOT EXISTS would still lock out the writers
            with _session_lock(conn, self.schema):
                if self._ready(conn):
                    return ext  # another process made it while this one waited
                self._create(conn, conninfo)
        return ext

    def _create(self, conn: Any, conninfo: str) -> None:
        """This schema's tables, ``hm_lower`` and the keyword index (caller holds the schema's lock)."""
        with conn.transaction():
            conn.execute(_TABLES.format(ns=self._ns))
            layout = conn.execute(f"SELECT value FROM {self._ns}.meta WHERE key = 'layout'").fetchone()
            if layout is not None and layout[0] in _UPGRADES:
                ns = self._ns
                conn.execute(
                    records.BACKFILL_SCOPES.format(history=f"{ns}.history", memories=f"{ns}.memories")
                )
            conn.execute(
                f"INSERT INTO {self._ns}.meta (key, value) VALUES ('layout', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (LAYOUT,),
            )
            stored = conn.execute(f"SELECT value FROM {self._ns}.meta WHERE key = 'lower_fn'").fetchone()
            if stored is None or stored[0] != pglower.VERSION:
                how = pglower.install(conn, self._lower, conninfo)
                conn.execute(
                    f"INSERT INTO {self._ns}.meta (key, value) VALUES ('lower_fn', %s), ('lower_how', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (pglower.VERSION, how),
                )
            stored = conn.execute(f"SELECT value FROM {self._ns}.meta WHERE key = 'keywords'").fetchone()
            if stored is None or stored[0] != pgkeyword.VERSION:  # new, or made before the index
                pgkeyword.install(conn, self._ns, self.schema, self._lower)

    def _ready(self, conn: Any) -> bool:
        """This schema's tables, ``hm_lower`` and the keyword index exist, made by this version of
        the code (read from ``meta``: no DDL, no catalog lock)."""
        try:
            with conn.transaction():
                rows = dict(
                    conn.execute(
                        f"SELECT key, value FROM {self._ns}.meta"
                        " WHERE key IN ('layout', 'lower_fn', 'keywords')"
                    ).fetchall()
                )
        except self._psycopg.errors.UndefinedTable:
            return False
        except self._psycopg.errors.InvalidSchemaName:
            return False
        if rows.get("layout") not in (None, LAYOUT, *_UPGRADES):
            raise ValueError(
                f"{self.location} was made by another version of hivemem (table layout {rows['layout']}, "
                f"this one writes {LAYOUT}): move it with hivemem memory export | import"
            )
        return (
            rows.get("layout") == LAYOUT
            and rows.get("lower_fn") == pglower.VERSION
            and rows.get("keywords") == pgkeyword.VERSION
        )

    def _ensure_vector(self, conn: Any) -> str:
        psycopg = self._psycopg
        find = (
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'vector'"
        )
        row = conn.execute(find).fetchone()
        if row is None:
            try:
                with _session_lock(conn, None), conn.transaction():
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
        """A connection: the open snapshot's (``snapshot``), else one from the pool (autocommit)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One REPEATABLE READ, READ ONLY transaction for the reads inside (re-entrant, per
        thread): the vector side, the keyword side and the cosines of a hybrid search see one
        committed state."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._pool.connection() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None
                with suppress(self._psycopg.Error):  # a broken connection: the pool drops it
                    conn.execute("ROLLBACK")  # read only: nothing to commit

    def _write(self, body: Callable[[Any], T]) -> T:
        """Run ``body(conn)`` in one READ COMMITTED transaction; retried on deadlock/serialization."""
        errors = self._psycopg.errors
        for attempt in range(_RETRIES):
            try:  # pipelined: BEGIN travels with the first statement
                with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
                    return body(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                self.retries += 1
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
            if self.mode == "hnsw":
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
        _check_nul(memories)
        rows: list[tuple[NewMemory, np.ndarray, dict[str, Any] | None]] = [
            (m, v, None) for m, v in zip(memories, vectors, strict=True)
        ]
        try:
            results = self._write(lambda conn: self._insert_rows(conn, rows))
        except self._psycopg.errors.UniqueViolation as exc:
            if not (exc.diag.constraint_name or "").endswith("_id_key"):
                raise
            with self._read() as conn:  # UNIQUE(id): a caller-chosen id that names another memory
                taken = conn.execute(
                    f"SELECT id FROM {self._ns}.memories WHERE id = ANY(%s)", ([m.id for m in memories],)
                ).fetchone()
            raise ValueError(
                f"memory id {taken[0] if taken else '?'!r} is already taken by another memory; "
                "update or delete that one"
            ) from None
        finally:
            self.inserts += 1
        self.commits += 1
        return results

    def _insert_rows(
        self, conn: Any, rows: list[tuple[NewMemory, np.ndarray, dict[str, Any] | None]]
    ) -> list[tuple[str, str]]:
        """Insert ``(memory, vector, restored)`` rows → ``(id, event)`` per row, in order.

        One statement draws the row ids (``rid``, the insertion order that listing follows) and
        gives them in the batch's order, inserts the rows sorted by (scope, hash) — the lock order
        that keeps concurrent writers free of deadlocks — and writes their ADD events.
        ``restored`` (import): ``{"updated_at", "history"}`` kept from the source store instead of
        a new ADD event; such a row is also skipped when its id is already taken.
        """
        ns = self._ns
        todo = sorted(range(len(rows)), key=lambda i: (rows[i][0].scope, rows[i][0].hash))
        restoring = any(r[2] is not None for r in rows)
        conflict = "" if restoring else "(scope, hash)"  # restore: an existing id is skipped too
        history = "" if restoring else (
            f", h AS (INSERT INTO {ns}.history ({_HISTORY}, scope) SELECT gen_random_uuid()::text, id, NULL,"
            " memory, 'ADD', created_at, created_at, false, actor_id, role, scope FROM ins)"
        )  # fmt: skip
        added: set[str] = set()
        found: dict[tuple[str, str], str] = {}
        for _ in range(_RETRIES):
            cols: list[list[Any]] = [[] for _ in range(13)]
            vectors = np.stack([rows[i][1] for i in todo])
            codes, scales = int8.quantise(vectors)
            for i in todo:
                m, _, restored = rows[i]
                updated = restored["updated_at"] if restored else m.created_at
                for col, value in zip(cols, (i, m.id, m.scope, m.hash, m.memory, m.user_id, m.agent_id,
                                             m.run_id, m.actor_id, m.role, m.metadata, m.created_at,
                                             updated), strict=True):  # fmt: skip
                    col.append(value)
            inserted = conn.execute(
                "WITH r AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence(%s, 'rid')) AS rid"
                " FROM generate_series(1, %s)), o AS (SELECT rid, row_number() OVER (ORDER BY rid) - 1 AS pos"
                " FROM r), u AS (SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::text[], %s::text[], %b, %b, %b) WITH ORDINALITY AS u(pos, id, scope, hash, memory,"
                " user_id, agent_id, run_id, actor_id, role, metadata, created_at, updated_at, vec, code,"
                f" scale, ord)), ins AS (INSERT INTO {ns}.memories (rid, id, scope, hash, memory, user_id,"
                " agent_id, run_id, actor_id, role, metadata, created_at, updated_at, vec, code, scale)"
                " SELECT o.rid, id, scope, hash, memory, user_id, agent_id, run_id, actor_id, role, metadata,"
                " created_at, updated_at, vec, code, scale FROM u JOIN o ON o.pos = u.pos ORDER BY u.ord"
                f" ON CONFLICT {conflict} DO NOTHING RETURNING id, memory, created_at, actor_id, role, scope)"
                f"{history} SELECT id FROM ins",
                [f"{ns}.memories", len(rows), *cols, pgarrays.Vectors(vectors), pgarrays.Bytes(codes),
                 pgarrays.Reals(scales)],
            ).fetchall()  # fmt: skip
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
        given = [m for m, _, _ in rows if m.given_id and m.id in added]
        if given:  # after the insert, in its transaction: a concurrent delete cannot slip between
            reused = conn.execute(
                f"SELECT g.id FROM unnest(%s::text[], %s::text[]) AS g(id, scope) JOIN {ns}.history h"
                " ON h.memory_id = g.id WHERE h.scope IS DISTINCT FROM g.scope LIMIT 1",
                ([m.id for m in given], [m.scope for m in given]),
            ).fetchone()
            if reused:
                raise records.reused_id(reused[0])
        events: list[tuple] = []
        results: list[tuple[str, str]] = []
        for m, _, restored in rows:
            if m.id in added:
                results.append((m.id, "ADD"))
                if restored is not None:
                    events.extend(restored["history"])
            else:
                results.append((found[(m.scope, m.hash)], "NONE"))
        self._insert_history(conn, events)
        return results

    def _existing_in(self, conn: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        rows = conn.execute(
            f"SELECT scope, hash, id FROM {self._ns}.memories WHERE (scope, hash) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[]))",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return {(s, h): i for s, h, i in rows}

    def _insert_history(self, conn: Any, rows: list[tuple]) -> None:
        """Insert events: rows of the ``_HISTORY`` columns followed by the scope."""
        if not rows:
            return
        conn.execute(
            f"INSERT INTO {self._ns}.history ({_HISTORY}, scope) SELECT {_HISTORY}, scope FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            f" %s::boolean[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u({_HISTORY}, scope,"
            " ord) ORDER BY ord",
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
        if (text is not None and "\x00" in text) or (
            metadata is not None and "\\u0000" in metadata and _has_nul(json.loads(metadata))
        ):
            raise ValueError(
                "text or metadata contains a NUL character (U+0000), which PostgreSQL cannot store"
            )

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
                vec = np.asarray(vector, dtype=np.float32)
                codes, scales = int8.quantise(vec[None, :])
                conn.execute(
                    f"UPDATE {ns}.memories SET memory = %s, hash = %s, vec = %b, code = %b, scale = %s,"
                    " tx = pg_current_xact_id(), updated_at = %s WHERE id = %s",
                    (text, hash_, vec, codes[0].tobytes(), float(scales[0]), stamp, memory_id),
                )
            if metadata is not None:
                conn.execute(
                    f"UPDATE {ns}.memories SET metadata = %s, updated_at = %s WHERE id = %s",
                    (metadata, stamp, memory_id),
                )
            new = text if text is not None else old
            self._insert_history(
                conn,
                [(str(uuid.uuid4()), memory_id, old, new, "UPDATE", stamp, stamp, False, actor, role, scope)],
            )

        try:
            self._write(change)
        except errors.UniqueViolation:  # another writer stored the same text in the scope meanwhile
            raise ValueError("a memory in the same scope already has this text") from None

    def _delete(self, conn: Any, where: str, params: list[Any]) -> int:
        ns, stamp = self._ns, now()
        rows = conn.execute(
            f"DELETE FROM {ns}.memories WHERE rid IN (SELECT rid FROM {ns}.memories WHERE {where}"
            " ORDER BY rid FOR UPDATE) RETURNING id, memory, actor_id, role, rid, scope",
            params,
        ).fetchall()
        if rows:
            self._tombstones(conn, [r[4] for r in rows])
        self._insert_history(
            conn,
            [
                (str(uuid.uuid4()), i, m, None, "DELETE", stamp, stamp, True, a, r, s)
                for i, m, a, r, _, s in rows
            ],
        )
        return len(rows)

    def _tombstones(self, conn: Any, rids: list[int]) -> None:
        """Tell every process's pgindex copy that these rows are gone; now and then trim the log
        (copies older than what was trimmed reload: meta 'pruned')."""
        ns = self._ns
        last = conn.execute(
            f"INSERT INTO {ns}.tombstones (rid) SELECT unnest(%s::bigint[]) RETURNING seq", (rids,)
        ).fetchall()[-1][0]
        if last > 2 * pgindex.KEPT_TOMBSTONES and last % pgindex.TRIM_EVERY < len(rids):
            cut = f"DELETE FROM {ns}.tombstones WHERE seq <= %s RETURNING tx"
            conn.execute(
                f"WITH cut AS ({cut}) UPDATE {ns}.meta SET value = greatest(value::bigint,"
                " (SELECT max(tx)::text::bigint FROM cut))::text"
                " WHERE key = 'pruned' AND EXISTS (SELECT 1 FROM cut)",
                (last - pgindex.KEPT_TOMBSTONES,),
            )

    def delete(self, memory_id: str) -> bool:
        return self._write(lambda conn: self._delete(conn, "id = %s", [memory_id])) == 1

    def delete_where(self, where: Node) -> int:
        sql, params = compile_where(where, self._lower)
        return self._write(lambda conn: self._delete(conn, sql, params))

    def reset(self) -> None:
        ns = self._ns

        def clear(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_KEY, self.schema))
            conn.execute(f"TRUNCATE {ns}.memories, {ns}.history, {ns}.tombstones")
            conn.execute(f"UPDATE {ns}.meta SET value = (value::bigint + 1)::text WHERE key = 'epoch'")
            conn.execute(f"DELETE FROM {ns}.meta WHERE key IN ('model_id', 'dim')")
            conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN IF EXISTS vec")

        self._write(clear)
        self._model = None
        self._index = None

    # -- import (``hivemem.memory.transfer``, ``hivemem.memory.mem0_import``) --------------------

    def import_rows(
        self,
        memories: list[NewMemory],
        vectors: np.ndarray,
        updated_at: list[str],
        history: list[dict[str, Any]],
    ) -> list[tuple[str, str]]:
        """Copy memories and their history from another store in ONE transaction (as SQLite's):
        memories whose id is already here are skipped (``"SKIP"``), the others inserted as by
        ``insert`` (``"ADD"``, or ``"NONE"`` for a text already stored in the scope) with their
        own ``updated_at``; history rows replace the synthetic ``ADD`` row of the memories they
        describe and are skipped when their id is already here, so an import can be repeated."""
        if memories and self._model is None:
            raise RuntimeError("bind_model() must be called before import_rows()")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        _check_nul(memories)
        ns = self._ns

        def copy(conn: Any) -> list[tuple[str, str]]:
            ids = [m.id for m in memories]
            here = {r[0] for r in conn.execute(f"SELECT id FROM {ns}.memories WHERE id = ANY(%s)", (ids,))}
            keep = [i for i, m in enumerate(memories) if m.id not in here]
            rows: list[tuple[NewMemory, np.ndarray, dict[str, Any] | None]] = [
                (memories[i], vectors[i], {"updated_at": updated_at[i], "history": []}) for i in keep
            ]
            stored = self._insert_rows(conn, rows) if rows else []
            added = {mid for mid, event in stored if event == "ADD"}
            described = {h["memory_id"] for h in history}
            self._insert_history(
                conn,
                [(str(uuid.uuid4()), m.id, None, m.memory, "ADD", m.created_at, m.created_at, False,
                  m.actor_id, m.role, m.scope)
                 for m, _, _ in rows if m.id in added and m.id not in described],
            )  # fmt: skip
            scopes = {m.id: m.scope for m in memories}  # events of deleted memories: unknown (NULL)
            events = [
                (*(h.get(c) for c in _HISTORY.split(", ")), scopes.get(h["memory_id"])) for h in history
            ]
            if events:
                conn.execute(
                    f"INSERT INTO {ns}.history ({_HISTORY}, scope) SELECT {_HISTORY}, scope FROM unnest("
                    "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                    f" %s::boolean[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u({_HISTORY},"
                    f" scope, ord) WHERE NOT EXISTS (SELECT 1 FROM {ns}.history h WHERE h.id = u.id)"
                    " ORDER BY ord",
                    _history_rows([(*e[:7], bool(e[7]), *e[8:]) for e in events]),
                )
            out = dict(zip(keep, stored, strict=True))
            return [out.get(i, (m.id, "SKIP")) for i, m in enumerate(memories)]

        return self._write(copy)

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

    def history(
        self, memory_id: str, entities: dict[str, str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Events of ``memory_id``, oldest first; with ``entities`` only those of a scope with
        these ids (``records.in_scope``)."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_HISTORY}, scope FROM {self._ns}.history WHERE memory_id = %s ORDER BY seq",
                (memory_id,),
            ).fetchall()
        keys = _HISTORY.split(", ")
        return [
            dict(zip(keys, r[:-1], strict=True))
            for r in rows
            if entities is None or records.in_scope(r[-1], entities)
        ]

    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_HISTORY} FROM {self._ns}.history WHERE memory_id = ANY(%s::text[]) ORDER BY seq",
                (ids,),
            ).fetchall()
        keys = _HISTORY.split(", ")
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r[1], []).append(dict(zip(keys, r, strict=True)))
        return out

    def deleted_ids(self) -> builtins.list[str]:
        """Ids that have history but no memory any more (deleted), in order of first event."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT h.memory_id FROM {self._ns}.history h WHERE NOT EXISTS"
                f" (SELECT 1 FROM {self._ns}.memories m WHERE m.id = h.memory_id)"
                " GROUP BY h.memory_id ORDER BY min(h.seq)"
            ).fetchall()
        return [r[0] for r in rows]

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

    def search(
        self, vector: np.ndarray, where: Node | None, k: int, threshold: float | None
    ) -> builtins.list[dict[str, Any]]:
        """Exact top-k by inner product (cosine: the vectors are unit length), best first, ties to
        the older row. Small candidate sets are scored by PostgreSQL directly; large ones are
        ranked by the in-process int8 copy first (``pgindex``) and the best re-scored exactly."""
        if self._model is None:
            raise RuntimeError("bind_model() must be called before search()")
        sql, params = compile_where(where, self._lower)
        q = np.asarray(vector, dtype=np.float32)
        with self._read() as conn:
            if self.mode == "local":
                rows = self._search_local(conn, q, sql, params, k)
            else:
                order = "vec <#> %b" if self.mode == "hnsw" else "vec <#> %b, rid"  # hnsw: index order
                rows = conn.execute(
                    f"SELECT {_FIELDS}, (vec <#> %b) FROM {self._ns}.memories WHERE {sql}"
                    f" ORDER BY {order} LIMIT %s",
                    [q, *params, q, k],
                ).fetchall()
        out = [_record(r, -float(r[12]), with_score=True) for r in rows]
        # the best k, then the cut: the same rows as the best k of those at or above the threshold
        return out if threshold is None else [r for r in out if r["score"] >= threshold]

    def _search_local(
        self, conn: Any, q: np.ndarray, sql: str, params: builtins.list[Any], k: int
    ) -> builtins.list:
        """Exact top-k rows: PostgreSQL scores the candidates itself when fewer than ``INDEX_MIN``
        rows pass the filter (one statement counts them, up to that, and scores them); else the
        int8 copy ranks first. A filter found to match many rows is remembered for
        ``LARGE_TTL`` s, so the count is not paid again: a stale belief only means re-scoring the
        best candidates, which is exact for any filter. Statements are not in one transaction:
        rows may change between them, as between two searches; the scores are always those of
        the rows returned."""
        ns = self._ns
        key = (sql, tuple(tuple(p) if isinstance(p, list) else p for p in params))  # lists: in/nin arrays
        now_ = time.monotonic()
        with self._large_lock:
            large = self._large.get(key, 0.0) > now_ or (sql == "true" and self._index is not None)
        if not large:
            rows = conn.execute(
                f"WITH c AS MATERIALIZED (SELECT rid FROM {ns}.memories WHERE {sql} LIMIT %s)"
                f" SELECT {_FIELDS}, (vec <#> %b), (SELECT count(*) FROM c) FROM {ns}.memories"
                " WHERE rid IN (SELECT rid FROM c) ORDER BY vec <#> %b, rid LIMIT %s",
                [*params, INDEX_MIN, q, q, k],
            ).fetchall()
            if not rows or rows[0][13] < INDEX_MIN:
                return rows
            with self._large_lock:
                self._large[key] = now_ + LARGE_TTL
                while len(self._large) > 256:
                    self._large.popitem(last=False)
        if self._index is None:
            assert self._model is not None
            self._index = pgindex.PgVectorIndex(ns, self._model[1])
        rescore = (
            f"SELECT {_FIELDS}, (vec <#> %b) FROM unnest(%s::bigint[]) AS c(rid)"
            f" JOIN {ns}.memories USING (rid) WHERE {sql} ORDER BY vec <#> %b, rid LIMIT %s"
        )
        return self._index.search(conn, q, k, lambda rids: conn.execute(rescore, [q, rids, *params, q, k]))

    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int
    ) -> builtins.list[dict[str, Any]]:
        """The best ``k`` rows passing ``where`` that hold one of ``terms``, by SQLite's BM25
        (``pgkeyword``); ``score`` > 0, higher is better."""
        if not terms:
            return []
        sql, params = compile_where(where, self._lower)
        with self._read() as conn:
            hits = self._keywords.search(conn, terms, where, sql, params, k)
        return [_record(row, score, with_score=True) for row, score in hits]

    def cosines(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, float]:
        """pgvector's inner product (the vectors are unit length: cosine) of these memories."""
        if not ids or self._model is None:
            return {}
        q = np.asarray(vector, dtype=np.float32)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT id, (vec <#> %b) FROM {self._ns}.memories WHERE id = ANY(%s::text[])", [q, ids]
            ).fetchall()
        return {mid: -float(score) for mid, score in rows}

    def close(self) -> None:
        self._pool.close()
