"""An in-process int8 copy of a PostgreSQL store's vectors, to rank large searches in milliseconds.

Why: pgvector 0.6's exact scan is a scalar float loop plus tuple access per row, an order of
magnitude slower than an int8 pass over the same rows
(docs/postgres.md#measurements-behind-the-design). So a search over a large candidate set ranks
this copy first (``int8``, the engine of both backends: numkong's SIMD dot product), then asks
PostgreSQL for the exact scores of the best ``int8.RESCORE`` rows only (the float32 vectors never
leave the server, and the scores returned are pgvector's exact inner products). The top-k equals
the exact top-k unless a true top-k row ranks below ``RESCORE`` in int8 (recall@10 is measured by
``benchmarks/memory.py``). Small searches never come here (see ``postgres.py``).

Each row's code and scale are written by the writer in the same statement as its vector
(``int8.quantise``: the one quantiser of both backends), so a process loads a quarter of the
float32 vectors' size (docs/postgres.md#measurements-behind-the-design) and never quantises
anything itself.

**Kept in step by transaction ids, not row ids.** Row ids are drawn when a batch starts and
batches commit in any order, so "rows after the last row id seen" would miss some. Instead every
row carries ``tx`` (``pg_current_xact_id()`` of the transaction that last wrote it; indexed) and
every delete leaves a tombstone with its ``tx``. A refresh notes the current snapshot, then asks
for the rows and tombstones whose ``tx`` the previous snapshot did not see::

    tx >= xmin(previous) AND NOT pg_visible_in_snapshot(tx, previous)

Everything older than the previous snapshot's ``xmin`` was visible to it, so nothing is missed,
whatever the commit order; an idle store costs one index probe per search. A rewritten row (new
text or metadata) comes back as a new row: its old position dies. ``reset`` bumps ``epoch`` and
trimming tombstones raises ``pruned``: a copy older than either reloads.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hivemem.memory.storage import int8

Array = npt.NDArray[Any]

KEPT_TOMBSTONES = 100_000  # tombstones trimmed to this many; a copy further behind reloads
TRIM_EVERY = 1024  # the trim is tried when the tombstone count passes a multiple of this


@dataclass(frozen=True)
class View:
    """An immutable state of the copy, as of one snapshot."""

    rids: Array  # int64, positions in arrival order (not sorted)
    codes: Array  # (n, dim) int8
    scales: Array  # (n,) float32
    alive: Array  # (n,) bool
    live: int


class PgVectorIndex:
    """The copy for one schema (see the module docstring); thread-safe, one per storage object."""

    def __init__(self, ns: str, dim: int) -> None:
        self.ns = ns
        self.dim = dim
        self._lock = threading.Lock()
        self.reloads = 0  # full loads (the first one included)
        self._clear()

    def _clear(self) -> None:
        self._n = 0
        self._rids = np.empty(0, dtype=np.int64)
        self._codes = np.empty((0, self.dim), dtype=np.int8)
        self._scales = np.empty(0, dtype=np.float32)
        self._alive = np.empty(0, dtype=bool)
        self._pos: dict[int, int] = {}
        self._snap: str | None = None  # the snapshot this copy is complete for
        self._xmin = 0
        self._epoch: str | None = None
        self._view = self._make()

    def _make(self) -> View:
        n = self._n
        return View(self._rids[:n], self._codes[:n], self._scales[:n], self._alive[:n], len(self._pos))

    # -- search --------------------------------------------------------------------------------

    def search(self, conn: Any, query: Array, k: int, rescore: Callable[[list[int]], Any]) -> list[Any]:
        """The rows of the exact top-``k``: the copy brought up to date on ``conn``, its int8 best
        handed to ``rescore(rids)`` (the caller's statement: PostgreSQL scores those rows exactly,
        applies the filter, returns the best ``k``; a cursor).

        The refresh and the re-scoring of the best candidates of the copy as it was travel in one
        round trip; only when the copy changed are the candidates ranked and scored again. When
        fewer than ``k`` of them pass the filter, more candidates (×8 each time, at last all).
        """
        first = int8.rescore_count(k)

        def score(view: View, count: int) -> Any:
            return rescore(rank(view, query, count).tolist())

        view, changed, early = self.refresh(conn, lambda old: score(old, first))
        rows: list[Any] = (
            early.fetchall() if early is not None and not changed else score(view, first).fetchall()
        )
        for count in itertools.islice(int8.widening(first, view.live, 8), 1, None):
            if len(rows) >= k:  # k rows passed among the best: the top-k (as exact as the int8 pass)
                break
            rows = score(view, count).fetchall()
        return rows

    # -- refresh -------------------------------------------------------------------------------

    def refresh(self, conn: Any, then: Callable[[View], Any] | None = None) -> tuple[View, bool, Any]:
        """Bring the copy up to date on ``conn`` (autocommit) → ``(view, changed, extra)``.

        One round trip when nothing or a few rows changed: the state query and both change
        queries are pipelined (the change queries run after the state query, so they may return
        rows the new snapshot already covers: applying a row twice is harmless). ``then(view)``
        may queue more statements in the same round trip, computed from the copy as it was
        (``extra`` is what it returns): when nothing changed (``changed`` False), they saw the
        same state as a fresh copy would, and the search needs no second round trip.
        """
        ns = self.ns
        with self._lock:
            prev, xmin, old = self._snap, str(self._xmin), self._view
            extra = None
            with conn.pipeline():
                state = conn.execute(
                    "SELECT pg_current_snapshot()::text, pg_snapshot_xmin(pg_current_snapshot())::text,"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'epoch'),"
                    f" (SELECT value FROM {ns}.meta WHERE key = 'pruned')"
                )
                if prev is not None:
                    rows = conn.cursor(binary=True).execute(
                        f"SELECT rid, code, scale FROM {ns}.memories WHERE tx >= %s::text::xid8"
                        " AND NOT pg_visible_in_snapshot(tx, %s::pg_snapshot)",
                        (xmin, prev),
                    )
                    gone = conn.execute(
                        f"SELECT rid FROM {ns}.tombstones WHERE tx >= %s::text::xid8"
                        " AND NOT pg_visible_in_snapshot(tx, %s::pg_snapshot)",
                        (xmin, prev),
                    )
                    if then is not None:
                        extra = then(old)
                snap, new_xmin, epoch, pruned = state.fetchone()
            if prev is None or epoch != self._epoch or int(pruned) >= self._xmin:
                self._clear()
                self.reloads += 1
                cur = conn.cursor(binary=True)
                cur.execute(f"SELECT rid, code, scale FROM {ns}.memories")
                self._apply(cur.fetchall(), [])
                changed = True
            else:
                new, dead = rows.fetchall(), [r[0] for r in gone.fetchall()]
                changed = bool(new or dead)
                self._apply(new, dead)
            self._snap, self._xmin, self._epoch = snap, int(new_xmin), epoch
            if self._n - len(self._pos) > max(1024, self._n // 8):
                self._compact()
            if changed:
                self._view = self._make()
            return self._view, changed, extra

    def _apply(self, rows: list[tuple[int, bytes, float]], gone: list[int]) -> None:
        """New or rewritten rows are appended (a rewritten row's old position dies), then
        tombstoned rows die. Old views keep their arrays: appends go past their end, and the
        alive mask is copied before it is changed."""
        dead = [self._pos.pop(r) for r in gone if r in self._pos]
        dead += [self._pos[r] for r, _, _ in rows if r in self._pos]
        if dead:
            self._alive = self._alive.copy()
            self._alive[dead] = False
        if not rows:
            return
        need = self._n + len(rows)
        if need > len(self._rids):
            cap = max(need, int(len(self._rids) * 1.5), 1024)
            self._rids = _grow(self._rids, cap, self._n)
            self._codes = _grow(self._codes, cap, self._n)
            self._scales = _grow(self._scales, cap, self._n)
            self._alive = _grow(self._alive, cap, self._n)
        at = self._n
        self._rids[at:need] = [r[0] for r in rows]
        self._codes[at:need] = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.int8).reshape(
            -1, self.dim
        )
        self._scales[at:need] = [r[2] for r in rows]
        self._alive[at:need] = True
        for i, r in enumerate(rows):
            self._pos[r[0]] = at + i
        self._n = need

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[: self._n])
        self._rids, self._codes = self._rids[keep], self._codes[keep]
        self._scales, self._alive = self._scales[keep], np.ones(len(keep), dtype=bool)
        self._n = len(keep)
        self._pos = {int(r): i for i, r in enumerate(self._rids)}


def _grow(a: Array, cap: int, n: int) -> Array:
    out = np.empty((cap, *a.shape[1:]), dtype=a.dtype)
    out[:n] = a[:n]
    return out


def rank(view: View, query: Array, count: int) -> Array:
    """Row ids of the ``count`` live rows with the highest int8 inner product, best first."""
    approx = int8.scores(int8.quantise_query(query), view.codes, view.scales)
    approx[~view.alive] = -np.inf
    return view.rids[int8.best(approx, count)]
