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
  what short memories have. With no scope (or a scope of more than ``SCOPE_ROWS_MAX``) ``N`` is
  the highest row id present (``max(rid)``, read with the store's state: a count would walk the
  table), as PostgreSQL's: the rows, plus the ids spent without a row left below it (deleted rows,
  duplicates refused inside a batch); never the AUTOINCREMENT high-water mark, which also counts
  a deleted newest row and which PostgreSQL's ``max(rid)`` does not (docs/memory.md, "Keyword side").
  Why not FTS5's own ``bm25()``: it ranks with the statistics of the
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
* **Few segments.** FTS5 keeps an index as segments, merged in the background of writes; every
  word a search looks up costs a lookup in each segment (~30 µs a word with ~9 segments of a
  10,000-memory store, ~25 % of a hybrid search). Both tables merge as soon as two segments
  share a level (``AUTOMERGE``; FTS5's default waits for 4): half the segments or fewer, the same
  rows, so the same results (docs/memory.md#concurrent-searches). Set on every open (a store made
  before gets it for its merges from then on).
* **Bounded cost.** Reading a row of a word has a cost, so a common word in one scope of a million
  rows would cost tens of milliseconds (docs/memory.md#measurements-behind-the-design). Each
  word's row count in the store is counted once per process (cached: a count used exactly holds
  for the store's version it was counted in, others while the store is within 10% of its size),
  and the search keeps the rarest words while the rows they bring (their rows × the scope's share
  of the store) stay within ``RANK_BUDGET``; the common words left out carry little idf. As
  long as the rows of all the query's words in the scope stay within the budget (LoCoMo: ~550
  turns per conversation), no word is left out and the score is exact.
* **Context** (``memories_ctx``, issue 23): each memory's window of neighbours, indexed too:
  ``ftscontext``.
* **Date words** (``keyword_dates``, issue 23): with the store's mark ``LAYOUT_DATED``, each row's
  ``body`` is its text and its date words (``datewords``), computed by the triggers from
  ``created_at``, which never changes, so a delete still gives FTS5 the exact text it indexed. The
  option re-indexes the table in one transaction (``ensure_schema``). The context's windows then
  hold each member's date words too (``CONTEXT_LAYOUT_DATED``: another layout, so re-made in
  steps beside the old ones as above: ``SQLiteStorage.keyword_dates``).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from hivemem.infra.sqlitedb import int_array
from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.storage import datewords
from hivemem.memory.storage.indexheader import StoreState

TOKENIZER = "porter unicode61 remove_diacritics 2"
LAYOUT = f"2 {TOKENIZER}"  # bump the number when the table or its triggers change
RANK_BUDGET = 10_000  # rows (term occurrences) a keyword search may read
FILTER_CHUNK = 3 * RANK_BUDGET  # row ids the filter is checked on in one statement (context ranking)
SCOPE_ROWS_MAX = 40_000  # larger scopes: no scope token in the query, statistics of the store
AUTOMERGE = 2  # FTS5 merges segments once this many share a level (its default: 4; module docstring)
SCOPE = "coalesce('u' || hex({p}.user_id), '') || ' ' || coalesce('a' || hex({p}.agent_id), '')" \
    " || ' ' || coalesce('r' || hex({p}.run_id), '')"  # fmt: skip
_PREFIX = {"user_id": "u", "agent_id": "a", "run_id": "r"}

LAYOUT_DATED = f"{LAYOUT} dates {datewords.VERSION}"  # the same table, each body with its date words


def schema(dates: bool) -> tuple[str, ...]:
    """The statements that make ``memories_fts``, its triggers and fill it (the last one);
    ``dates``: each row's ``body`` is its text and its date words (``datewords``; module docstring)."""
    body = "{p}.memory"
    if dates:
        body += f" || coalesce(char(10) || ({datewords.sql('{p}.created_at', 'sqlite')}), '')"
    new, old = body.format(p="new"), body.format(p="old")
    columns = f"memory, {'created_at, ' if dates else ''}user_id, agent_id, run_id"
    return (
        "CREATE VIRTUAL TABLE memories_fts USING fts5(body, scope, content='', tokenize='{tokenizer}')",
        "CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN"
        f" INSERT INTO memories_fts (rowid, body, scope) VALUES (new.rid, {new}, {SCOPE.format(p='new')});"
        " END",
        "CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN"
        " INSERT INTO memories_fts (memories_fts, rowid, body, scope)"
        f" VALUES ('delete', old.rid, {old}, {SCOPE.format(p='old')}); END",
        f"CREATE TRIGGER memories_fts_update AFTER UPDATE OF {columns} ON memories BEGIN"
        " INSERT INTO memories_fts (memories_fts, rowid, body, scope)"
        f" VALUES ('delete', old.rid, {old}, {SCOPE.format(p='old')});"
        f" INSERT INTO memories_fts (rowid, body, scope) VALUES (new.rid, {new}, {SCOPE.format(p='new')});"
        " END",
        f"INSERT INTO memories_fts (rowid, body, scope) SELECT rid, {body.format(p='memories')},"
        f" {SCOPE.format(p='memories')} FROM memories",
    )


CONTEXT_BEFORE = 2  # memories before a memory in its windows (keyword: ``ftscontext``; the vector context's)


_DROP = (
    "DROP TRIGGER IF EXISTS memories_fts_insert",
    "DROP TRIGGER IF EXISTS memories_fts_delete",
    "DROP TRIGGER IF EXISTS memories_fts_update",
    "DROP TABLE IF EXISTS memories_fts",
)


def ensure_schema(db: sqlite3.Connection, dates: bool | None = None) -> bool:
    """Create (or re-create, for another layout) the index; the caller holds a write transaction.
    ``dates``: with the date words (``LAYOUT_DATED``) or without; None: as the store has it (a
    caller that changes it re-makes the context in the same transaction, ``ensure_context``: its
    windows hold the date words too, ``CONTEXT_LAYOUT_DATED``). A
    re-index is one transaction (contentless FTS5 cannot tell which rows a partial one holds): an
    interrupted one leaves the old index and its mark, and the next open redoes it. → whether the
    index was (re)built."""
    have = db.execute("SELECT value FROM meta WHERE key = 'fts'").fetchone()
    dated = have is not None and have[0].startswith(f"{LAYOUT} dates ")
    want = LAYOUT_DATED if (dated if dates is None else dates) else LAYOUT
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_fts'").fetchone()
    if exists and have and have[0] == want:
        merge_eagerly(db, "memories_fts")
        return False
    for sql in _DROP:  # not the context table: a caller changing ``dates`` re-makes it (``ensure_context``)
        db.execute(sql)
    statements = schema(want == LAYOUT_DATED)
    for sql in statements[:-1]:
        db.execute(sql.format(tokenizer=TOKENIZER))
    merge_eagerly(db, "memories_fts")  # before the rows are indexed: their segments merge too
    db.execute(statements[-1])
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fts', ?)", (want,))
    return True


def dated(db: sqlite3.Connection) -> bool:
    """Whether the store's keyword text holds the date words (its ``fts`` mark)."""
    have = db.execute("SELECT value FROM meta WHERE key = 'fts'").fetchone()
    return have is not None and have[0] == LAYOUT_DATED


def merge_eagerly(db: sqlite3.Connection, table: str) -> None:
    """Set ``table``'s FTS5 ``automerge`` to ``AUTOMERGE`` unless it has it (fewer segments for
    searches to look words up in: module docstring); the caller holds a write transaction."""
    have = db.execute(f"SELECT v FROM {table}_config WHERE k = 'automerge'").fetchone()
    if have is None or have[0] != AUTOMERGE:
        db.execute(f"INSERT INTO {table} ({table}, rank) VALUES ('automerge', ?)", (AUTOMERGE,))


def drop(db: sqlite3.Connection) -> None:
    """Remove the indexes and their triggers (``reset`` deletes every row without 100k FTS deletes,
    whose markers would slow keyword searches until FTS5 merges them:
    docs/memory.md#measurements-behind-the-design)."""
    for sql in _DROP:  # the context's: ``ftscontext.drop``
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
        # (store, its rewrites, its keyword layout, FTS query) → (count, store size, store version
        # when counted); the layout: another process's re-index (``keyword_dates``) bumps no version
        self._counts: OrderedDict[tuple[str, int, str, str], tuple[int, int, int]] = OrderedDict()
        self._lock = threading.Lock()

    def _count(self, db: sqlite3.Connection, state: StoreState, fts_query: str, exact: bool) -> int:
        key, size = (state.uid, state.epoch, state.keywords, fts_query), state.top
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
        size = state.top
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
        context: float = 0.0,
    ) -> tuple[list[tuple[int, float]], dict[int, tuple[float, float]]]:
        """``(rid, relevance > 0)`` of the best ``k`` rows passing ``sql`` that hold a term, and
        with ``context`` > 0 (the window's share, module docstring) each one's raw ``(body,
        context)`` scores (for ``explain``)."""
        body = self._match(db, "memories_fts", "body", terms, scope_query, rows)
        ctx = self._match(db, "memories_ctx", "context", terms, scope_query, rows) if context > 0 else None

        def passing(part: list[int]) -> set[int]:
            listed = db.execute(  # one result row (see the first statement above)
                "SELECT group_concat(rid) FROM memories"
                f" WHERE rid IN (SELECT value FROM json_each(?)) AND ({sql})",
                [json.dumps(part), *params],
            ).fetchone()[0]
            return set(int_array(listed).tolist())

        return rank(body, ctx, context, k, None if sql == "1" else passing)

    @staticmethod
    def _match(
        db: sqlite3.Connection, table: str, column: str, terms: list[str], scope_query: str, rows: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(rids ascending, BM25 score)`` of the rows of ``table`` whose ``column`` holds a term."""
        if not terms:
            return np.zeros(0, np.int64), np.zeros(0)
        # every word's rows in ONE statement (a column each): one step of sqlite3, not one per
        # word (each lets other threads take the GIL; docs/memory.md#concurrent-searches)
        lookup = f"(SELECT group_concat(rowid) FROM {table} WHERE {table} MATCH ?)"
        matches = [f"{column} : ({quote(t)})" for t in terms]
        queries = [f"{scope_query} AND {m}" if scope_query else m for m in matches]
        per_term = db.execute("SELECT " + ", ".join([lookup] * len(terms)), queries).fetchone()
        return bm25([(len(hits), hits) for hits in map(int_array, per_term)], rows)


def bm25(words: list[tuple[int, np.ndarray]], rows: float) -> tuple[np.ndarray, np.ndarray]:
    """``(rids ascending, score)``: ``words`` holds, per query word, the rows of the scope holding
    it (``df``) and the row ids to score among them; ``rows``: the scope's row count. A row scores
    the idf (BM25's, as Lucene has it: positive, so every row holding a word counts) of each word
    it holds. Both backends score with it, so equal inputs give equal scores."""
    found, weights = [], []
    for df, rids in words:
        if df and len(rids):
            found.append(rids)
            weights.append(math.log(1 + (max(rows, df) - df + 0.5) / (df + 0.5)))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0)
    rids, at = np.unique(np.concatenate(found), return_inverse=True)
    return rids, np.bincount(at, weights=np.repeat(weights, [len(f) for f in found]))


Parts = dict[int, tuple[float, float]]  # rid → raw (body, context) scores, for ``explain``


def rank(
    body: tuple[np.ndarray, np.ndarray],
    ctx: tuple[np.ndarray, np.ndarray] | None,
    share: float,
    k: int,
    passing: Callable[[list[int]], set[int]] | None,
) -> tuple[list[tuple[int, float]], Parts]:
    """The best ``k`` ``(rid, relevance)`` of the scored rows ``body`` (``bm25``), with ``ctx``
    (the windows' scores; ``share`` > 0) each row scoring ``body / best body + share × window /
    best window``, best first, ties to the older memory, and each hit's raw parts. ``passing``
    (None: no filter) → which of some rids pass the filter: asked for the best ``4 × k`` first,
    then, if too few pass, for all the others; with ``ctx``, the best body and window are those
    of rows that pass (a filtered-out row, another user's or an expired one, must not change the
    order): each is the first row that passes in the order of that part, so the filter is asked
    about the best few rows, not all of them (each row at most once; in one statement when the
    best rows pass). Both backends rank with it (module docstring)."""
    rids, score = body
    parts_body = parts_ctx = np.zeros(0)
    check = None if passing is None else _Checked(passing)
    if ctx is not None and share > 0:
        rids = _union(rids, ctx[0])
        parts_body, parts_ctx = np.zeros(len(rids)), np.zeros(len(rids))
        parts_body[np.searchsorted(rids, body[0])] = score
        parts_ctx[np.searchsorted(rids, ctx[0])] = ctx[1]
        if check is not None:  # one question for the likely answer: the best rows pass
            top = parts_body / (parts_body.max(initial=0) or 1) + share * parts_ctx / (
                parts_ctx.max(initial=0) or 1
            )
            first = (_best_first(parts_body, 64), _best_first(parts_ctx, 64), _best_first(top, 4 * k))
            check(list(dict.fromkeys(rids[np.concatenate(first)].tolist())))
        best_body, best_ctx = _best(rids, parts_body, check), _best(rids, parts_ctx, check)
        score = parts_body / (best_body or 1) + share * parts_ctx / (best_ctx or 1)
    by_rid = rids  # ascending: where each hit's parts are

    def found(out: list[tuple[int, float]]) -> tuple[list[tuple[int, float]], Parts]:
        if not len(parts_body) or not out:
            return out, {}
        at = np.searchsorted(by_rid, [r for r, _ in out])  # the parts of the hits only
        return out, {
            r: (float(parts_body[i]), float(parts_ctx[i])) for (r, _), i in zip(out, at.tolist(), strict=True)
        }

    if not len(rids):
        return found([])
    if check is None:
        top = _best_first(score, k)
        return found(list(zip(rids[top].tolist(), score[top].tolist(), strict=True)))
    out: list[tuple[int, float]] = []
    for lo, hi in ((0, 4 * k), (4 * k, len(rids))):  # the best first; all of them if too few pass
        if lo >= len(rids):
            break
        at = _best_first(score, hi)[lo:]
        part = rids[at].tolist()
        ok = check(part)
        out += [(r, float(s)) for r, s in zip(part, score[at].tolist(), strict=True) if r in ok]
        if len(out) >= k:
            break
    return found(out[:k])


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted distinct values of two sorted arrays (``np.union1d`` hashes: ~40× slower at 20k
    rows, docs/memory.md#the-keyword-contexts-cost-2026-12-06)."""
    both = np.concatenate((a, b))
    both.sort(kind="stable")  # two sorted runs: merged
    keep = np.empty(len(both), bool)
    keep[:1] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]


def _best_first(score: np.ndarray, n: int) -> np.ndarray:
    """Positions of the best ``n`` of ``score`` (whose rows are in ascending rid order), best first,
    ties to the lower position (the older memory): a partition picks the rows at or above the
    ``n``-th score, and only those are sorted."""
    if n <= 0:
        return np.zeros(0, np.int64)
    if n < len(score):
        nth = np.partition(score, len(score) - n)[len(score) - n]
        at = np.flatnonzero(score >= nth)
        return at[np.argsort(-score[at], kind="stable")][:n]
    return np.argsort(-score, kind="stable")


class _Checked:
    """``passing`` asked about each rid at most once, ``FILTER_CHUNK`` rids per call."""

    def __init__(self, passing: Callable[[list[int]], set[int]]) -> None:
        self._passing, self._known = passing, dict[int, bool]()

    def __call__(self, part: list[int]) -> set[int]:
        new = [r for r in part if r not in self._known]
        for lo in range(0, len(new), FILTER_CHUNK):
            chunk = new[lo : lo + FILTER_CHUNK]
            ok = self._passing(chunk)
            self._known.update((r, r in ok) for r in chunk)
        return {r for r in part if self._known[r]}


def _best(rids: np.ndarray, values: np.ndarray, check: _Checked | None) -> float:
    """The largest of ``values`` (≥ 0) among the rows that pass (``check``; None: all), 0 if none:
    the first that passes, best first, asked in growing steps (64 rows, then 4× more each time)."""
    if check is None:
        return float(values.max(initial=0))
    lo, step, scored = 0, 64, int(np.count_nonzero(values > 0))
    while lo < scored:
        hi = min(lo + step, scored)
        part = _best_first(values, hi)[lo:]
        ok = check(rids[part].tolist())
        for i in part.tolist():
            if int(rids[i]) in ok:
                return float(values[i])
        lo, step = hi, min(4 * step, FILTER_CHUNK)
    return 0.0


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
