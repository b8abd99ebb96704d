"""``pgkeyword``'s per-process row lists (``Postings``): the rows holding a word, kept exact by
the store's transaction ids, so that large keyword searches skip GIN's heap visits."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

MAX_CACHED = 2_000_000  # row ids a process keeps in ``Postings`` (16 MB)
MAX_CHANGES = 5_000  # rows changed since the last search above which ``Postings`` starts afresh


def int8s(packed: bytes | None) -> np.ndarray:
    return np.frombuffer(packed or b"", dtype=">i8").astype(np.int64)


class Entry:
    """The rows holding one lexeme: of a scope (``ok`` None), or of the whole store with ``ok``
    saying which of them are in the scope."""

    __slots__ = ("ok", "rids")

    def __init__(self, rids: np.ndarray, ok: np.ndarray | None) -> None:
        self.rids, self.ok = rids, ok

    def passing(self) -> np.ndarray:
        return self.rids if self.ok is None else self.rids[self.ok]


class Postings:
    """Per process: the rows holding a word, for the words that large searches ranked by, kept
    in step with the store as ``pgindex``'s copy is (by transaction ids, see there).

    Why: a word's rows come out of GIN as heap addresses, and each costs a heap visit to become a row
    id; a search over 100,000 memories in one scope reads up to ``RANK_BUDGET`` of them, where
    SQLite's FTS5 reads its row ids from the index (docs/postgres.md#measurements-behind-the-design).
    The same common words come back query after query, so their rows are kept here (at most
    ``MAX_CACHED`` row ids, least recently used first out), keyed by (scope, lexeme).

    Exact, not approximate: before it is used, one round trip brings the rows written and the
    tombstones left since the last one (their words from ``words``), and each kept list drops
    the changed rows and takes back those that hold its lexeme and are in its scope. A
    ``reset`` (``epoch``), trimmed tombstones (``pruned``) or more than ``MAX_CHANGES`` changes
    empty it. Only searches whose filter is nothing but user/agent/run equalities use it: those
    columns never change, so a row's place in a scope never does either (a metadata change
    writes no ``tx``). ``Memory``'s "not expired" test may join them: an expiry change writes
    no ``tx`` either, so the lists stay the scope's and the rows it leaves out are read apart
    (one range of the ``expires_at`` index) and taken out of them at each search.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.column = "words"  # the lexemes kept lists are made of (``KeywordSearch.column``)
        self._lock = threading.Lock()
        self._snap: str | None = None
        self._xmin = 0
        self._epoch: str | None = None
        self._entries: OrderedDict[tuple[Any, ...], Entry] = OrderedDict()
        self._by_lexeme: dict[str, set[tuple[Any, ...]]] = {}
        self._total = 0
        self.lexemes: dict[str, str | None] = {}  # word → its one lexeme (None: a phrase, not kept)
        self.dropped = 0  # times the whole cache was emptied (a reset, or too many changes)
        self.generation = 0  # refreshes so far: a list read before the latest one is not kept

    def _clear(self) -> None:
        if self._entries:
            self.dropped += 1
        self._entries.clear()
        self._by_lexeme.clear()
        self._total = 0

    def refresh(self, conn: Any) -> tuple[int, int]:
        """Bring the cache up to the current snapshot of ``conn`` → ``(the store's highest row
        id, generation)``; lists read after this, for ``put``, carry the generation."""
        ns = self.ns
        with self._lock:
            prev, xmin = self._snap, str(self._xmin)
            with conn.pipeline():
                state = conn.execute(
                    "SELECT pg_current_snapshot()::text, pg_snapshot_xmin(pg_current_snapshot())::text,"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'epoch'),"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'pruned'),"
                    f" (SELECT coalesce(max(rid), 0) FROM {ns}.memories)"
                )
                if prev is not None and self._entries:
                    rows = conn.execute(
                        f"SELECT rid, user_id, agent_id, run_id, tsvector_to_array({self.column})"
                        f" FROM {ns}.memories"
                        " WHERE tx >= %s::text::xid8 AND NOT pg_visible_in_snapshot(tx, %s::pg_snapshot)"
                        " ORDER BY tx LIMIT %s",  # ORDER BY: the tx index, whatever the statistics say
                        (xmin, prev, MAX_CHANGES + 1),
                    )
                    gone = conn.execute(
                        f"SELECT rid FROM {ns}.tombstones WHERE tx >= %s::text::xid8"
                        " AND NOT pg_visible_in_snapshot(tx, %s::pg_snapshot) ORDER BY tx LIMIT %s",
                        (xmin, prev, MAX_CHANGES + 1),
                    )
                snap, new_xmin, epoch, pruned, size = state.fetchone()
            if prev is None or epoch != self._epoch or int(pruned) >= self._xmin:
                self._clear()
            elif self._entries:
                new, dead = rows.fetchall(), [r[0] for r in gone.fetchall()]
                if len(new) > MAX_CHANGES or len(dead) > MAX_CHANGES:
                    self._clear()
                elif new or dead:
                    self._apply(new, dead)
            self._snap, self._xmin, self._epoch = snap, int(new_xmin), epoch
            self.generation += 1
            return int(size), self.generation

    def _apply(self, new: list[tuple[Any, ...]], dead: list[int]) -> None:
        """Changed rows leave every list, then join the lists of their lexemes (in scope)."""
        out = np.array(sorted({*dead, *(r[0] for r in new)}), dtype=np.int64)
        for entry in self._entries.values():
            keep = ~np.isin(entry.rids, out)
            if not keep.all():
                self._total -= int((~keep).sum())
                entry.rids = entry.rids[keep]
                entry.ok = None if entry.ok is None else entry.ok[keep]
        added: dict[tuple[Any, ...], list[tuple[int, bool]]] = {}
        for rid, user_id, agent_id, run_id, lexemes in new:
            values = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
            for lexeme in lexemes or ():
                for key in self._by_lexeme.get(lexeme, ()):
                    inside = all(values[f] == v for f, v in key[1])
                    if inside or not key[0]:  # a scope's list holds its rows only
                        added.setdefault(key, []).append((rid, inside))
        for key, rows in added.items():
            entry = self._entries[key]
            entry.rids = np.concatenate([entry.rids, np.array([r for r, _ in rows], dtype=np.int64)])
            if entry.ok is not None:
                entry.ok = np.concatenate([entry.ok, np.array([ok for _, ok in rows], dtype=bool)])
            self._total += len(rows)

    def get(self, key: tuple[Any, ...]) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[Any, ...], entry: Entry, generation: int) -> None:
        """Keep ``entry``, read at (or after) the snapshot of the refresh that returned
        ``generation``, unless another refresh came since (the changes it applied to the other
        lists would be missing from this one)."""
        with self._lock:
            if generation != self.generation or key in self._entries or len(entry.rids) > MAX_CACHED // 4:
                return
            self._entries[key] = entry
            self._by_lexeme.setdefault(key[2], set()).add(key)
            self._total += len(entry.rids)
            while self._total > MAX_CACHED:
                old, gone = self._entries.popitem(last=False)
                self._by_lexeme[old[2]].discard(old)
                self._total -= len(gone.rids)
