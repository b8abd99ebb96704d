"""The keyword side of PostgreSQL search: a generated ``tsvector`` column ranked by SQLite's BM25.

The contract is ``base.Storage.keyword_search``; the aim is SQLite's result (``fts.py``) on the
same rows, so that hybrid search ranks alike on both backends:

* **Same transaction, any writer.** ``words`` is a ``STORED`` generated column of ``memories``
  with a GIN index: the server computes it in the very statement that inserts or rewrites a row,
  whichever client (or version of hivemem) wrote it.
* **Words as SQLite's tokenizer sees them** (``unicode61 remove_diacritics 2``), whatever the
  database's locale. ``hm_words(text)`` lower-cases (``hm_lower``: Python's ``str.lower``, see
  ``pglower``), decomposes (NFD) and drops combining marks, and turns every run of characters
  that are not letters or digits (Python's ``isalnum``; ``_`` included) into one space; ASCII
  text takes a short path with the same result. Only then does PostgreSQL's parser see the text:
  plain words and numbers. Without this step its parser reads ``jane@example.com`` and
  ``example.com/a`` as single tokens (a search for ``jane`` or ``example`` misses them) and,
  under the ``C`` locale, takes every non-ASCII character for a letter (``don’t`` was one word).
* **Stemming**: the ``hm_english`` configuration of the store's schema maps words to a Snowball
  English dictionary *without* stop words (``english`` is the same stemmer with PostgreSQL's stop
  list; the query's stop words are dropped by ``hybrid.query_terms``, as for SQLite). Snowball
  English is Porter's revision of the Porter stemmer that SQLite's ``porter`` implements; the
  two disagree on some words, which is most of what separates the backends' keyword results
  (measured on LoCoMo: docs/postgres.md#hybrid-search).
* **Hostile text is never syntax.** The query words travel as one ``text[]`` parameter; each
  goes through ``hm_words`` and ``phraseto_tsquery``, which reads no operators (a word that
  ``hm_words`` splits, ``foo_bar``, becomes the phrase ``foo <-> bar``, as FTS5 reads
  ``"foo_bar"``).
* **Scoring: SQLite's.** A memory scores the sum of the idf ``ln(1 + (N - df + 0.5) / (df +
  0.5))`` of the query words it holds, where ``N`` counts the rows of the scope searched (the
  user/agent/run equalities at the top of the filter) and ``df`` those of them holding the word.
  Each row's ``words`` also holds one lexeme per scope value (``_u`` + the hex of its UTF-8
  bytes; text never yields one), so GIN finds "rows of this scope holding this word" by
  intersecting two lists, as FTS5 does. The filter is evaluated on each row found (the heap tuple
  is at hand), so the best ``k`` are the best that pass.
* **The same cost budget as SQLite** (``fts.RANK_BUDGET``, ``fts.SCOPE_ROWS_MAX``): a scope of
  more than ``SCOPE_ROWS_MAX`` rows (or none) is searched with the statistics of the whole store
  (``N`` = the highest row id present, ``max(rid)``, as SQLite's: ``fts``), and when the words'
  rows would exceed the budget, the rarest words are kept while their rows fit
  (``KeywordSearch._plan``). A search in a small scope is
  one statement (it counts the scope and skips the matching when that is too large) and scores
  in SQL; a large one reads each kept word's rows (``Postings``: kept per process) and scores
  them in numpy exactly as ``fts.py`` does, so equal inputs give equal scores.
* **Date words** (``keyword_dates``): the store's ``dated`` column (``pgdates``) is searched in
  place of ``words`` (``KeywordSearch.column``) while the option is on. Each search reads the
  option in a statement it makes anyway (the first one, or ``Postings.refresh``); when it changed
  (another process turned it on or off), the column follows, the kept lists and counts are
  dropped, and the search starts again: every open process searches as a fresh one would.
* **Text limit**: the first ``MAX_INDEXED_CHARS`` characters of ``hm_words(memory)`` are indexed
  (a ``tsvector`` holds at most 1 MB); SQLite indexes all of it.

``pgwords`` creates the function, configuration, column and index; ``postgres.py`` calls it only
when the store's ``meta`` says the keyword layout is missing or older.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.storage import pgdates
from hivemem.memory.storage.fts import RANK_BUDGET, SCOPE_ROWS_MAX, Parts, bm25, rank, rarest_words
from hivemem.memory.storage.pgpostings import Entry, Postings, int8s, lexeme_of
from hivemem.memory.storage.pgwords import PREFIX, SCOPE_FIELDS, config
from hivemem.memory.storage.sqlcompile import is_unexpired

SAMPLE_FROM = 20_000  # rows above which word counts are estimated from a sample (``_plan``)
SAMPLE_ROWS = 1_000
_TABLE_BYTES = 1 << 20  # ``_alive``: a lookup table of up to this many bytes (+16 per expired id)


class Scope:
    """The user/agent/run equalities at the top of a filter (every match must hold them): as
    SQL on the columns (``sql``, ``params``) and as scope lexemes (``query``, a ``tsquery``).
    ``expiry``/``bound``: the filter has ``Memory``'s "not expired" test at its top, its bound."""

    def __init__(self, where: Node | None) -> None:
        top = where.items if isinstance(where, Logic) and where.kind == "AND" else (where,)
        conds = [
            (c.field, c.value)
            for c in top
            if isinstance(c, Cond) and c.op == "eq" and c.field in SCOPE_FIELDS and isinstance(c.value, str)
        ]
        cuts = [c for c in top if is_unexpired(c)]
        self.expiry = len(cuts) == 1
        self.bound: str | None = cuts[0].value if self.expiry and isinstance(cuts[0], Cond) else None
        self.sql = " AND ".join(f"{f} = %s" for f, _ in conds) or "true"
        self.params = [v for _, v in conds]
        self.pairs = tuple(conds)
        # the filter is these equalities (and the expiry test, applied to the cached lists apart)
        self.only = (len(conds) + len(cuts) == len(top) and len(cuts) <= 1) or where is None
        prefix = dict(zip(SCOPE_FIELDS, PREFIX, strict=True))
        # hex digits and the prefix only: nothing in it is tsquery syntax
        self.query = " & ".join(f"'{prefix[f]}{v.encode('utf-8').hex()}'" for f, v in conds)


def _alive(expired: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """``rids`` → which of them are not in ``expired`` (None: nothing is), by a lookup table over
    the expired row ids: one pass per list, where ``np.isin`` sorted both arrays for each one
    (docs/memory.md, "Batch update and expiration"). The table takes a byte per row id up to the
    highest expired one: where that is far more than the expired ids (a few expired rows in a
    store of 10⁸ row ids: 100 MB a search), a binary search in them instead."""
    if expired is None or not len(expired):
        return None
    top = int(expired.max())
    if top >= _TABLE_BYTES + 16 * len(expired):
        dead = np.unique(expired)  # sorted
        last = len(dead) - 1
        return lambda rids: dead[np.minimum(np.searchsorted(dead, rids), last)] != rids
    table = np.zeros(top + 1, dtype=bool)
    table[expired] = True
    return lambda rids: (rids > top) | ~table[np.minimum(rids, top)]


def _rank(words: list[tuple[int, np.ndarray]], rows: float, k: int) -> list[tuple[int, float]]:
    """The best ``k`` ``(rid, score)``: ``words`` holds, per word, the rows of the scope holding it
    (``df``) and the row ids among them that pass the filter; scored by ``fts.bm25``."""
    rids, score = bm25(words, rows)
    order = np.lexsort((rids, -score))[:k]  # best first; ties to the older memory
    return list(zip(rids[order].tolist(), score[order].tolist(), strict=True))


class KeywordSearch:
    """Per-storage helper: the statements, and the row counts cached while the store keeps its size."""

    def __init__(self, ns: str, fields: str) -> None:
        self.ns = ns
        self._column = "words"  # the body's lexemes: ``words``, or ``dated`` (``pgdates``)
        self.fields = fields
        self._cfg = config(ns)
        self._counts: OrderedDict[tuple[Any, ...], tuple[int, int, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = 0  # the store's highest row id when last seen
        self.postings = Postings(ns)

    @property
    def column(self) -> str:
        return self._column

    @column.setter
    def column(self, name: str) -> None:
        """Search ``name`` (``words`` or ``dated``) from now on; the lists and counts kept of the
        other go."""
        with self._lock:
            if name != self._column:
                postings = Postings(self.ns)
                postings.column = name
                self._column, self.postings = name, postings
                self._counts.clear()

    def follow(self, dates: str | None) -> bool:
        """Search the column the store's ``keyword_dates`` state names (``pgdates.state``, read by
        the caller's statement) → whether it changed (the caller's search starts again)."""
        name = pgdates.column(dates)
        if name == self._column:
            return False
        self.column = name
        return True

    def _state(self, conn: Any) -> None:
        """Follow the store's ``keyword_dates`` state, read alone (a large search that made no
        statement reading it yet: one round trip among its several)."""
        self.follow(conn.execute(f"SELECT {pgdates.state(self.ns)}").fetchone()[0])

    # -- counts ----------------------------------------------------------------------------------

    def _cached(self, key: tuple[Any, ...], size: int) -> tuple[int, bool] | None:
        """``(count, at_least)`` counted while the store was within 10% of ``size``; ``at_least``:
        the count stopped there, the true one may be higher."""
        with self._lock:
            hit = self._counts.get(key)
        if hit is not None and abs(hit[1] - size) * 10 <= hit[1]:
            return hit[0], hit[2]
        return None

    def _remember(self, key: tuple[Any, ...], count: int, size: int, at_least: bool = False) -> None:
        with self._lock:
            self._counts[key] = (count, size, at_least)
            self._counts.move_to_end(key)
            while len(self._counts) > 4096:
                self._counts.popitem(last=False)

    def _match(self, scoped: bool, guard: str, n: str, filter_sql: str) -> str:
        """CTEs: ``t`` the words as ``tsquery`` (``guard``: a condition that skips the rest),
        ``h`` the rows holding each (with the scope's lexemes when ``scoped``: GIN intersects
        the two lists, as FTS5 does SQLite's) and whether they pass the filter, ``w`` each
        word's idf (``n``: the rows of the scope), ``s`` the best ``k`` rows that pass. A row's
        idfs are summed in the query's word order (``ORDER BY i``), as ``fts.bm25`` sums them:
        float addition is not associative, and the order a plan's hash join and aggregate gave
        changed with the plan (a prepared statement's, or after ``ANALYZE``), so the same search
        on the same rows scored, and tied, differently from one run to the next."""
        within = "(%s::tsquery && t.q)" if scoped else "t.q"
        return (
            f"t AS MATERIALIZED (SELECT i, phraseto_tsquery({self._cfg}, {self.ns}.hm_words(w)) AS q"
            f" FROM unnest(%s::text[]) WITH ORDINALITY AS t(w, i){guard}),"
            " h AS MATERIALIZED (SELECT t.i, m.rid, m.ok FROM t CROSS JOIN LATERAL"
            f" (SELECT rid, coalesce({filter_sql}, false) AS ok FROM {self.ns}.memories"
            f" WHERE {self.column} @@ {within}) m),"
            f" w AS MATERIALIZED (SELECT h.i, ln(1 + (greatest({n}, count(*)) - count(*) + 0.5::float8)"
            " / (count(*) + 0.5::float8)) AS idf FROM h GROUP BY h.i),"
            " s AS (SELECT h.rid, sum(w.idf ORDER BY i) AS score FROM h JOIN w USING (i)"
            " WHERE h.ok GROUP BY h.rid ORDER BY score DESC, h.rid LIMIT %s)"
        )

    def _result(self) -> str:
        """The records of ``s``, best first, after the columns before ``r.*``; one row of NULLs
        when there are none."""
        return (
            f" LEFT JOIN LATERAL (SELECT {self.fields}, s.score FROM s JOIN {self.ns}.memories USING (rid)) r"
            " ON true ORDER BY r.score DESC, r.rid"
        )

    # -- search ----------------------------------------------------------------------------------

    def search(
        self, conn: Any, terms: list[str], where: Node | None, sql: str, params: list[Any], k: int,
        again: bool = True,
    ) -> list[tuple[tuple[Any, ...], float]]:  # fmt: skip
        """``(row, relevance > 0)`` of the best ``k`` rows passing ``sql`` that hold a term
        (``again``: start again once if the store's ``keyword_dates`` state changed)."""
        ns, scope = self.ns, Scope(where)
        size = self._size
        scope_key = ("scope", scope.sql, tuple(scope.params))
        hit = self._cached(scope_key, size) if scope.query else None
        rows = hit[0] if hit is not None else None
        if rows is None:  # a small scope, as far as we know: count and match in one statement
            if scope.query:
                count = f"(SELECT count(*) FROM (SELECT 1 FROM {ns}.memories WHERE {scope.sql} LIMIT %s) x)"
                first = [*scope.params, SCOPE_ROWS_MAX + 1]
            else:
                count, first = f"(SELECT coalesce(max(rid), 0) FROM {ns}.memories)", []
            match = self._match(
                bool(scope.query), ", n WHERE n.rows <= %s AND n.rows * %s <= %s",
                "(SELECT rows FROM n)::float8", sql,
            )  # fmt: skip
            got = conn.execute(
                f"WITH n AS MATERIALIZED (SELECT (SELECT coalesce(max(rid), 0) FROM {ns}.memories) AS size,"
                f" {count} AS rows, {pgdates.state(ns)} AS dates), {match}"
                f" SELECT n.size, n.rows, n.dates, r.* FROM n{self._result()}",
                [*first, terms, SCOPE_ROWS_MAX, len(terms), RANK_BUDGET, *params,
                 *([scope.query] if scope.query else []), k],
            ).fetchall()  # fmt: skip
            size, rows = int(got[0][0]), int(got[0][1])
            self._size = size
            if self.follow(got[0][2]) and again:  # searched the other column: the state changed
                return self.search(conn, terms, where, sql, params, k, False)
            if rows <= SCOPE_ROWS_MAX and rows * len(terms) <= RANK_BUDGET:
                return [(r[3:-1], float(r[-1])) for r in got if r[3] is not None]
            if scope.query and rows > RANK_BUDGET:  # small counts change with every write
                self._remember(scope_key, rows, size, at_least=rows > SCOPE_ROWS_MAX)
        cache = self.postings if scope.only else None
        generation = 0
        expired: np.ndarray | None = None
        if cache is not None:  # brought up to date before it is read (and its size is current)
            size, generation, dates = cache.refresh(conn)
            self._size = size
            if self.follow(dates) and again:  # the lists are of the other column: start again
                return self.search(conn, terms, where, sql, params, k, False)
            # an older snapshot than the lists' (``Postings.refresh``), or the state changed again: from GIN
            if not generation or cache is not self.postings:
                cache = None
            elif scope.expiry:  # the rows the expiry test leaves out (an expiry change writes no tx)
                expired = self._expired(conn, scope.bound)
        elif hit is not None:  # no statement read the keyword_dates state yet
            self._state(conn)
        scoped = bool(scope.query)
        if rows > SCOPE_ROWS_MAX:  # the scope's lexeme list would be walked for every word
            scoped, rows = False, max(size, 1)

        alive = _alive(expired)

        def lists(words: list[str]) -> dict[str, tuple[int, np.ndarray]]:
            found = self._lists(conn, words, scoped, scope, sql, params, cache, generation, size)
            if alive is None:
                return found
            return {t: (df, rids[alive(rids)]) for t, (df, rids) in found.items()}

        kept = terms
        found: dict[str, tuple[int, np.ndarray]] = {}
        if rows * len(terms) > RANK_BUDGET:  # store-wide lists give the counts as they are read
            kept, found = self._plan(conn, terms, rows / max(size, rows, 1), size, None if scoped else lists)
        if not kept:
            return []
        found.update(lists([t for t in kept if t not in found]))
        # a few more than k: outside a snapshot a row may be deleted before its record is read
        best = _rank([found[t] for t in kept], float(rows), k + 8)
        if not best:
            return []
        records = conn.execute(
            f"SELECT {self.fields} FROM {ns}.memories WHERE rid = ANY(%s::bigint[])", ([r for r, _ in best],)
        ).fetchall()
        by_rid = {r[0]: r for r in records}
        return [(by_rid[r], score) for r, score in best if r in by_rid][:k]

    def search_context(
        self, conn: Any, terms: list[str], where: Node | None, sql: str, params: list[Any], k: int,
        share: float, always: bool, again: bool = True,
    ) -> tuple[list[tuple[tuple[Any, ...], float]], Parts]:  # fmt: skip
        """As ``search``, each memory's window (``pgcontext``) scored too, with ``share``, by
        SQLite's code (``fts.bm25``, ``fts.rank``): the body's and the windows' BM25 over the rows
        of the scope (of the store for a scope of more than ``SCOPE_ROWS_MAX``), each divided by
        its best, then the filter (``always``: none) on the best first. → the rows with their
        relevance, and each one's raw ``(body, window)`` scores by rid. A large search takes each
        kept word's body and window rows from ``Postings`` (kept per process, the windows followed
        by ``memories_ctx.tx``), the others from GIN in one statement: reading ~15,000 window rows
        through GIN, a heap visit each, made such a search ~13× one without the option
        (docs/memory.md#the-keyword-contexts-cost-2026-12-06). A small one never touches the
        lists (``Postings.refresh`` holds a per-process lock across its round trip): one
        statement reads the store's size, the scope's count and the ``keyword_dates`` state."""
        ns, scope = self.ns, Scope(where)
        scope_key = ("scope", scope.sql, tuple(scope.params))

        def large(rows: int) -> bool:  # as ``search``'s lists path
            return rows > SCOPE_ROWS_MAX or rows * len(terms) > RANK_BUDGET

        hit = self._cached(scope_key, self._size) if scope.query else None
        postings, generation = self.postings, -1  # -1: the lists not brought up to date
        if hit is not None or (not scope.query and large(self._size)):  # the lists will be read
            size, generation, dates = postings.refresh(conn)  # (the size, the state: same round trip)
            rows = size if hit is None else hit[0]
        else:
            count = "NULL"
            if scope.query:
                count = f"(SELECT count(*) FROM (SELECT 1 FROM {ns}.memories WHERE {scope.sql} LIMIT %s) x)"
            got = conn.execute(
                f"SELECT (SELECT coalesce(max(rid), 0) FROM {ns}.memories), {pgdates.state(ns)}, {count}",
                [*scope.params, SCOPE_ROWS_MAX + 1] if scope.query else [],
            ).fetchone()
            size, dates = int(got[0]), got[1]
            rows = size if got[2] is None else int(got[2])
            if scope.query and rows > RANK_BUDGET:  # small counts change with every write
                self._remember(scope_key, rows, size, at_least=rows > SCOPE_ROWS_MAX)
        self._size = size
        if self.follow(dates) and again:  # the store's keyword_dates state changed: start again
            return self.search_context(conn, terms, where, sql, params, k, share, always, False)
        if large(rows) and generation < 0:
            size, generation, dates = postings.refresh(conn)
            self._size = size
            if self.follow(dates) and again:
                return self.search_context(conn, terms, where, sql, params, k, share, always, False)
        # generation 0: an older snapshot; another object: the state changed again meanwhile
        cache = postings if large(rows) and generation > 0 and postings is self.postings else None
        scoped = bool(scope.query) and rows <= SCOPE_ROWS_MAX
        if not scoped:  # no scope, or one whose lexeme list would be walked for every word
            rows = size
        pairs = scope.pairs if scoped else ()  # a list's key: of the scope, or of the whole store
        read: dict[tuple[str, int], np.ndarray] = {}  # (word, 0 body / 1 window) → its rows

        def lists(body: list[str], windows: list[str]) -> dict[str, tuple[int, np.ndarray]]:
            """Read the body rows of ``body`` and the window rows of ``windows``: from ``cache``
            where it has them, the others in one statement (and kept in ``cache``)."""
            todo: dict[str, list[bool]] = {}  # word → whether its (body, window) rows are to be read
            for w in dict.fromkeys(body + windows):
                lexeme = cache.lexemes.get(w) if cache is not None else None
                for part, words in enumerate((body, windows)):
                    hit = (
                        cache.get((scoped, pairs, lexeme), bool(part))
                        if cache and lexeme and w in words
                        else None
                    )
                    if hit is not None:
                        read[w, part] = hit.rids
                    elif w in words:
                        todo.setdefault(w, [False, False])[part] = True
            if todo:
                within = "(%s::tsquery && t.q)" if scoped else "t.q"
                one = "CASE WHEN t.{c} THEN (SELECT string_agg(int8send(rid), ''::bytea) FROM {table} WHERE"
                got = conn.execute(
                    f"WITH t AS MATERIALIZED (SELECT i, b, c, phraseto_tsquery({self._cfg}, {ns}.hm_words(w))"
                    " AS q FROM unnest(%s::text[], %s::bool[], %s::bool[]) WITH ORDINALITY AS t(w, b, c, i))"
                    f" SELECT t.q::text, {one.format(c='b', table=f'{ns}.memories')} {self.column}"
                    f" @@ {within}) END,"
                    f" {one.format(c='c', table=f'{ns}.memories_ctx')} words @@ {within}) END"
                    " FROM t ORDER BY t.i",
                    [list(todo), [b for b, _ in todo.values()], [c for _, c in todo.values()],
                     *([scope.query] * 2 if scoped else [])],
                ).fetchall()  # fmt: skip
                for (w, want), (query, *packed) in zip(todo.items(), got, strict=True):
                    lexeme = lexeme_of(query)
                    for part, rids in enumerate(packed):
                        if not want[part]:
                            continue
                        read[w, part] = int8s(rids)
                        if cache is not None and lexeme:
                            cache.put(
                                (scoped, pairs, lexeme), Entry(read[w, part], None), generation, bool(part)
                            )
                    if cache is not None:
                        cache.lexemes[w] = lexeme
            if not scoped:  # the rows of the store holding the word: its exact count
                for w in body:
                    self._remember(("word", w), len(read[w, 0]), size)
            return {w: (len(read[w, 0]), read[w, 0]) for w in body}

        kept = terms
        if rows * len(terms) > RANK_BUDGET:  # unscoped, the words' counts are their body rows: read
            plan = None if scoped else (lambda words: lists(words, []))
            kept, _ = self._plan(conn, terms, rows / max(size, rows, 1), size, plan)
        if not kept:
            return [], {}
        lists([t for t in kept if (t, 0) not in read], kept)
        body = bm25([(len(read[t, 0]), read[t, 0]) for t in kept], rows)
        ctx = bm25([(len(read[t, 1]), read[t, 1]) for t in kept], rows)

        def passing(part: list[int]) -> set[int]:
            """Each row fetched by ``rid``, then the filter: as ``postgres.rescore_sql`` (a plain
            ``rid = ANY(…) AND filter`` read the user's whole index entry: 5.6 ms at 100,000)."""
            found = conn.execute(
                f"SELECT m.rid FROM unnest(%s::bigint[]) AS c(r), LATERAL (SELECT * FROM {ns}.memories"
                f" WHERE rid = c.r OFFSET 0) m WHERE ({sql})",
                [part, *params],
            ).fetchall()
            return {int(r[0]) for r in found}

        best, parts = rank(body, ctx, share, k, None if always else passing)
        if not best:
            return [], {}
        records = conn.execute(
            f"SELECT {self.fields} FROM {ns}.memories WHERE rid = ANY(%s::bigint[])", ([r for r, _ in best],)
        ).fetchall()
        by_rid = {r[0]: r for r in records}  # outside a snapshot a row may be gone: left out
        return [(by_rid[r], score) for r, score in best if r in by_rid], parts

    def _lists(
        self,
        conn: Any,
        words: list[str],
        scoped: bool,
        scope: Scope,
        sql: str,
        params: list[Any],
        cache: Postings | None,
        generation: int,
        size: int,
    ) -> dict[str, tuple[int, np.ndarray]]:
        """Per word: its rows in the scope (``scoped``) or the store (``df``), and the row ids
        among them that pass the filter; from ``cache`` where it has them, else read in one
        statement (and kept in ``cache``; the filter read is then the scope's, as a list's)."""  # fmt: skip
        found: dict[str, tuple[int, np.ndarray]] = {}
        if cache is not None:
            sql, params = scope.sql, scope.params
            for t in words:
                lexeme = cache.lexemes.get(t)
                entry = cache.get((scoped, scope.pairs, lexeme)) if lexeme else None
                if entry is not None:
                    found[t] = (len(entry.rids), entry.passing())
        todo = [t for t in words if t not in found]
        if not todo:
            return found
        ns = self.ns
        within = "(%s::tsquery && t.q)" if scoped else "t.q"
        every = "string_agg(int8send(rid), ''::bytea)" if cache is not None else "NULL::bytea"
        got = conn.execute(
            f"WITH t AS MATERIALIZED (SELECT i, w, phraseto_tsquery({self._cfg}, {ns}.hm_words(w)) AS q"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS t(w, i))"
            " SELECT t.w, t.q::text, a.df, a.rids, a.passing FROM t CROSS JOIN LATERAL"
            f" (SELECT count(*) AS df, {every} AS rids,"
            " string_agg(int8send(rid), ''::bytea) FILTER (WHERE ok) AS passing"
            f" FROM (SELECT rid, coalesce({sql}, false) AS ok FROM {ns}.memories"
            f" WHERE {self.column} @@ {within}) m) a",
            [todo, *params, *([scope.query] if scoped else [])],
        ).fetchall()
        for word, query, df, every, passing in got:
            found[word] = (int(df), int8s(passing))
            if not scoped:  # the rows of the store holding the word: its exact count
                self._remember(("word", word), int(df), size)
            if cache is not None:
                lexeme = lexeme_of(query)
                cache.lexemes[word] = lexeme
                if lexeme:
                    rids = int8s(every)
                    ok = None if scoped else np.isin(rids, found[word][1])
                    cache.put((scoped, scope.pairs, lexeme), Entry(rids, ok), generation)
        return found

    def _expired(self, conn: Any, bound: str | None) -> np.ndarray:
        """The row ids that fail ``unexpired(bound)``: a two-sided range, which the planner of a
        table not yet analysed gives the ``expires_at`` index (``IS NOT NULL`` got a 28 ms scan at
        30k rows). ``records.instant`` texts start with a digit: all sort below ``'A'``."""
        sql = f"SELECT string_agg(int8send(rid), ''::bytea) FROM {self.ns}.memories WHERE expires_at >= ''"
        return int8s(
            conn.execute(sql + " AND expires_at < %s", ["A" if bound is None else bound]).fetchone()[0]
        )

    def _plan(
        self,
        conn: Any,
        terms: list[str],
        share: float,
        size: int,
        lists: Callable[[list[str]], dict[str, tuple[int, np.ndarray]]] | None = None,
    ) -> tuple[list[str], dict[str, tuple[int, np.ndarray]]]:
        """The words to rank by (``choose``), from their row counts in the whole store.

        Counting a word's rows costs a heap visit per row
        (docs/postgres.md#measurements-behind-the-design). A word with more rows than a kept word
        could have is left out whatever the others have, so a count stops there (with a margin for the
        store's growth), and in a store of more than ``SAMPLE_FROM`` rows one pass over a sample of
        ~``SAMPLE_ROWS`` rows (``TABLESAMPLE SYSTEM``, fixed seed) first finds the words with at least
        twice that many (and 10 rows in the sample): left out without counting. The others are counted
        exactly, so the words kept are SQLite's for the same counts (with the sample's estimates as
        counts, 66% of the top-10s at 100,000 memories in one scope were SQLite's, against 95% with
        exact counts). Counts are kept per process while the store stays within 10% of its size, as
        SQLite's are."""
        most = RANK_BUDGET / max(share, 1e-9)
        cap = int(most * 1.25) + 1
        counts: dict[str, int] = {}
        todo = []
        for t in terms:
            hit = self._cached(("word", t), size)
            if hit is not None and (not hit[1] or hit[0] > most):
                counts[t] = hit[0]
            else:
                todo.append(t)
        exact = todo
        if todo and size > SAMPLE_FROM:
            got = conn.execute(
                f"WITH t AS MATERIALIZED (SELECT w, phraseto_tsquery({self._cfg}, {self.ns}.hm_words(w)) AS q"
                f" FROM unnest(%s::text[]) AS t(w)), s AS MATERIALIZED (SELECT {self.column} AS words FROM"
                f" {self.ns}.memories TABLESAMPLE SYSTEM (%s) REPEATABLE (0))"
                " SELECT t.w, (SELECT count(*) FROM s), (SELECT count(*) FROM s WHERE s.words @@ t.q) FROM t",
                (todo, min(100.0, 100 * SAMPLE_ROWS / size)),
            ).fetchall()
            exact = []
            for t, sampled, hits in got:
                estimate = hits * size / max(sampled, 1)
                if hits >= 10 and estimate > 2 * most:  # far too common: left out uncounted
                    counts[t] = round(estimate)
                    self._remember(("word", t), counts[t], size, at_least=True)
                else:
                    exact.append(t)
        found: dict[str, tuple[int, np.ndarray]] = {}
        if exact and lists is not None:  # the rows of the store: read them, their number is the count
            found = lists(exact)
            counts.update({t: df for t, (df, _) in found.items()})
        elif exact:
            with conn.pipeline():
                curs = [
                    conn.execute(
                        f"SELECT count(*) FROM (SELECT 1 FROM {self.ns}.memories WHERE {self.column} @@"
                        f" phraseto_tsquery({self._cfg}, {self.ns}.hm_words(%s)) LIMIT %s) x",
                        (t, cap),
                    )
                    for t in exact
                ]
            for t, cur in zip(exact, curs, strict=True):
                counts[t] = int(cur.fetchone()[0])
                self._remember(("word", t), counts[t], size, at_least=counts[t] >= cap)
        return rarest_words([(c, t) for t, c in counts.items()], share), found
