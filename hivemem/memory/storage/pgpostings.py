"""``pgkeyword``'s per-process row lists (``Postings``): the rows holding a word, and the rows
whose keyword-context window holds it, kept exact by the store's transaction ids, so that large
keyword searches skip GIN's heap visits."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from hivemem.memory.storage import pgdates

MAX_CACHED = 2_000_000  # row ids a process keeps in ``Postings`` (16 MB), both kinds of list together
MAX_CHANGES = 5_000  # rows changed since the last search above which ``Postings`` starts afresh


def int8s(packed: bytes | None) -> np.ndarray:
    return np.frombuffer(packed or b"", dtype=">i8").astype(np.int64)


def lexeme_of(query: str) -> str | None:
    """The one lexeme of a word's ``tsquery`` text (``'kite'``): a list's key; None for a phrase."""
    return query[1:-1] if query.count("'") == 2 and query[0] == query[-1] == "'" else None


class Entry:
    """The rows holding one lexeme: of a scope (``ok`` None), or of the whole store with ``ok``
    saying which of them are in the scope."""

    __slots__ = ("ok", "rids")

    def __init__(self, rids: np.ndarray, ok: np.ndarray | None) -> None:
        self.rids, self.ok = rids, ok

    def passing(self) -> np.ndarray:
        return self.rids if self.ok is None else self.rids[self.ok]


class _Lists:
    """One kind of list (the memories' words, or their windows'), keyed by (scoped, pairs, lexeme)."""

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self.by_lexeme: dict[str, set[tuple[Any, ...]]] = {}
        self.total = 0

    def clear(self) -> None:
        self.entries.clear()
        self.by_lexeme.clear()
        self.total = 0

    def apply(self, new: list[tuple[Any, ...]], dead: list[int]) -> None:
        """Changed rows leave every list, then join the lists of their lexemes (in scope)."""
        out = np.array(sorted({*dead, *(r[0] for r in new)}), dtype=np.int64)
        for entry in self.entries.values():
            keep = ~np.isin(entry.rids, out)
            if not keep.all():
                self.total -= int((~keep).sum())
                entry.rids = entry.rids[keep]
                entry.ok = None if entry.ok is None else entry.ok[keep]
        added: dict[tuple[Any, ...], list[tuple[int, bool]]] = {}
        for rid, user_id, agent_id, run_id, lexemes in new:
            values = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
            for lexeme in lexemes or ():
                for key in self.by_lexeme.get(lexeme, ()):
                    inside = all(values[f] == v for f, v in key[1])
                    if inside or not key[0]:  # a scope's list holds its rows only
                        added.setdefault(key, []).append((rid, inside))
        for key, rows in added.items():
            entry = self.entries[key]
            entry.rids = np.concatenate([entry.rids, np.array([r for r, _ in rows], dtype=np.int64)])
            if entry.ok is not None:
                entry.ok = np.concatenate([entry.ok, np.array([ok for _, ok in rows], dtype=bool)])
            self.total += len(rows)

    def evict(self) -> None:
        old, gone = self.entries.popitem(last=False)
        self.by_lexeme[old[2]].discard(old)
        self.total -= len(gone.rids)


class Postings:
    """Per process: the rows holding a word (and, for the keyword context, the rows whose window
    holds it: ``window=True``), for the words that large searches ranked by, kept in step with
    the store as ``pgindex``'s copy is (by transaction ids, see there).

    Why: a word's rows come out of GIN as heap addresses, and each costs a heap visit to become a row
    id; a search over 100,000 memories in one scope reads up to ``RANK_BUDGET`` of them, where
    SQLite's FTS5 reads its row ids from the index (docs/postgres.md#measurements-behind-the-design).
    The same common words come back query after query, so their rows are kept here (at most
    ``MAX_CACHED`` row ids, least recently used first out), keyed by (scope, lexeme).

    Exact, not approximate: before it is used, one round trip brings the rows written and the
    tombstones left since the last one (their words from ``words``), and each kept list drops
    the changed rows and takes back those that hold its lexeme and are in its scope. A window
    row (``memories_ctx``) carries the ``tx`` of the transaction that last wrote it: the
    triggers rewrite it whenever its window changes (a neighbour added, changed or deleted),
    so window lists follow the same way (the row's own ``xmin`` says as much, but a system
    column cannot be indexed: each refresh would read the whole table). A ``reset``
    (``epoch``), trimmed tombstones (``pruned``) or more than ``MAX_CHANGES`` changes empty it.
    A list is used only at a snapshot that sees all the previous one saw (``refresh``'s
    generation 0 otherwise: inside an older ``snapshot()`` transaction). A search without the
    keyword context uses the lists only when its filter is nothing but user/agent/run equalities
    (one with it checks any filter on its best rows apart, ``fts.rank``): those columns never
    change, so a row's place in a scope never does either (a metadata change writes no ``tx``). ``Memory``'s
    "not expired" test may join them: an expiry change writes no ``tx`` either, so the lists
    stay the scope's and the rows it leaves out are read apart (one range of the ``expires_at``
    index) and taken out of them at each search.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.column = "words"  # the lexemes kept lists are made of (``KeywordSearch.column``)
        self._lock = threading.Lock()
        self._snap: str | None = None
        self._xmin = 0
        self._epoch: str | None = None
        self._parts = (_Lists(), _Lists())  # the memories' words, their windows'
        self._entries = self._parts[0].entries  # (the body's lists, as the tests read them)
        self._windows = self._parts[1].entries
        self.lexemes: dict[str, str | None] = {}  # word → its one lexeme (None: a phrase, not kept)
        self.dropped = 0  # times the whole cache was emptied (a reset, or too many changes)
        self.generation = 0  # refreshes so far: a list read before the latest one is not kept

    def _clear(self, parts: tuple[_Lists, ...] | None = None) -> None:
        for part in parts or self._parts:
            if part.entries:
                self.dropped += 1
            part.clear()

    def refresh(self, conn: Any) -> tuple[int, int, str | None]:
        """Bring the cache up to the current snapshot of ``conn`` → ``(the store's highest row
        id, generation, the keyword_dates state: pgdates.state)``; lists read after this, for
        ``put``, carry the generation. Generation 0: the snapshot misses something the cache's
        saw (an older ``snapshot()`` transaction): nothing is changed, and the lists must not be
        used. (A state that names another column than ``column``: the caller drops this cache.)"""
        ns = self.ns
        body, windows = self._parts
        with self._lock:
            prev, xmin = self._snap, str(self._xmin)
            since = "{0}tx >= %s::text::xid8 AND NOT pg_visible_in_snapshot({0}tx, %s::pg_snapshot)"
            with conn.pipeline():
                state = conn.execute(
                    "SELECT pg_current_snapshot()::text, pg_snapshot_xmin(pg_current_snapshot())::text,"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'epoch'),"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'pruned'),"
                    f" (SELECT coalesce(max(rid), 0) FROM {ns}.memories), {pgdates.state(ns)},"
                    # behind: a transaction the previous snapshot saw is not seen by this one
                    " %s::pg_snapshot IS NOT NULL AND (pg_snapshot_xmax(pg_current_snapshot())"
                    " < pg_snapshot_xmax(%s::pg_snapshot) OR EXISTS (SELECT 1 FROM pg_snapshot_xip("
                    "pg_current_snapshot()) x WHERE pg_visible_in_snapshot(x, %s::pg_snapshot)))",
                    (prev, prev, prev),
                )
                rows = ctx = gone = None
                if prev is not None and (body.entries or windows.entries):
                    gone = conn.execute(
                        f"SELECT rid FROM {ns}.tombstones WHERE {since.format('')} ORDER BY tx LIMIT %s",
                        (xmin, prev, MAX_CHANGES + 1),
                    )
                if prev is not None and body.entries:
                    rows = conn.execute(
                        f"SELECT rid, user_id, agent_id, run_id, tsvector_to_array({self.column})"
                        f" FROM {ns}.memories"
                        # ORDER BY: the tx index, whatever the statistics say
                        f" WHERE {since.format('')} ORDER BY tx LIMIT %s",
                        (xmin, prev, MAX_CHANGES + 1),
                    )
                if prev is not None and windows.entries:
                    ctx = conn.execute(
                        "SELECT c.rid, m.user_id, m.agent_id, m.run_id, tsvector_to_array(c.words)"
                        f" FROM {ns}.memories_ctx c JOIN {ns}.memories m USING (rid)"
                        f" WHERE {since.format('c.')} ORDER BY c.tx LIMIT %s",
                        (xmin, prev, MAX_CHANGES + 1),
                    )
                snap, new_xmin, epoch, pruned, size, dates, behind = state.fetchone()
            if behind:
                return int(size), 0, dates
            if prev is None or epoch != self._epoch or int(pruned) >= self._xmin:
                self._clear()
            elif gone is not None:
                dead = [r[0] for r in gone.fetchall()]
                for part, changed in ((body, rows), (windows, ctx)):
                    new = [] if changed is None else changed.fetchall()
                    if len(new) > MAX_CHANGES or len(dead) > MAX_CHANGES:
                        self._clear((part,))
                    elif part.entries and (new or dead):
                        part.apply(new, dead)
            self._snap, self._xmin, self._epoch = snap, int(new_xmin), epoch
            self.generation += 1
            return int(size), self.generation, dates

    def get(self, key: tuple[Any, ...], window: bool = False) -> Entry | None:
        with self._lock:
            part = self._parts[window]
            entry = part.entries.get(key)
            if entry is not None:
                part.entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: Entry, generation: int, window: bool = False) -> None:
        """Keep ``entry``, read at (or after) the snapshot of the refresh that returned
        ``generation``, unless another refresh came since (the changes it applied to the other
        lists would be missing from this one)."""
        with self._lock:
            part = self._parts[window]
            if generation != self.generation or key in part.entries or len(entry.rids) > MAX_CACHED // 4:
                return
            part.entries[key] = entry
            part.by_lexeme.setdefault(key[2], set()).add(key)
            part.total += len(entry.rids)
            while sum(p.total for p in self._parts) > MAX_CACHED:
                max(self._parts, key=lambda p: p.total).evict()
