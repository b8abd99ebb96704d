"""The keyword context on SQLite (issue 23; PostgreSQL's is ``pgcontext``), beside ``fts``'s index.

``memories_ctx``: each memory's *window*, its text and that of the
``CONTEXT_BEFORE`` memories before it and the ``CONTEXT_AFTER`` after it in its scope (the same
user/agent/run, by insertion order: ``rid``), joined one a line in ``rid`` order, is indexed
too: derived data, never part of the memory's text, hash or history. A conversation's turn
rarely names everything a question asks about; its neighbours often do.
The table is made the first time a ``Memory`` with ``keyword_context=True`` opens the store
(stores that never use it pay nothing), then triggers keep it in the transaction of every
write, as ``memories_fts``: an insert indexes the new row's window and re-indexes those of the
rows around it (the 2 before it; after it, none unless it was given an older rid); an update
or a delete re-indexes the windows around the row's place (hivemem's own batches, of inserts or
deletes, write each affected window once, at the end: ``defer``), so the table always equals a
rebuild from scratch. A window
never crosses scopes. It is an FTS5 table *with* content: a row's old window cannot be
recomputed once a neighbour has changed, and SQLite 3.40 has no ``contentless_delete``.
Windows of another layout (the backward window before 2026-12-06 round 6, the other
``keyword_dates`` layout) stay whole and searched while the new ones fill ``NEXT_TABLE`` in
resumable steps, swapped in by the last step's transaction (``ensure_context``), at any open,
with the option or without. A process of an older version must not write the store meanwhile
(docs/memory.md: upgrade them together): the triggers refuse its batches (``OLD_DEFER_KEY``), and
this code's batches defer only on a table of this layout (``_current``).
``KeywordIndex.search(..., context=share)`` scores a row ``body / best body + share × window /
best window`` (both BM25 as above, the scope's statistics; the bests among the rows that pass
the filter, so that no other row changes the order), which ``hybrid.fuse`` divides by
its best as any keyword score (docs/memory.md#finding-more-on-locomo-what-was-tried-2026-12-06-issue-23).
"""

from __future__ import annotations

import json
import sqlite3

from hivemem.memory.storage import datewords
from hivemem.memory.storage.fts import CONTEXT_BEFORE, SCOPE, TOKENIZER, dated, merge_eagerly

CONTEXT_AFTER = 2  # memories after it in its keyword window (symmetric: docs/memory.md, round 6)
# bump when the table or its triggers change (4: the symmetric window; 5: ``DEFER_KEY`` and the
# guard against ``OLD_DEFER_KEY``; an older store migrates)
CONTEXT_LAYOUT = f"5 {TOKENIZER} -{CONTEXT_BEFORE}+{CONTEXT_AFTER}"
CONTEXT_LAYOUT_DATED = f"{CONTEXT_LAYOUT} dates {datewords.VERSION}"  # each member with its date words
CONTEXT_BATCH = 5_000  # rows a backfill step indexes per transaction (an old store, on open)
CONTEXT_TABLE = "memories_ctx"
NEXT_TABLE = "memories_ctx_next"  # another layout's windows, filled in steps, then swapped in
_MEMBER = "w.memory"
_MEMBER_DATED = f"w.memory || coalesce(char(10) || ({datewords.sql('w.created_at', 'sqlite')}), '')"
# a window's texts in insertion order (rid ascending), one a line: the CONTEXT_BEFORE rows before
# the row, the row, the CONTEXT_AFTER rows after it, of its scope
_WINDOW = (
    "(SELECT group_concat(t, char(10)) FROM (SELECT rid, t FROM (SELECT w.rid, {member} AS t FROM memories w"
    f" WHERE w.scope = {{p}}.scope AND w.rid <= {{p}}.rid ORDER BY w.rid DESC LIMIT {CONTEXT_BEFORE + 1})"
    " UNION ALL SELECT rid, t FROM (SELECT w.rid, {member} AS t FROM memories w"
    f" WHERE w.scope = {{p}}.scope AND w.rid > {{p}}.rid ORDER BY w.rid LIMIT {CONTEXT_AFTER}) ORDER BY rid))"
)
# meta keys of hivemem's own batches (``defer``): set in their transaction, never committed. The
# code before layout 5 set ``OLD_DEFER_KEY``, then wrote backward windows itself: the triggers
# refuse a write while it is set (``_GUARD``), so such a process fails instead of corrupting them
DEFER_KEY = "fts_ctx_batch"
OLD_DEFER_KEY = "fts_ctx_defer"
# none while ``defer`` holds: a LIMIT, not a WHERE term, which would walk the rest of the scope
_DEFERRED = f"(SELECT CASE WHEN EXISTS (SELECT 1 FROM meta WHERE key = '{DEFER_KEY}') THEN 0 ELSE {{n}} END)"
_GUARD = (
    f" SELECT RAISE(ABORT, 'hivemem: this store''s keyword context was migrated by a newer hivemem;"
    f" upgrade every process that writes it (docs/memory.md)') WHERE EXISTS (SELECT 1 FROM meta"
    f" WHERE key = '{OLD_DEFER_KEY}');"
)


def _window(p: str, dates: bool) -> str:
    """The window of row ``p`` (a table alias, or ``new``/``old`` in a trigger) as one text."""
    return _WINDOW.format(member=_MEMBER_DATED if dates else _MEMBER, p=p)


def _around(p: str, itself: bool, defer: bool = False) -> str:
    """A SELECT of the rids whose windows hold row ``p``'s place in ``p.scope``: the
    ``CONTEXT_AFTER`` rows before it and the ``CONTEXT_BEFORE`` after it (their windows reach it;
    ``itself``: and it); ``defer``: none while ``DEFER_KEY`` is set (``delete_rows``)."""
    before = _DEFERRED.format(n=CONTEXT_AFTER) if defer else CONTEXT_AFTER
    after = _DEFERRED.format(n=CONTEXT_BEFORE) if defer else CONTEXT_BEFORE
    parts = [
        f"SELECT rid FROM (SELECT rid FROM memories WHERE scope = {p}.scope AND rid < {p}.rid"
        f" ORDER BY rid DESC LIMIT {before})",
        f"SELECT rid FROM (SELECT rid FROM memories WHERE scope = {p}.scope AND rid > {p}.rid"
        f" ORDER BY rid LIMIT {after})",
    ]
    own = f"SELECT {p}.rid" + (f" WHERE {_DEFERRED.format(n=1)} = 1" if defer else "")
    return " UNION ALL ".join([own, *parts] if itself else parts)


def _reindex(rows: str, dates: bool, table: str = CONTEXT_TABLE) -> str:
    """Statements re-indexing the windows of the memory rows ``rows`` (a SELECT of rids) from the
    table as it is now (used in triggers, so ``rows`` may name ``new``/``old``); ``dates``: each
    member of a window with its date words (the store's ``fts`` mark is ``LAYOUT_DATED``)."""
    return (
        f" DELETE FROM {table} WHERE rowid IN ({rows});"
        f" INSERT INTO {table} (rowid, context, scope)"
        f" SELECT m.rid, {_window('m', dates)}, {SCOPE.format(p='m')} FROM memories m"
        f" WHERE m.rid IN ({rows});"
    )


def _triggers(dates: bool, table: str) -> tuple[str, ...]:
    """The triggers keeping ``table``'s windows: a write re-indexes every window that holds the
    written row's place, before and after it (an insert: its own too; a delete: drops its own).
    Only ``CONTEXT_TABLE``'s follow ``DEFER_KEY`` and refuse ``OLD_DEFER_KEY`` (``_GUARD``): a
    migration's ``NEXT_TABLE`` is kept row by row whoever deletes (``delete_rows`` re-indexes the
    main table only), and an older process's own writes go to the old table, its own layout."""
    defer = table == CONTEXT_TABLE
    guard = _GUARD if defer else ""
    columns = f"memory, {'created_at, ' if dates else ''}scope, user_id, agent_id, run_id"
    # an update: the row's new place (it and its neighbours), and its old place if it moved scope
    moved = f"SELECT rid FROM ({_around('old', False)}) WHERE old.scope IS NOT new.scope"
    return (
        f"CREATE TRIGGER {table}_insert AFTER INSERT ON memories BEGIN{guard}"
        f"{_reindex(_around('new', True, defer), dates, table)} END",
        f"CREATE TRIGGER {table}_delete AFTER DELETE ON memories BEGIN{guard}"
        f" DELETE FROM {table} WHERE rowid = old.rid;"
        f"{_reindex(_around('old', False, defer), dates, table)} END",
        f"CREATE TRIGGER {table}_update AFTER UPDATE OF {columns} ON memories"
        f" BEGIN DELETE FROM {table} WHERE rowid = old.rid;{_reindex(moved, dates, table)}"
        f"{_reindex(_around('new', True), dates, table)} END",
    )


def context_schema(dates: bool, table: str = CONTEXT_TABLE) -> tuple[str, ...]:
    """The statements that make ``table`` (the windows) and its triggers (``dates``: see ``_reindex``)."""
    return (
        f"CREATE VIRTUAL TABLE {table} USING fts5(context, scope, tokenize='{{tokenizer}}')",
        "CREATE INDEX IF NOT EXISTS memories_scope_rid ON memories(scope, rid)",
        *_triggers(dates, table),
    )


def _drop_context(table: str, triggers_only: bool = False) -> tuple[str, ...]:
    drops = tuple(f"DROP TRIGGER IF EXISTS {table}_{event}" for event in ("insert", "delete", "update"))
    return drops if triggers_only else (*drops, f"DROP TABLE IF EXISTS {table}")


def drop(db: sqlite3.Connection) -> None:
    """Remove the context tables and their triggers (``reset``, with ``fts.drop``); the context's
    meta key stays: ``ensure_context`` re-creates the table."""
    for sql in (*_drop_context(CONTEXT_TABLE), *_drop_context(NEXT_TABLE)):
        db.execute(sql)


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    found = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if found is None else str(found[0])


def _table_exists(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone() is not None


def _make(db: sqlite3.Connection, table: str, layout: str, key: str) -> None:
    """(Re-)make ``table`` empty with its triggers; meta ``key`` marks ``layout`` and ``key``_done
    / ``key``_high the rows stored now (rid <= high: the backfill's; later ones the triggers')."""
    for sql in _drop_context(table):
        db.execute(sql)
    for sql in context_schema(layout == CONTEXT_LAYOUT_DATED, table):
        db.execute(sql.format(tokenizer=TOKENIZER))
    high = db.execute("SELECT coalesce(max(rid), 0) FROM memories").fetchone()[0]
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [(key, layout), (f"{key}_done", 0 if high else -1), (f"{key}_high", high)],
    )
    merge_eagerly(db, table)


def _forget_next(db: sqlite3.Connection) -> None:
    """Drop a migration's ``NEXT_TABLE``, its triggers and meta keys, if any (reads otherwise)."""
    if _meta(db, "fts_ctx_next") is None and not _table_exists(db, NEXT_TABLE):
        return
    for sql in _drop_context(NEXT_TABLE):
        db.execute(sql)
    db.execute("DELETE FROM meta WHERE key IN ('fts_ctx_next', 'fts_ctx_next_done', 'fts_ctx_next_high')")


def ensure_context(db: sqlite3.Connection, create: bool) -> bool:
    """Create (``create``, or when the store has had it: re-create after ``drop``, or bring to
    another layout) the context table and its triggers; the caller holds a write transaction.
    The triggers index every write from then on; the rows already stored are indexed by
    ``backfill_context`` (in steps). A store whose windows have another layout (an older window,
    the other ``keyword_dates`` layout) keeps them, whole and searched, while the new ones fill
    ``NEXT_TABLE`` in steps; the last step swaps them in (``backfill_context``). → whether a
    backfill is due."""
    have = _meta(db, "fts_ctx")
    if have is None and not create:
        return False  # never asked for here: writes do not pay for it
    layout = CONTEXT_LAYOUT_DATED if dated(db) else CONTEXT_LAYOUT  # the body's date words, also here
    if have == layout and _table_exists(db, CONTEXT_TABLE):
        _forget_next(db)  # a migration begun towards this layout is moot (cheap when none)
        merge_eagerly(db, CONTEXT_TABLE)
    elif have is not None and _table_exists(db, CONTEXT_TABLE):  # another layout: migrate in steps
        if _meta(db, "fts_ctx_next") != layout or not _table_exists(db, NEXT_TABLE):
            _make(db, NEXT_TABLE, layout, "fts_ctx_next")
    else:  # none yet, or dropped by ``reset``: made now, nothing else to keep
        _forget_next(db)
        _make(db, CONTEXT_TABLE, layout, "fts_ctx")
    return context_pending(db)


def context_pending(db: sqlite3.Connection) -> bool:
    """Whether rows stored before the context table existed still wait for ``backfill_context``,
    or a migration to another layout waits to finish."""
    done = _meta(db, "fts_ctx_done")
    return _meta(db, "fts_ctx_next") is not None or (done is not None and int(done) >= 0)


def backfill_context(db: sqlite3.Connection, batch: int | None = None) -> bool:
    """Index the windows of the next ``batch`` rows stored before the context table (or a
    migration's ``NEXT_TABLE``) existed; the caller holds a write transaction (one per step, so a
    killed or full-disk backfill keeps its progress and the next open resumes). A migration's last
    step swaps its table in, in that transaction: searches see the old windows or the new ones,
    each whole. → whether more is left. A write meanwhile may already have indexed some of the
    rows (its triggers): re-indexing gives the same window."""
    migrating = _meta(db, "fts_ctx_next")
    table, key = (NEXT_TABLE, "fts_ctx_next") if migrating else (CONTEXT_TABLE, "fts_ctx")
    done, high = int(_meta(db, f"{key}_done") or -1), int(_meta(db, f"{key}_high") or 0)
    if done >= 0:
        upto = min(done + (batch or CONTEXT_BATCH), high)
        rows = f"SELECT rid FROM memories WHERE rid > {done} AND rid <= {upto}"
        for sql in _reindex(rows, dated(db), table).split(";")[:-1]:
            db.execute(sql)
        done = upto if upto < high else -1
        db.execute("UPDATE meta SET value = ? WHERE key = ?", (done, f"{key}_done"))
        if done >= 0:
            return True
    if migrating is None:
        return False
    for sql in (*_drop_context(CONTEXT_TABLE), *_drop_context(NEXT_TABLE, triggers_only=True)):
        db.execute(sql)
    db.execute(f"ALTER TABLE {NEXT_TABLE} RENAME TO {CONTEXT_TABLE}")
    for sql in _triggers(migrating == CONTEXT_LAYOUT_DATED, CONTEXT_TABLE):
        db.execute(sql)
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("fts_ctx", migrating), ("fts_ctx_done", -1), ("fts_ctx_high", high)],
    )
    _forget_next(db)
    return False


def _current(db: sqlite3.Connection) -> bool:
    """Whether ``CONTEXT_TABLE`` holds this code's windows (its mark is this code's layout, no
    migration under way): its triggers are then this module's, which ``defer`` relies on."""
    layout = CONTEXT_LAYOUT_DATED if dated(db) else CONTEXT_LAYOUT
    current = _meta(db, "fts_ctx") == layout and _table_exists(db, CONTEXT_TABLE)
    return current and not _table_exists(db, NEXT_TABLE)


def defer(db: sqlite3.Connection, rows: int) -> bool:
    """Before hivemem writes ``rows`` memory rows in one transaction (``delete_rows``,
    ``sqlwrite.insert_rows``): with the context table of this layout (``_current``) and more than
    one row, set ``DEFER_KEY`` so that the main table's triggers re-index no neighbour (an insert:
    not even its own window); ``reindex_around`` then does each affected window once. → whether it
    did. Row by row, an ``add_batch`` of one scope wrote every window 3 times (the new row's, then
    the next two inserts' re-index), a ``delete_all`` several times. The meta key is never
    committed: a kill rolls it back with the rows. During a migration (``NEXT_TABLE``), or with
    another layout's table (a process of an older version re-made it), the triggers do it all."""
    many = rows > 1 and _current(db)
    if many:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, 1)", (DEFER_KEY,))
    return many


def reindex_around(db: sqlite3.Connection, changed: list[tuple[str, int]], itself: bool) -> None:
    """Remove ``DEFER_KEY`` and re-index, each once, the windows that reach each of the rows
    ``changed`` (``(scope, rid)``): the ``CONTEXT_AFTER`` rows before it and the ``CONTEXT_BEFORE``
    after it in its scope, as the table is now, and (``itself``: inserted rows) its own; nothing
    unless the table is of this layout (``_current``: never this layout's windows in another's)."""
    db.execute("DELETE FROM meta WHERE key = ?", (DEFER_KEY,))
    if not _current(db):
        return
    nth = "(SELECT rid FROM memories WHERE scope = g.s AND rid {op} g.r ORDER BY rid{o} LIMIT 1 OFFSET {n})"
    gone = "(SELECT json_extract(value, '$[0]') AS s, json_extract(value, '$[1]') AS r FROM json_each(?))"
    nths = [nth.format(op=">", o="", n=n) for n in range(CONTEXT_BEFORE)]  # their windows reach back
    nths += [nth.format(op="<", o=" DESC", n=n) for n in range(CONTEXT_AFTER)]
    nths += ["g.r"] if itself else []
    parts = " UNION ".join(f"SELECT {one} AS f FROM {gone} g" for one in nths)
    found = db.execute(
        f"SELECT json_group_array(f) FROM ({parts}) WHERE f IS NOT NULL", [json.dumps(changed)] * len(nths)
    ).fetchone()[0]
    rids: list[int] = json.loads(found)
    dates = dated(db)
    for lo in range(0, len(rids), CONTEXT_BATCH):
        chunk = json.dumps(rids[lo : lo + CONTEXT_BATCH])  # integers only: a literal is safe
        for sql in _reindex(f"SELECT value FROM json_each('{chunk}')", dates).split(";")[:-1]:
            db.execute(sql)


def delete_rows(db: sqlite3.Connection, removed: list[tuple[str, int]]) -> None:
    """Delete the memory rows ``removed`` (``(scope, rid)``); the caller holds a write transaction.
    With the context table and more than one row, each row's trigger drops only the row's own
    window, then the windows that held a removed row are re-indexed, each once (``defer``)."""
    many = defer(db, len(removed))
    db.executemany("DELETE FROM memories WHERE rid = ?", [(rid,) for _, rid in removed])
    if many:
        reindex_around(db, removed, itself=False)
