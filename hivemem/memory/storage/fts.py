"""The keyword side of SQLite search: an FTS5 index over the memory text, ranked by BM25.

* **Same transaction.** ``memories_fts`` is a contentless FTS5 table (the text already lives in
  ``memories``) kept by triggers on ``memories``: a row is indexed, re-indexed or removed in the
  very transaction that inserts, updates or deletes it, so keyword results always agree with the
  committed rows. A store made before the index existed gets it (filled from its rows) on first
  open; a change of tokenizer or layout (``LAYOUT``) rebuilds it the same way.
* **Tokenizer** ``porter unicode61 remove_diacritics 2``, chosen on the LoCoMo development half
  (``benchmarks/retrieval.py --sweep``; numbers in docs/memory.md).
* **Hostile text is never syntax.** The query is built from ``hybrid.query_terms`` (words only),
  each one double-quoted (a quote doubled), joined by ``OR``, restricted to the ``body`` column.
* **Filters before ranking.** The compiled filter is applied to the ranked rows (the best
  ``4 × k`` first, then, if too few of them pass, to every match before the ``LIMIT``), so the
  result is the best ``k`` among the rows that pass. A column ``scope`` holds one token per
  user/agent/run id (``u``/``a``/``r`` + the hex of its UTF-8 bytes); an equality on them in the
  filter also narrows the FTS query itself (``scope : "u…" AND body : (…)``), so a search in one
  user's memories ranks only that user's matches, not the whole store's. The token only narrows:
  the exact filter still decides.
* **Bounded cost.** FTS5's ``bm25()`` counts every row of every query term (~20 ns each) and
  scores every match (~0.6 µs each), so a common word in a store of a million rows costs tens of
  milliseconds. Each term's row count is counted once per process (cached), and the query keeps
  the rarest terms while the matches they can bring (their rows × the share of the store in the
  scope) stay within ``RANK_BUDGET`` and their rows within ``COUNT_BUDGET``. The common words
  left out carry little BM25 weight (low idf). In a store smaller than ``RANK_BUDGET`` rows
  nothing is ever left out (the LoCoMo measurements are exact BM25).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

from hivemem.memory.filters import Cond, Logic, Node

TOKENIZER = "porter unicode61 remove_diacritics 2"
LAYOUT = f"2 {TOKENIZER}"  # bump the number when the table or its triggers change
RANK_BUDGET = 10_000  # matches the keyword query may score (~0.6 µs each)
COUNT_BUDGET = 300_000  # rows its terms may hold in the whole store (~20 ns each, for idf)
_SCOPE = "coalesce('u' || hex({p}.user_id), '') || ' ' || coalesce('a' || hex({p}.agent_id), '')" \
    " || ' ' || coalesce('r' || hex({p}.run_id), '')"  # fmt: skip
_PREFIX = {"user_id": "u", "agent_id": "a", "run_id": "r"}

SCHEMA = (
    "CREATE VIRTUAL TABLE memories_fts USING fts5(body, scope, content='', tokenize='{tokenizer}')",
    "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN"
    f" INSERT INTO memories_fts (rowid, body, scope) VALUES (new.rid, new.memory, {_SCOPE.format(p='new')});"
    " END",
    "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN"
    " INSERT INTO memories_fts (memories_fts, rowid, body, scope)"
    f" VALUES ('delete', old.rid, old.memory, {_SCOPE.format(p='old')}); END",
    "CREATE TRIGGER memories_fts_update AFTER UPDATE OF memory, user_id, agent_id, run_id ON memories BEGIN"
    " INSERT INTO memories_fts (memories_fts, rowid, body, scope)"
    f" VALUES ('delete', old.rid, old.memory, {_SCOPE.format(p='old')});"
    f" INSERT INTO memories_fts (rowid, body, scope) VALUES (new.rid, new.memory, {_SCOPE.format(p='new')});"
    " END",
    f"INSERT INTO memories_fts (rowid, body, scope) SELECT rid, memory, {_SCOPE.format(p='memories')}"
    " FROM memories",
)
_DROP = (
    "DROP TRIGGER IF EXISTS memories_fts_insert",
    "DROP TRIGGER IF EXISTS memories_fts_delete",
    "DROP TRIGGER IF EXISTS memories_fts_update",
    "DROP TABLE IF EXISTS memories_fts",
)


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create (or re-create, for another layout) the index; the caller holds a write transaction."""
    have = db.execute("SELECT value FROM meta WHERE key = 'fts'").fetchone()
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts'").fetchone()
    if exists and have and have[0] == LAYOUT:
        return
    for sql in _DROP:
        db.execute(sql)
    for sql in SCHEMA:
        db.execute(sql.format(tokenizer=TOKENIZER))
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fts', ?)", (LAYOUT,))


def quote(term: str) -> str:
    """An FTS5 string: the characters of ``term`` as a literal phrase, never syntax."""
    return '"' + term.replace('"', '""') + '"'


def body_match(terms: list[str]) -> str:
    return "body : (" + " OR ".join(quote(t) for t in terms) + ")"


def scope_tokens(where: Node | None) -> list[str]:
    """A token per user/agent/run equality at the top of ``where`` (every match must hold them)."""
    top = where.items if isinstance(where, Logic) and where.kind == "AND" else (where,)
    return [
        _PREFIX[c.field] + c.value.encode("utf-8").hex().upper()
        for c in top
        if isinstance(c, Cond) and c.op == "eq" and c.field in _PREFIX and isinstance(c.value, str)
    ]


class KeywordIndex:
    """Per-process helper: row counts of terms (cached) and the budgeted BM25 query."""

    def __init__(self) -> None:
        self._counts: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _rows_of(self, db: sqlite3.Connection, store: str, size: int, fts_query: str) -> int:
        key = (store, fts_query)
        with self._lock:
            hit = self._counts.get(key)
        if hit is not None and abs(hit[1] - size) * 10 <= max(hit[1], 1000):
            return hit[0]  # counted while the store was within 10% of its size now
        rows = db.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (fts_query,))
        count = int(rows.fetchone()[0])
        with self._lock:
            self._counts[key] = (count, size)
            self._counts.move_to_end(key)
            while len(self._counts) > 4096:
                self._counts.popitem(last=False)
        return count

    def plan(
        self, db: sqlite3.Connection, store: str, size: int, terms: list[str], scope: list[str]
    ) -> tuple[list[str], list[str]]:
        """``(terms kept, scope tokens used)`` within the budgets of the module docstring."""
        if size <= RANK_BUDGET:
            return terms, scope
        share = 1.0
        if scope:
            rows = min(self._rows_of(db, store, size, f"scope : {quote(t)}") for t in scope)
            share = rows / max(size, 1)
            if share > 0.25:  # a scope holding most of the store narrows little: skip its idf cost
                scope, share = [], 1.0
        counted = sorted((self._rows_of(db, store, size, body_match([t])), t) for t in terms)
        kept, total = [], 0
        for rows, term in counted:
            if rows == 0:
                continue
            if (total + rows) * share > RANK_BUDGET or total + rows > COUNT_BUDGET:
                break
            kept.append(term)
            total += rows
        return kept, scope

    def search(
        self, db: sqlite3.Connection, terms: list[str], scope: list[str], sql: str, params: list[Any], k: int
    ) -> list[tuple[int, float]]:
        """``(rid, relevance > 0)`` of the best ``k`` rows passing ``sql`` that hold a term."""
        if not terms:
            return []
        query = " AND ".join([*(f"scope : {quote(t)}" for t in scope), body_match(terms)])
        rank = "bm25(memories_fts, 1.0, 0.0)"
        first = 4 * k if sql != "1" else k
        rows = db.execute(
            f"SELECT rowid, -{rank} FROM memories_fts WHERE memories_fts MATCH ?"
            f" ORDER BY {rank}, rowid LIMIT ?",
            (query, first),
        ).fetchall()
        if sql == "1":
            return [(int(r), float(s)) for r, s in rows if s > 0]
        passing = {
            r for (r,) in db.execute(
                f"SELECT rid FROM memories WHERE rid IN (SELECT value FROM json_each(?)) AND ({sql})",
                [json.dumps([r for r, _ in rows]), *params],
            )
        }  # fmt: skip
        if len(passing) >= k or len(rows) < first:  # every match seen, or enough of the best pass
            return [(int(r), float(s)) for r, s in rows if r in passing and s > 0][:k]
        rows = db.execute(  # few of the best pass: rank among the rows that pass
            f"SELECT hit.r, -hit.s FROM (SELECT rowid AS r, {rank} AS s FROM memories_fts"
            f" WHERE memories_fts MATCH ?) AS hit JOIN memories ON memories.rid = hit.r WHERE {sql}"
            " ORDER BY hit.s, hit.r LIMIT ?",
            [query, *params, k],
        ).fetchall()
        return [(int(r), float(s)) for r, s in rows if s > 0]
