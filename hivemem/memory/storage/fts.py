"""The keyword side of SQLite search: an FTS5 index over the memory text, ranked by BM25.

* **Same transaction.** ``memories_fts`` is a contentless FTS5 table (the text already lives in
  ``memories``) kept by triggers on ``memories``: a row is indexed, re-indexed or removed in the
  very transaction that inserts, updates or deletes it, so keyword results always agree with the
  committed rows. A store made before the index existed gets it (filled from its rows) on first
  open; a change of tokenizer or layout (``LAYOUT``) rebuilds it the same way.
* **Tokenizer** ``porter unicode61 remove_diacritics 2``, chosen on the LoCoMo development half
  (``benchmarks/retrieval.py --sweep``; numbers in docs/memory.md).
* **Hostile text is never syntax.** Each query word is double-quoted (a quote doubled) and
  restricted to the ``body`` column: FTS5 only ever sees ``body : ("w1")``-style phrases.
* **Scoring: BM25 with the statistics of the scope searched.** A column ``scope`` holds one token
  per user/agent/run id (``u``/``a``/``r`` + the hex of its UTF-8 bytes). With equalities on
  them in the filter, each query word is looked up as ``scope : "u…" AND body : ("word")``: the
  rows of that scope holding the word. A memory scores the sum of the BM25 idf (as Lucene has it:
  ``ln(1 + (N - df + 0.5) / (df + 0.5))``, always positive) of the query words it holds, where
  ``N`` and ``df`` count rows *of the scope*: BM25 with ``b = 0`` and term frequency 1, which is
  what short memories have. Why not FTS5's own ``bm25()``: it ranks with the statistics of the
  whole store, where a speaker's name, in half of that speaker's conversation, looks rare across
  many conversations; on LoCoMo (recall@10) it reached 0.61 alone and 0.65 fused against 0.64
  and 0.68 here, and length normalisation (``b`` 0.25–0.75) lowered both.
* **Filters before ranking.** The compiled filter is checked on the best ``4 × k`` rows, then, if
  too few pass, on all the others: the result is the best ``k`` among the rows that pass. The
  scope token only narrows the lookup; the exact filter still decides. FTS5 walks the scope
  token's whole row list for every query word (a cost that grows with the scope:
  docs/memory.md#measurements-behind-the-design), so a scope of more than ``SCOPE_ROWS_MAX`` rows
  is searched without it, with the statistics of the whole store (of which it is then a large
  sample).
* **Bounded cost.** Reading a row of a word has a cost, so a common word in one scope of a million
  rows would cost tens of milliseconds (docs/memory.md#measurements-behind-the-design). Each
  word's row count in the store is counted once per process (cached while the store keeps its
  size), and the search keeps the rarest words while the rows they bring (their rows × the scope's
  share of the store) stay within ``RANK_BUDGET``; the common words left out carry little idf. As
  long as the rows of all the query's words in the scope stay within the budget (LoCoMo: ~550
  turns per conversation), no word is left out and the score is exact.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from hivemem.infra.sqlitedb import int_array
from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.storage.indexheader import StoreState

TOKENIZER = "porter unicode61 remove_diacritics 2"
LAYOUT = f"2 {TOKENIZER}"  # bump the number when the table or its triggers change
RANK_BUDGET = 10_000  # rows (term occurrences) a keyword search may read
SCOPE_ROWS_MAX = 40_000  # larger scopes: no scope token in the query, statistics of the store
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
    drop(db)
    for sql in SCHEMA:
        db.execute(sql.format(tokenizer=TOKENIZER))
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fts', ?)", (LAYOUT,))


def drop(db: sqlite3.Connection) -> None:
    """Remove the index and its triggers (``reset`` deletes every row without 100k FTS deletes,
    whose markers would slow keyword searches until FTS5 merges them:
    docs/memory.md#measurements-behind-the-design)."""
    for sql in _DROP:
        db.execute(sql)


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
    """Per-process helper: row counts (cached while the store keeps its size, or, for exact
    counts, its version) and the scoring."""

    def __init__(self) -> None:
        # (store, FTS query) → (count, store size, store version when counted)
        self._counts: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _count(self, db: sqlite3.Connection, state: StoreState, fts_query: str, exact: bool) -> int:
        key, size = (state.uid, fts_query), state.high
        with self._lock:
            hit = self._counts.get(key)
        if hit is not None:
            if hit[2] == state.version:  # counted in this very version (every write bumps it)
                return hit[0]
            if (not exact or hit[0] > RANK_BUDGET) and abs(hit[1] - size) * 10 <= hit[1]:
                return hit[0]  # a count not used exactly, while the store was within 10% of its size
        rows = db.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH ?", (fts_query,))
        count = int(rows.fetchone()[0])
        with self._lock:
            self._counts[key] = (count, size, state.version)
            self._counts.move_to_end(key)
            while len(self._counts) > 4096:
                self._counts.popitem(last=False)
        return count

    def plan(
        self, db: sqlite3.Connection, state: StoreState, terms: list[str], scope: list[str]
    ) -> tuple[list[str], str, int]:
        """``(terms kept, scope part of the FTS query, rows in the scope)`` (module docstring)."""
        size = state.high
        scope_query = " AND ".join(f"scope : {quote(t)}" for t in scope)
        rows = self._count(db, state, scope_query, exact=True) if scope_query else size
        if rows > SCOPE_ROWS_MAX:  # FTS5 walks the scope's whole row list for every word
            scope_query, rows = "", size
        if rows * len(terms) <= RANK_BUDGET:
            return terms, scope_query, rows
        share = rows / max(size, 1)
        counted = [(self._count(db, state, body_match([t]), exact=False), t) for t in terms]
        return rarest_words(counted, share), scope_query, rows

    def search(
        self,
        db: sqlite3.Connection,
        terms: list[str],
        scope_query: str,
        rows: int,
        sql: str,
        params: list[Any],
        k: int,
    ) -> list[tuple[int, float]]:
        """``(rid, relevance > 0)`` of the best ``k`` rows passing ``sql`` that hold a term."""
        if not terms:
            return []
        # every word's rows in ONE statement (a column each): one step of sqlite3, not one per
        # word (each lets other threads take the GIL; docs/memory.md#concurrent-searches)
        lookup = "(SELECT group_concat(rowid) FROM memories_fts WHERE memories_fts MATCH ?)"
        queries = [f"{scope_query} AND {body_match([t])}" if scope_query else body_match([t]) for t in terms]
        per_term = db.execute("SELECT " + ", ".join([lookup] * len(terms)), queries).fetchone()
        found: list[np.ndarray] = []
        weights: list[float] = []
        for ids in per_term:
            hits = int_array(ids)
            if len(hits):  # BM25's idf as Lucene has it: positive, so every row holding a word counts
                found.append(hits)
                weights.append(math.log(1 + (max(rows, len(hits)) - len(hits) + 0.5) / (len(hits) + 0.5)))
        if not found:
            return []
        rids, at = np.unique(np.concatenate(found), return_inverse=True)
        score = np.bincount(at, weights=np.repeat(weights, [len(f) for f in found]))
        order = np.lexsort((rids, -score))  # best first; ties to the older memory
        rids, score = rids[order], score[order]
        if sql == "1":
            return list(zip(rids[:k].tolist(), score[:k].tolist(), strict=True))
        out: list[tuple[int, float]] = []
        for lo, hi in ((0, 4 * k), (4 * k, len(rids))):  # the best first; all of them if too few pass
            if lo >= len(rids):
                break
            part = rids[lo:hi].tolist()
            listed = db.execute(  # one result row (see the first statement above)
                "SELECT group_concat(rid) FROM memories"
                f" WHERE rid IN (SELECT value FROM json_each(?)) AND ({sql})",
                [json.dumps(part), *params],
            ).fetchone()[0]
            passing = set(int_array(listed).tolist())
            out += [(r, float(s)) for r, s in zip(part, score[lo:hi].tolist(), strict=True) if r in passing]
            if len(out) >= k:
                break
        return out[:k]


def rarest_words(counts: list[tuple[int, str]], share: float) -> list[str]:
    """The rarest words while the rows they bring (their rows × the scope's share) stay within
    ``RANK_BUDGET``; ``counts``: ``(rows of the word in the store, word)``. Both backends plan with it.

    >>> rarest_words([(30_000, "the"), (5, "peanuts"), (0, "zebra"), (9_000, "likes")], 1.0)
    ['peanuts', 'likes']
    """
    kept, total = [], 0
    for df, term in sorted(counts):
        if df == 0:
            continue
        if (total + df) * share > RANK_BUDGET:
            break
        kept.append(term)
        total += df
    return kept
