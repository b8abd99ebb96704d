"""The keyword index's schema on PostgreSQL: ``hm_words``, the ``hm_english`` configuration,
the generated ``words`` column of ``memories`` and its GIN index (what ``pgkeyword`` searches; its
docstring says why each piece is as it is).

``install`` creates all of this in a schema, and on a store made before it existed adds the
column (a table rewrite, once) and the index, under the schema's advisory lock; ``postgres.py``
calls it only when the store's ``meta`` says the keyword layout is missing or older.
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Any

from hivemem.memory.storage import pglower

VERSION = "1"  # of the function, configuration, column and index below; kept in meta 'keywords'
MAX_INDEXED_CHARS = 100_000
# GIN keeps new entries in a pending list that every search scans linearly, until it passes this
# size (kB) and the writer that passed it merges it into the index. PostgreSQL's default made word
# lookups much slower after many new rows; the least allowed still lets a large insert merge in
# bulk (docs/postgres.md#hybrid-search).
PENDING_KB = 64
SAMPLE_FROM = 20_000  # rows above which word counts are estimated from a sample (``_plan``)
SAMPLE_ROWS = 1_000
TOAST_TARGET = 8160  # PostgreSQL's largest; its default (2 kB) moved the code and words of rows
# with 384-dim vectors out of line, one TOAST lookup each when read
_TABLE_BYTES = 1 << 20  # ``_alive``: a lookup table of up to this many bytes (+16 per expired id)
SCOPE_FIELDS = ("user_id", "agent_id", "run_id")
PREFIX = ("_u", "_a", "_r")  # scope lexemes: text never yields one (hm_words keeps no "_")
_WORD_TYPES = "asciiword, asciihword, hword_asciipart, word, hword, hword_part"


@functools.cache
def _ranges(kind: str) -> str:
    """A regex bracket of the code points that are letters/digits (``alnum``) or marks."""
    if kind == "alnum":
        keep = [cp for cp in range(1, sys.maxunicode + 1) if chr(cp).isalnum()]
    else:
        keep = [cp for cp in range(1, sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith("M")]
    return pglower.ranges(keep)


def _words_sql(ns: str, lower: str) -> tuple[str, str]:
    """``(hm_words, hm_words_unicode)`` bodies (module docstring); ``lower``: the store's
    ``hm_lower``. Non-ASCII text goes to a PL/pgSQL function: an SQL function is inlined into every
    query that calls it, and planning its regular expressions cost time in every statement (the
    PL/pgSQL one is planned once per connection: docs/postgres.md#measurements-behind-the-design)."""
    marks, alnum = _ranges("marks"), _ranges("alnum")
    unicode = (
        f"regexp_replace(regexp_replace(normalize({lower}(t), NFD), '[{marks}]+', '', 'g'),"
        f" '[^{alnum}]+', ' ', 'g')"
    )
    ascii_path = "regexp_replace(lower(t COLLATE \"C\"), '[^a-z0-9]+', ' ', 'g')"
    words = f"CASE WHEN t ~ '^[\\x01-\\x7F]*$' THEN {ascii_path} ELSE {ns}.hm_words_unicode(t) END"
    return words, unicode


def config(ns: str) -> str:
    """The ``regconfig`` literal of the store's text search configuration."""
    return f"'{ns}.hm_english'::regconfig"


def install(conn: Any, ns: str, schema: str, lower: str) -> None:
    """Create (or bring to ``VERSION``) the keyword index of the store in ``ns``, in the caller's
    transaction, which holds the schema's advisory lock. Each object is looked up first."""

    def exists(catalog: str, prefix: str, name: str) -> bool:
        return bool(
            conn.execute(
                f"SELECT 1 FROM pg_catalog.{catalog} c JOIN pg_catalog.pg_namespace n"
                f" ON n.oid = c.{prefix}namespace WHERE n.nspname = %s AND c.{prefix}name = %s",
                (schema, name),
            ).fetchone()
        )

    if not exists("pg_ts_dict", "dict", "hm_stem"):
        conn.execute(
            f"CREATE TEXT SEARCH DICTIONARY {ns}.hm_stem (TEMPLATE = pg_catalog.snowball, Language = english)"
        )
    if not exists("pg_ts_config", "cfg", "hm_english"):
        conn.execute(f"CREATE TEXT SEARCH CONFIGURATION {ns}.hm_english (COPY = pg_catalog.simple)")
        conn.execute(
            f"ALTER TEXT SEARCH CONFIGURATION {ns}.hm_english ALTER MAPPING FOR {_WORD_TYPES}"
            f" WITH {ns}.hm_stem"
        )
    column = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = %s::regclass AND attname = 'words'"
        " AND NOT attisdropped",
        (f"{ns}.memories",),
    ).fetchone()
    stored = conn.execute(f"SELECT value FROM {ns}.meta WHERE key = 'keywords'").fetchone()
    if column and (stored is None or stored[0] != VERSION):
        conn.execute(f"ALTER TABLE {ns}.memories DROP COLUMN words")  # made by another version
        column = None
    words, unicode = _words_sql(ns, lower)
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {ns}.hm_words_unicode(t text) RETURNS text"
        f" LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$ BEGIN RETURN {unicode}; END $$"
    )
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {ns}.hm_words(t text) RETURNS text"
        f" LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {words}"
    )
    tokens = ", ".join(
        f"'{p}' || encode(convert_to({f}, 'UTF8'), 'hex')" for f, p in zip(SCOPE_FIELDS, PREFIX, strict=True)
    )  # convert_to is STABLE only because of the database encoding, which never changes
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {ns}.hm_scope(user_id text, agent_id text, run_id text)"
        " RETURNS tsvector LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE"
        f" AS $$ BEGIN RETURN array_to_tsvector(array_remove(ARRAY[{tokens}], NULL)); END $$"
    )
    # rows of up to 8 kB stay whole: the int8 code and the words are read on every search
    conn.execute(f"ALTER TABLE {ns}.memories SET (toast_tuple_target = {TOAST_TARGET})")
    if not column:
        conn.execute(
            f"ALTER TABLE {ns}.memories ADD COLUMN words tsvector GENERATED ALWAYS AS"
            f" (to_tsvector({config(ns)}, left({ns}.hm_words(memory), {MAX_INDEXED_CHARS}))"
            f" || {ns}.hm_scope(user_id, agent_id, run_id)) STORED"
        )
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS memories_words ON {ns}.memories USING gin (words)"
        f" WITH (gin_pending_list_limit = {PENDING_KB})"
    )
    conn.execute(
        f"INSERT INTO {ns}.meta (key, value) VALUES ('keywords', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (VERSION,),
    )
