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
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import numpy as np

from hivemem.errors import PgVectorMissing
from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory
from hivemem.memory.storage import pgarrays, pgcontext, pgdates, pgindex, pgkeyword, pgwrite, rows
from hivemem.memory.storage.base import KEYWORD_PARTS, Capabilities, Storage, T, WriteTx, window_sums
from hivemem.memory.storage.fts import CONTEXT_BEFORE
from hivemem.memory.storage.locate import SEARCH_MODES, PostgresLocation, redact
from hivemem.memory.storage.pgcompile import PgDialect
from hivemem.memory.storage.pgschema import LAYOUT, LOCK_KEY, PgSchema, session_lock
from hivemem.memory.storage.sqlcompile import Compiled

__all__ = ["LAYOUT", "SEARCH_MODES", "PgVectorMissing", "PostgresStorage", "redact"]

DEFAULT_SCHEMA = "hivemem"
_FIELDS = rows.FIELDS  # the names the search methods below use
_record = rows.record


# Below this many rows (in the store, or matching the filter) PostgreSQL scores the candidates
# itself (pgvector's exact scan: ~5 ms at 5,000 rows here); above, the int8 copy ranks first.
INDEX_MIN = 5_000
# SEARCH_MODES (locate.py): local: int8 copy + exact re-scoring (default); server: exact scans
# only, no copy in the client; hnsw: pgvector's HNSW index (approximate)
LARGE_TTL = 30.0  # seconds a filter known to match INDEX_MIN rows or more is believed to still do


class PostgresStorage(Storage):
    """See the module docstring. ``conninfo``: a libpq URL or key=value string with the options
    below, or a ``PostgresLocation`` that holds them (``locate.py`` checks them; ``min_size`` and
    ``max_size`` are the older names of ``minconn`` and ``maxconn``)."""

    capabilities = Capabilities(keywords=True, group_commit=False)

    def __init__(
        self,
        conninfo: str | PostgresLocation,
        *,
        schema: str = DEFAULT_SCHEMA,
        search: str = "local",
        ef_search: int | None = None,
        minconn: int | None = None,
        maxconn: int | None = None,
        dims: int | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        minconn, maxconn = min_size if minconn is None else minconn, max_size if maxconn is None else maxconn
        where = (
            conninfo
            if isinstance(conninfo, PostgresLocation)
            else PostgresLocation(conninfo, schema, search, ef_search, minconn, maxconn, dims)
        )
        try:
            import psycopg
            import psycopg_pool
        except ImportError:
            raise ImportError(
                "the PostgreSQL backend needs psycopg 3, psycopg_pool and pgvector: "
                "pip install 'hivemem[postgres]'"
            ) from None
        conninfo, schema, ef_search = where.conninfo, where.schema, where.ef_search
        self._psycopg = psycopg
        self.schema = schema
        self.location = str(where)
        self.mode = where.search
        self._index: pgindex.PgVectorIndex | None = None
        self._large: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._large_lock = threading.Lock()
        self._dims = where.dims  # the width the configuration promised (Mem0's embedding_model_dims)
        self._ns = f'"{schema}"'
        self._lower = f"{self._ns}.hm_lower"
        self.dialect = PgDialect(self._lower)
        self._memories, self._history = f"{self._ns}.memories", f"{self._ns}.history"
        self._schema = PgSchema(psycopg, schema, self.location)
        self._model: tuple[str, int] | None = None
        self._keywords = pgkeyword.KeywordSearch(self._ns, _FIELDS)
        self._local = threading.local()  # .conn: the connection of the open snapshot, if any
        self.commits = 0  # insert transactions committed by this object
        self.inserts = 0  # insert calls served
        self.retries = 0  # transactions retried after a deadlock or serialization failure
        self._ext_schema = self._schema.prepare(conninfo)
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
            min_size=where.minconn,
            max_size=where.maxconn,
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
        try:
            with self._pool.connection() as conn:
                dated = pgdates.stored(conn, self._ns) is not None
            if dated:  # the store's keyword layout holds the date words (of this rendering: made so)
                self.keyword_dates(True)
        except BaseException:
            self._pool.close()
            raise

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
        for attempt in range(pgwrite.RETRIES):
            try:  # pipelined: BEGIN travels with the first statement
                with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
                    return body(conn)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                self.retries += 1
                if attempt == pgwrite.RETRIES - 1:
                    raise
                time.sleep(0.005 * 2**attempt)
        raise AssertionError("unreachable")

    def enable_context(self) -> None:
        """Make the keyword context index (``pgcontext``) if this store has none at its version:
        under the schema's lock, in one transaction that also fills it (writers wait meanwhile)."""
        with self._pool.connection() as conn:
            if pgcontext.ready(conn, self._ns):
                return  # no DDL: a read of meta
            with session_lock(conn, self.schema), conn.transaction():
                pgcontext.install(conn, self._ns, self.schema)

    def has_dates(self) -> bool:
        return self._keywords.column == "dated"

    def keyword_dates(self, on: bool) -> None:
        """Turn the store's ``keyword_dates`` on (the ``dated`` column made if the store has none
        at this rendering) or off (the column kept): ``pgdates``, under the schema's lock. Every
        open process follows at its next search (``pgkeyword.KeywordSearch.follow``)."""

        def due(conn: Any) -> bool:  # on: not on at this rendering; off: on at any
            have = pgdates.stored(conn, self._ns)
            return have != pgdates.VERSION if on else have is not None

        with self._pool.connection() as conn:
            if due(conn):
                with session_lock(conn, self.schema), conn.transaction():
                    if due(conn):  # not done meanwhile by another
                        pgdates.install_dates(conn, self._ns, on)
                        if pgcontext.exists(conn, self._ns):  # its windows are made of the column
                            pgcontext.install(conn, self._ns, self.schema)
        self._keywords.column = "dated" if on else "words"

    def enable_vector_context(self) -> None:
        """The ``(scope, rid)`` index windows are read by (as ``pgcontext``'s), under the schema's lock."""
        with self._pool.connection() as conn:
            if conn.execute("SELECT to_regclass(%s)", [f"{self._ns}.memories_scope_rid"]).fetchone()[0]:
                return  # a read: no lock at each open
            with session_lock(conn, self.schema), conn.transaction():
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS memories_scope_rid ON {self._ns}.memories (scope, rid)"
                )

    # -- model ---------------------------------------------------------------------------------

    def bind_model(self, model_id: str, dim: int) -> None:
        if self._model == (model_id, dim):
            return
        if self._dims is not None and self._dims != dim:
            raise ValueError(
                f"the configuration says embedding_model_dims={self._dims}, but the embedder {model_id} "
                f"gives {dim} dimensions"
            )
        stored = self._write(lambda conn: self._schema.bind(conn, model_id, dim, self.mode == "hnsw"))
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
            return pgwrite.existing_in(conn, self._ns, keys)

    def insert(self, memories: list[NewMemory], vectors: np.ndarray) -> list[tuple[str, str]]:
        vectors = self._vectors(memories, vectors, "insert")
        if not memories:
            return []
        try:
            results = self._write(lambda conn: self._insert_rows(conn, memories, vectors))
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

    def _vectors(
        self, memories: builtins.list[NewMemory], vectors: np.ndarray, what: str = "import_rows"
    ) -> np.ndarray:
        """The batch's vectors, checked (``rows.checked_vectors``) after the model is bound; the
        batch refused if PostgreSQL cannot store it (U+0000)."""
        vectors = rows.checked_vectors(memories, vectors, self._model[1] if self._model else None)
        if self._model is None and (memories or what == "insert"):
            raise RuntimeError(f"bind_model() must be called before {what}()")
        rows.check_nul(memories, "PostgreSQL")
        return vectors

    def _check_update(self, text: str | None, metadata: str | None) -> None:
        if rows.nul_in_update(text, metadata):
            raise ValueError(
                "text or metadata contains a NUL character (U+0000), which PostgreSQL cannot store"
            )

    def _insert_rows(
        self, conn: Any, memories: builtins.list[NewMemory], vectors: np.ndarray
    ) -> builtins.list[tuple[str, str]]:
        results = pgwrite.insert_rows(conn, self._ns, memories, vectors)  # with their ADD events
        self._insert_history(conn, [])  # the batch's last step: tests hold its transaction open here
        return results

    def _insert_history(self, conn: Any, events: builtins.list[rows.Event]) -> None:
        pgwrite.add_history(conn, self._ns, events)

    def _transact(self, body: Callable[[WriteTx], T]) -> T:
        try:
            return self._write(lambda conn: body(pgwrite.PgTx(conn, self._ns, self._tombstones)))
        except self._psycopg.errors.UniqueViolation as exc:  # an update met a text stored meanwhile
            if not (exc.diag.constraint_name or "").endswith("_scope_hash_key"):
                raise
            raise ValueError("a memory in the same scope already has this text") from None

    def _fetch(self, sql: str, params: builtins.list[Any]) -> builtins.list[tuple[Any, ...]]:
        with self._read() as conn:
            found: builtins.list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
        return found

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

    def reset(self) -> None:
        ns = self._ns

        def clear(conn: Any) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_KEY, self.schema))
            ctx = f", {ns}.memories_ctx" if pgcontext.exists(conn, ns) else ""  # its triggers stay
            conn.execute(f"TRUNCATE {ns}.memories, {ns}.history, {ns}.tombstones{ctx}")
            conn.execute(f"UPDATE {ns}.meta SET value = (value::bigint + 1)::text WHERE key = 'epoch'")
            conn.execute(f"DELETE FROM {ns}.meta WHERE key IN ('model_id', 'dim')")
            conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN IF EXISTS vec")

        self._write(clear)
        self._model = None
        self._index = None

    # -- reads (``get``, ``list``, ``count``, ``history`` and ``import_rows`` are ``Storage``'s) ----

    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        sql = f"SELECT {rows.HISTORY} FROM {self._history} WHERE memory_id = ANY(%s::text[]) ORDER BY seq"
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self._fetch(sql, [ids]):
            out.setdefault(r[1], []).append(rows.event_dict(r))
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

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory in insertion order, read through a server-side cursor."""
        with self._read() as conn, conn.transaction():
            cur = conn.cursor(name=f"hm_export_{uuid.uuid4().hex}")
            cur.itersize = 1000
            cur.execute(f"SELECT {_FIELDS} FROM {self._ns}.memories ORDER BY rid")
            for row in cur:
                yield _record(row)

    def search(
        self,
        vector: np.ndarray,
        where: Node | None,
        k: int,
        threshold: float | None,
        with_records: bool = True,
    ) -> builtins.list[dict[str, Any]]:
        """Exact top-k by inner product (cosine: the vectors are unit length), best first, ties to
        the older row. Small candidate sets are scored by PostgreSQL directly; large ones are
        ranked by the in-process int8 copy first (``pgindex``) and the best re-scored exactly.
        Records whatever ``records``: the ranking statements return whole rows."""
        if self._model is None:
            raise RuntimeError("bind_model() must be called before search()")
        compiled = self.compile(where)
        sql, params = compiled.sql, compiled.params
        q = np.asarray(vector, dtype=np.float32)
        with self._read() as conn:
            rows: builtins.list[tuple[Any, ...]]
            if self.mode == "local":
                rows = self._search_local(conn, q, compiled, k)
            else:
                order = "vec <#> %b" if self.mode == "hnsw" else "vec <#> %b, rid"  # hnsw: index order
                rows = conn.execute(
                    f"SELECT {_FIELDS}, (vec <#> %b) FROM {self._ns}.memories WHERE {sql}"
                    f" ORDER BY {order} LIMIT %s",
                    [q, *params, q, k],
                ).fetchall()
        out = [_record(r, -float(r[13]), with_score=True) for r in rows]
        # the best k, then the cut: the same rows as the best k of those at or above the threshold
        return out if threshold is None else [r for r in out if r["score"] >= threshold]

    def _search_local(
        self, conn: Any, q: np.ndarray, where: Compiled, k: int
    ) -> builtins.list[tuple[Any, ...]]:
        """Exact top-k rows: PostgreSQL scores the candidates itself when fewer than ``INDEX_MIN``
        rows pass the filter (one statement counts them, up to that, and scores them); else the
        int8 copy ranks first. A filter found to match many rows is remembered for
        ``LARGE_TTL`` s, so the count is not paid again: a stale belief only means re-scoring the
        best candidates, which is exact for any filter. Statements are not in one transaction:
        rows may change between them, as between two searches; the scores are always those of
        the rows returned."""
        ns, sql, params = self._ns, where.sql, where.params
        key = (sql, tuple(tuple(p) if isinstance(p, list) else p for p in params))  # lists: in/nin arrays
        now_ = time.monotonic()
        with self._large_lock:
            large = self._large.get(key, 0.0) > now_ or (where.always and self._index is not None)
        if not large:
            rows: builtins.list[tuple[Any, ...]] = conn.execute(
                f"WITH c AS MATERIALIZED (SELECT rid FROM {ns}.memories WHERE {sql} LIMIT %s)"
                f" SELECT {_FIELDS}, (vec <#> %b), (SELECT count(*) FROM c) FROM {ns}.memories"
                " WHERE rid IN (SELECT rid FROM c) ORDER BY vec <#> %b, rid LIMIT %s",
                [*params, INDEX_MIN, q, q, k],
            ).fetchall()
            if not rows or rows[0][14] < INDEX_MIN:
                return rows
            with self._large_lock:
                self._large[key] = now_ + LARGE_TTL
                while len(self._large) > 256:
                    self._large.popitem(last=False)
        if self._index is None:
            assert self._model is not None
            self._index = pgindex.PgVectorIndex(ns, self._model[1])
        rescore = rescore_sql(ns, sql)
        found: builtins.list[tuple[Any, ...]] = self._index.search(
            conn, q, k, lambda rids: conn.execute(rescore, [q, rids, *params, q, k])
        )
        return found

    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int, with_records: bool = True
    ) -> builtins.list[dict[str, Any]]:
        """The best ``k`` rows passing ``where`` that hold one of ``terms``, by SQLite's BM25
        (``pgkeyword``); ``score`` > 0, higher is better. With ``self.context``, each memory's
        window counts too (``pgcontext``) and each hit carries its raw parts (``KEYWORD_PARTS``).
        Records whatever ``records`` (as ``search``)."""
        if not terms:
            return []
        compiled = self.compile(where)
        sql, params = compiled.sql, compiled.params
        with self._read() as conn:
            if not self.context > 0:
                hits = self._keywords.search(conn, terms, where, sql, params, k)
                return [_record(row, score, with_score=True) for row, score in hits]
            found, parts = self._keywords.search_context(
                conn, terms, where, sql, params, k, self.context, compiled.always
            )
        out = []
        for row, score in found:
            record = _record(row, score, with_score=True)
            record[KEYWORD_PARTS] = parts[row[0]]
            out.append(record)
        return out

    def records(self, handles: builtins.list[Any]) -> dict[Any, dict[str, Any]]:
        """By rid. A search never needs it here (its hits are records): the contract's, for both."""
        if not handles:
            return {}
        with self._read() as conn:
            found = conn.execute(
                f"SELECT {_FIELDS} FROM {self._ns}.memories WHERE rid = ANY(%s::bigint[])", [list(handles)]
            ).fetchall()
        return {r[0]: _record(r, with_score=True) for r in found}

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

    def window_scores(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, tuple[float, float]]:
        """The window members' vectors (binary, ``pgarrays.loaded_vectors``), scored by the same code as
        SQLite's (``window_sums``)."""
        if not ids or self._model is None:
            return {}
        with self._read() as conn:
            found = conn.execute(
                f"SELECT m.id, w.vec FROM {self._ns}.memories m CROSS JOIN LATERAL (SELECT x.rid, x.vec"
                f" FROM {self._ns}.memories x WHERE x.scope = m.scope AND x.rid <= m.rid"
                f" ORDER BY x.rid DESC LIMIT {CONTEXT_BEFORE + 1}) w"
                " WHERE m.id = ANY(%s::text[]) ORDER BY m.rid, w.rid DESC",
                [ids],
                binary=True,
            ).fetchall()
        if not found:
            return {}
        return window_sums([r[0] for r in found], pgarrays.loaded_vectors([v for _, v in found]), vector)

    def close(self) -> None:
        self._pool.close()


def rescore_sql(ns: str, where: str) -> str:
    """The statement that scores the int8 copy's candidates exactly: parameters ``[query, rids,
    *filter params, query, k]``. Each candidate is fetched by ``rid`` (the ``LATERAL … OFFSET 0``
    keeps the planner from joining them any other way) and the filter is tested on those rows
    only. A plain join let the planner of a table not yet analysed read every row the filter's
    own indexes matched, then hash-join: with the expiry test in the filter, 16 ms per statement
    at 30k memories instead of 1.4 (``benchmarks/pg_rescore.py``; docs/postgres.md)."""
    return (
        f"SELECT {_FIELDS}, (vec <#> %b) FROM unnest(%s::bigint[]) AS c(r),"
        f" LATERAL (SELECT * FROM {ns}.memories WHERE rid = c.r OFFSET 0) m"
        f" WHERE {where} ORDER BY vec <#> %b, rid LIMIT %s"
    )
