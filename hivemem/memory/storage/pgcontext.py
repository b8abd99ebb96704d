"""The keyword context on PostgreSQL (issue 23; SQLite's is ``ftscontext``'s ``memories_ctx``).

Each memory's *window* (its text and that of the ``fts.CONTEXT_BEFORE`` memories stored just
before it and the ``ftscontext.CONTEXT_AFTER`` stored just after it in its scope: the same
``scope`` column, so the same user/agent/run ids) is indexed in ``memories_ctx (rid, words,
tx)``: the ``words`` of the window's rows (``pgkeyword``'s generated column: the same lexemes,
the scope's lexemes included; ``dated`` instead in a store with ``keyword_dates``, ``pgdates``)
concatenated in ``rid`` order, as SQLite joins their texts, under a GIN index; ``tx``: the
transaction that last wrote the window (indexed: ``pgpostings`` keeps
window row lists per process and follows them by it). ``hm_window(scope, rid)`` computes one
window; the backfill and the triggers both call it.

* **Made on demand**: ``install`` runs the first time a ``Memory`` with ``keyword_context=True``
  opens the store (``meta`` key ``keyword_ctx``), in ONE transaction that also fills the table
  from the rows already stored (it takes the table lock that ``CREATE TRIGGER`` needs, so
  writers wait for it, readers do not; an interrupted one leaves nothing and the next open
  redoes it). A store whose windows are of another ``VERSION`` (the backward window before
  2026-12-06 round 6) or made of the other ``keyword_dates`` column is brought to this one by
  the next open with the option (or the toggle) in one transaction too. When its table has this
  one's columns (``COLUMNS``: every version since ``tx``), nothing is dropped: the functions are
  replaced (the triggers call ``hm_ctx_<event>()`` by name) and every window rewritten in place,
  so a search, even one whose snapshot began before, reads the old windows, never blocked,
  until the commit, and an interrupted one leaves them whole. A table of another shape is
  dropped and re-made: that holds every reader of the store off (``ACCESS EXCLUSIVE``) until
  the commit. Processes of an older version must not keep using the store meanwhile: its
  ``ready`` differs, so the next one opened with the option re-installs its own version
  (docs/postgres.md). Stores that never use the option have no table and no trigger: their
  writes pay nothing.
* **Same transaction, any writer**: three statement-level triggers (``AFTER INSERT``,
  ``DELETE``, ``UPDATE`` on ``memories``, with transition tables) call ``hm_ctx_sync`` in the
  transaction of every write, whichever client made it: an insert indexes the new rows' windows,
  a delete drops the rows' own; an insert, delete or change of text (or scope) also re-indexes
  the windows that reach each changed row (the ``CONTEXT_AFTER`` rows before it and the
  ``CONTEXT_BEFORE`` after it) in its scope (a row's old scope too, when it moved). A change of metadata or
  expiry touches nothing. The rows around a changed row are looked for only up to the next (and
  back to the previous) changed row of its scope (the rows past that one are its own
  neighbours): the rows a statement deleted stay in the index, invisible, until vacuumed, and
  each search past them walked every one: a ``delete_all`` of 100,000 rows in one scope ran
  for minutes (quadratic; docs/memory.md#the-keyword-contexts-cost-2026-12-06). ``hm_window``
  reads the ``(scope, rid)`` index from the row, backwards and forwards (bitmap scans and sorts
  off in it): with the estimate of a table not yet analysed, the planner read every row of the
  scope up to the row instead.
* **Concurrent writers in one scope**: a window read by one transaction cannot see rows another
  has not committed yet, so ``hm_ctx_sync`` first takes transaction advisory locks that cover
  the scopes it changed, held to the commit, and only then reads the windows (a new statement
  at READ COMMITTED: every earlier holder's rows are committed and seen). Row ids are drawn
  before the lock, so a transaction may commit a row older than rows committed before it: that
  is why an insert re-indexes the windows of the rows that follow it as well as those before it. After any
  interleaving the table equals a rebuild (``tests/memory/test_keyword_context.py``: threads
  writing one scope at once).
* **Bounded locks**: advisory locks share PostgreSQL's lock table (``max_locks_per_transaction``
  × connections entries), so one lock per scope made a purge or a batch across thousands of
  users fail with "out of shared memory". A scope's lock is one of ``LOCK_BUCKETS`` buckets
  (``pg_advisory_xact_lock(<store key>, hashtext(scope) % LOCK_BUCKETS)``, taken in bucket
  order: no deadlock between two syncs), under the store's lock (bucket -1) taken shared; a
  statement that touches more than ``LOCK_BUCKETS_MAX`` buckets takes the store's lock
  exclusive instead (one lock; it waits for, and holds off, every other writer of the store).
  (A transaction holding the shared lock from an earlier statement that then asks for it
  exclusive can deadlock with another such: PostgreSQL aborts one, and ``_write`` retries it.)
  Two scopes in one bucket, or two stores whose keys collide, only wait for each other.
"""

from __future__ import annotations

from typing import Any

from hivemem.memory.storage import pgdates
from hivemem.memory.storage.fts import CONTEXT_BEFORE
from hivemem.memory.storage.ftscontext import CONTEXT_AFTER
from hivemem.memory.storage.pgwords import PENDING_KB
from hivemem.memory.storage.pgwords import VERSION as WORDS_VERSION

# of the table, functions and triggers below, and of the ``words`` its windows are made of (a new
# keyword layout rebuilds them at the next open with the option); kept in meta 'keyword_ctx'
VERSION = f"5 -{CONTEXT_BEFORE}+{CONTEXT_AFTER} {WORDS_VERSION}"  # 5: the symmetric window
COLUMNS = [("rid", "bigint"), ("words", "tsvector"), ("tx", "xid8")]  # memories_ctx's, in order
LOCK_BUCKETS = 1024  # advisory locks a store's scopes are spread over (a power of two)
LOCK_BUCKETS_MAX = 64  # a statement touching more buckets takes the store's lock instead


def version(dated: bool) -> str:
    """``VERSION``, for a store whose windows are made of ``dated`` (``pgdates``) if ``dated``."""
    return f"{VERSION} dates {pgdates.VERSION}" if dated else VERSION


def ready(conn: Any, ns: str) -> bool:
    """Whether the store's context index exists at its ``version`` (a read of ``meta``: no DDL)."""
    found = conn.execute(f"SELECT value FROM {ns}.meta WHERE key = 'keyword_ctx'").fetchone()
    return found is not None and found[0] == version(pgdates.dates_ready(conn, ns))


def exists(conn: Any, ns: str) -> bool:
    """Whether the store has a context table (of any version), e.g. for ``reset`` to empty it."""
    return conn.execute("SELECT to_regclass(%s)", (f"{ns}.memories_ctx",)).fetchone()[0] is not None


def install(conn: Any, ns: str, schema: str) -> None:
    """Create (or bring to ``VERSION``) the context index of the store in ``ns`` and fill it, in
    the caller's transaction, which holds the schema's advisory lock (module docstring)."""
    if ready(conn, ns):
        return  # made by another process while this one waited for the lock
    dated = pgdates.dates_ready(conn, ns)  # the windows of a store with date words hold them too
    column = "dated" if dated else "words"
    conn.execute(f"LOCK TABLE {ns}.memories IN SHARE ROW EXCLUSIVE MODE")  # writers wait; readers not
    table = f"{ns}.memories_ctx"
    shape = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
        " to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    triggers = {  # those the table has: kept (a DROP TRIGGER would lock readers out too)
        name
        for (name,) in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal",
            (f"{ns}.memories",),
        ).fetchall()
    }
    if [tuple(column) for column in shape] != COLUMNS:  # none yet, or of another shape: re-made
        for event in ("insert", "delete", "update"):
            conn.execute(f"DROP TRIGGER IF EXISTS memories_ctx_{event} ON {ns}.memories")
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        triggers = set()
        # tx: the transaction that last wrote the window (``pgpostings`` follows the windows by it)
        conn.execute(
            f"CREATE TABLE {table} (rid bigint PRIMARY KEY, words tsvector NOT NULL,"
            " tx xid8 NOT NULL DEFAULT pg_current_xact_id())"
        )
    conn.execute(f"CREATE INDEX IF NOT EXISTS memories_ctx_tx ON {table} (tx)")
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS memories_ctx_words ON {table} USING gin (words)"
        f" WITH (gin_pending_list_limit = {PENDING_KB})"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS memories_scope_rid ON {ns}.memories (scope, rid)")
    size = CONTEXT_BEFORE + 1 + CONTEXT_AFTER
    members = " || ".join(f"coalesce(a[{i}], ''::tsvector)" for i in range(1, size + 1))
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {ns}.hm_window(s text, r bigint) RETURNS tsvector"
        # the (scope, rid) index read from the row, backwards then forwards, a few entries: never a
        # bitmap of the scope's rows and a sort, which an unanalysed table's estimate (2 rows) chose
        " LANGUAGE sql STABLE PARALLEL SAFE SET enable_bitmapscan = off SET enable_sort = off"
        f" AS $$ SELECT {members} FROM (SELECT array_agg(w ORDER BY rid) AS a FROM ((SELECT rid,"
        f" {column} AS w FROM {ns}.memories WHERE scope = s AND rid <= r ORDER BY rid DESC"
        f" LIMIT {CONTEXT_BEFORE + 1}) UNION ALL (SELECT rid, {column} FROM {ns}.memories"
        f" WHERE scope = s AND rid > r ORDER BY rid LIMIT {CONTEXT_AFTER})) w) x $$"
    )
    # the store's key: the schema hashed (this module's locks never share a key with another store's)
    store = f"hashtext({_literal(schema)} || chr(10) || 'ctx')"
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {ns}.hm_ctx_sync(scopes text[], rids bigint[], gone bigint[])"
        " RETURNS void LANGUAGE plpgsql VOLATILE AS $f$ DECLARE buckets int[]; b int; BEGIN"
        " IF cardinality(scopes) = 0 AND cardinality(gone) = 0 THEN RETURN; END IF;"
        f" buckets := ARRAY(SELECT DISTINCT hashtext(s) & {LOCK_BUCKETS - 1} FROM unnest(scopes) AS s"
        " ORDER BY 1);"
        f" IF cardinality(buckets) > {LOCK_BUCKETS_MAX} THEN PERFORM pg_advisory_xact_lock({store}, -1);"
        f" ELSE PERFORM pg_advisory_xact_lock_shared({store}, -1);"
        f" FOREACH b IN ARRAY buckets LOOP PERFORM pg_advisory_xact_lock({store}, b); END LOOP;"
        " END IF;"
        f" DELETE FROM {ns}.memories_ctx WHERE rid = ANY(gone);"
        f" INSERT INTO {ns}.memories_ctx (rid, words) SELECT m.rid, {ns}.hm_window(m.scope, m.rid)"
        f" FROM {ns}.memories m WHERE m.rid IN (SELECT unnest(rids) UNION SELECT f.rid FROM (SELECT s, r,"
        " lead(r) OVER w AS nx, lag(r) OVER w AS pv FROM unnest(scopes, rids) AS c(s, r)"
        " WINDOW w AS (PARTITION BY s ORDER BY r)) c"
        f" CROSS JOIN LATERAL ((SELECT rid FROM {ns}.memories WHERE scope = c.s AND rid > c.r"
        # bounds the index scans stop at (an OR would be a filter, and the scan would go on)
        f" AND rid < coalesce(c.nx, {2**63 - 1}) ORDER BY rid LIMIT {CONTEXT_BEFORE}) UNION ALL"
        f" (SELECT rid FROM {ns}.memories WHERE scope = c.s AND rid < c.r AND rid > coalesce(c.pv, 0)"
        f" ORDER BY rid DESC LIMIT {CONTEXT_AFTER})) f)"
        " ON CONFLICT (rid) DO UPDATE SET words = excluded.words, tx = excluded.tx;"
        " END $f$"
    )
    changes = {
        "insert": ("NEW TABLE AS n", "ARRAY(SELECT scope FROM n)", "ARRAY(SELECT rid FROM n)", "'{}'"),
        "delete": ("OLD TABLE AS o", "ARRAY(SELECT scope FROM o)", "ARRAY(SELECT rid FROM o)",
                   "ARRAY(SELECT rid FROM o)"),
        # a text or scope changed: the row's new place (its window and its followers), and its old one
        "update": ("OLD TABLE AS o NEW TABLE AS n", "ARRAY(SELECT s FROM c)", "ARRAY(SELECT r FROM c)",
                   "'{}'"),
    }  # fmt: skip
    for event, (tables, scopes, rids, gone) in changes.items():
        moved = (
            "WITH c AS (SELECT n.scope AS s, n.rid AS r FROM n JOIN o USING (rid) WHERE n.memory"
            " IS DISTINCT FROM o.memory OR n.scope IS DISTINCT FROM o.scope UNION SELECT o.scope,"
            " o.rid FROM n JOIN o USING (rid) WHERE n.scope IS DISTINCT FROM o.scope) "
            if event == "update"
            else ""
        )
        conn.execute(
            f"CREATE OR REPLACE FUNCTION {ns}.hm_ctx_{event}() RETURNS trigger LANGUAGE plpgsql AS $f$"
            f" BEGIN PERFORM {ns}.hm_ctx_sync(x.s, x.r, x.g) FROM ({moved}SELECT {scopes} AS s,"
            f" {rids} AS r, {gone}::bigint[] AS g) x; RETURN NULL; END $f$"
        )
        if f"memories_ctx_{event}" not in triggers:
            conn.execute(
                f"CREATE TRIGGER memories_ctx_{event} AFTER {event.upper()} ON {ns}.memories"
                f" REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION {ns}.hm_ctx_{event}()"
            )
    # every window (re)written: a kept table's rows in place (readers see the old ones until the
    # commit), with a new tx (``pgpostings`` then drops the lists it kept of them)
    conn.execute(
        f"INSERT INTO {table} (rid, words) SELECT rid, {ns}.hm_window(scope, rid) FROM {ns}.memories"
        " ON CONFLICT (rid) DO UPDATE SET words = excluded.words, tx = excluded.tx"
    )
    conn.execute(
        f"INSERT INTO {ns}.meta (key, value) VALUES ('keyword_ctx', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (version(dated),),
    )


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (a schema name, checked by ``locate``; quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"
