"""The date words on PostgreSQL (``keyword_dates``, issue 23; SQLite's are in ``fts.py``): a
``dated`` column that ``pgkeyword.KeywordSearch`` searches instead of ``words`` when the store has it.

``dated`` is a ``STORED`` generated column of ``memories``: the lexemes ``words`` has (the text and
the scope's) plus those of the row's date words (``datewords.sql``, as the IMMUTABLE function
``hm_dates``; its own ``to_tsvector``, so ``pgwords.MAX_INDEXED_CHARS`` never cuts them), with
its own GIN index. The keyword context's windows (``pgcontext``) are then made of ``dated`` (each
member with its date words, as SQLite's), and re-made in the transaction that adds or drops it
(``PostgresStorage.keyword_dates``). A second column rather than a new expression for ``words``:
turning the option off is a ``DROP COLUMN`` (no rewrite), and a writer of any version keeps
both. Turning it on rewrites the table once, in one transaction under the schema's advisory
lock: an interrupted one leaves nothing, and the next open with the option redoes it. The server
computes the column in the statement that writes a row; ``created_at`` never changes.
"""

from __future__ import annotations

from typing import Any

from hivemem.memory.storage import datewords
from hivemem.memory.storage.pgwords import MAX_INDEXED_CHARS, PENDING_KB, config
from hivemem.memory.storage.pgwords import VERSION as WORDS_VERSION

VERSION = f"{WORDS_VERSION} {datewords.VERSION}"  # of the ``dated`` column; meta 'keyword_dates'


def stored(conn: Any, ns: str) -> str | None:
    """The ``VERSION`` of the store's ``dated`` column, None: it has none (a read of ``meta``)."""
    found = conn.execute(f"SELECT value FROM {ns}.meta WHERE key = 'keyword_dates'").fetchone()
    return None if found is None else str(found[0])


def dates_ready(conn: Any, ns: str) -> bool:
    """Whether the store has the ``dated`` column at this rendering (no DDL)."""
    return stored(conn, ns) == VERSION


def install_dates(conn: Any, ns: str, on: bool) -> None:
    """Add (``on``) or drop the ``dated`` column and its index (module docstring), in the
    caller's transaction, which holds the schema's advisory lock."""
    conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN IF EXISTS dated")  # and its index
    conn.execute(f"DELETE FROM {ns}.meta WHERE key = 'keyword_dates'")
    if not on:
        return
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
    conn.execute(f"INSERT INTO {ns}.meta (key, value) VALUES ('keyword_dates', %s)", (VERSION,))
