"""The date words on PostgreSQL (``keyword_dates``, issue 23; SQLite's are in ``fts.py``): a
``dated`` column that ``pgkeyword.KeywordSearch`` searches instead of ``words`` while the option is on.

``dated`` is a ``STORED`` generated column of ``memories``: the lexemes ``words`` has (the text and
the scope's) plus those of the row's date words (``datewords.sql``, as the IMMUTABLE function
``hm_dates``; its own ``to_tsvector``, so ``pgwords.MAX_INDEXED_CHARS`` never cuts them), with
its own GIN index. The keyword context's windows (``pgcontext``) are then made of ``dated`` (each
member with its date words, as SQLite's), and re-made in the transaction that turns the option on
or off (``PostgresStorage.keyword_dates``). Turning it on the first time adds the column (one
table rewrite, in one transaction under the schema's advisory lock: an interrupted one leaves
nothing, and the next open with the option redoes it); the server computes it in the statement
that writes a row (``created_at`` never changes).

The option is a ``meta`` value, ``keyword_dates`` (the column's ``VERSION``; absent: off), and
every search reads it in a statement it makes anyway (``STATE``), so each open process searches the
column the store's state names, whoever turned it on or off and when. Turning it off keeps the
column (``keyword_dates_column``: its ``VERSION``): no rewrite, no dropped attribute each time
(PostgreSQL never reclaims one: a table has at most 1600), and a process that has not yet seen the
change still searches an existing column. docs/memory.md says how to drop it for good.
"""

from __future__ import annotations

from typing import Any

from hivemem.memory.storage import datewords
from hivemem.memory.storage.pgwords import MAX_INDEXED_CHARS, PENDING_KB, config
from hivemem.memory.storage.pgwords import VERSION as WORDS_VERSION

VERSION = f"{WORDS_VERSION} {datewords.VERSION}"  # of the ``dated`` column; meta 'keyword_dates'


def state(ns: str) -> str:
    """A scalar subquery: the option's ``meta`` value (NULL: off), for a search's statement."""
    return f"(SELECT value FROM {ns}.meta WHERE key = 'keyword_dates')"


def column(value: str | None) -> str:
    """The column a search reads, for the option's ``meta`` value (``state``)."""
    return "words" if value is None else "dated"


def stored(conn: Any, ns: str) -> str | None:
    """The ``VERSION`` of the store's ``dated`` column while the option is on; None: off."""
    found = conn.execute(f"SELECT {state(ns)}").fetchone()
    return None if found[0] is None else str(found[0])


def dates_ready(conn: Any, ns: str) -> bool:
    """Whether the option is on with the column at this rendering (no DDL)."""
    return stored(conn, ns) == VERSION


def install_dates(conn: Any, ns: str, on: bool) -> None:
    """Turn the option on (the column made, or re-made at this ``VERSION``, if need be) or off
    (the column kept), in the caller's transaction, which holds the schema's advisory lock."""
    have = conn.execute(
        f"SELECT (SELECT value FROM {ns}.meta WHERE key = 'keyword_dates_column'), {state(ns)},"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass"
        " AND attname = 'dated' AND NOT attisdropped)",
        (f"{ns}.memories",),
    ).fetchone()
    made = have[0] or have[1]  # (a store turned on before the column was kept: its version is the option's)
    made = made if have[2] else None
    conn.execute(f"DELETE FROM {ns}.meta WHERE key IN ('keyword_dates', 'keyword_dates_column')")
    if on and made != VERSION:
        conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN IF EXISTS dated")  # and its index
        conn.execute(
            f"CREATE OR REPLACE FUNCTION {ns}.hm_dates(t text) RETURNS text"
            f" LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {datewords.sql('t', 'postgres')}"
        )
        conn.execute(
            f"ALTER TABLE {ns}.memories ADD COLUMN dated tsvector GENERATED ALWAYS AS"
            f" (to_tsvector({config(ns)}, left({ns}.hm_words(memory), {MAX_INDEXED_CHARS}))"
            f" || to_tsvector({config(ns)}, coalesce({ns}.hm_dates(created_at), ''))"
            f" || {ns}.hm_scope(user_id, agent_id, run_id)) STORED"
        )
        conn.execute(
            f"CREATE INDEX memories_dated ON {ns}.memories USING gin (dated)"
            f" WITH (gin_pending_list_limit = {PENDING_KB})"
        )
        made = VERSION
    if made is not None:
        conn.execute(f"INSERT INTO {ns}.meta (key, value) VALUES ('keyword_dates_column', %s)", (made,))
    if on:
        conn.execute(f"INSERT INTO {ns}.meta (key, value) VALUES ('keyword_dates', %s)", (VERSION,))
