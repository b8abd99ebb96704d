"""What ``Memory.search`` needs besides the ranking (``hybrid``): the threshold check, and the
groups in which concurrent searches of one SQLite store run.

**Grouped searches** (``SearchGroups``): threads that search one SQLite store at once hand their
searches to whichever of them is free (``hivemem.infra.grouping.Combiner``: a lone caller runs
its own search at once; with others around, the next group waits up to ``SEARCH_WAIT_MS`` for
the callers of the last one to come back), and that thread runs everything queued, one search
after the other, in ONE read snapshot, while the others sleep until their answer is there. Why:
a search is mostly Python with short SQLite steps, and ``sqlite3`` lets go of the GIL around
each step; with eight threads searching side by side every step became a hand-off of the GIL,
and eight threads served fewer searches than one (docs/memory.md#concurrent-searches). Each
search still gets exactly its own answer or its own error, and sees every write committed
before it was called (its group's snapshot begins after it joined the line). The records of the
group's answers are read last, in ONE statement for all of its searches (``hybrid.rank`` ranks
each search, its hits possibly stubs; ``hybrid.finish`` then gives each its own records). If the thread
running a group is interrupted (Ctrl-C in a main thread), the other searches of that group run
again, each alone in its own snapshot: a search only reads.

**Without a GIL** (a free-threaded CPython 3.13t, ``grouping.gil_enabled()`` false at the call)
there is no hand-off to save, and one thread running everyone's searches would leave the other
cores idle: each search runs in its caller's thread, in its own snapshot, side by side with the
others (as on PostgreSQL). Measured: docs/memory.md, "A free-threaded interpreter".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from hivemem.errors import GroupLeaderFailed
from hivemem.infra.grouping import Combiner, Release, gil_enabled
from hivemem.memory import hybrid
from hivemem.memory.storage.base import Storage

Hits = list[dict[str, Any]]
GROUP_SEARCHES = 64  # searches one thread runs for the others at most, before another thread leads
# How long the next group waits for the callers of the last one to come back (``grouping.Line``'s
# rule: a lone caller never waits). Without it, the group left with whoever was back, and the
# others' Python met its SQLite steps, a GIL hand-off each; longer, a caller that does not come
# back cost the others more (docs/memory.md#concurrent-searches, benchmarks/search_sporadic.py).
SEARCH_WAIT_MS = 0.5


class SearchGroups:
    """Runs concurrent searches of one store in groups, each group in one snapshot (see above)."""

    def __init__(self, storage: Storage, grouped: bool) -> None:
        """``grouped``: False runs each search by itself in its caller's thread (PostgreSQL: the
        work is the server's, and its connections search in parallel); so does a call made
        without a GIL."""
        self._storage = storage
        self._combiner: Combiner[Callable[[], Hits], Hits] | None = (
            Combiner(self._run, max_wait_ms=SEARCH_WAIT_MS, max_size=GROUP_SEARCHES) if grouped else None
        )

    def run(self, search: Callable[[], Hits]) -> Hits:
        """``search()`` (a ranking through the storage primitives: ``hybrid.rank``) inside a read
        snapshot → its hits with their records (``hybrid.finish``)."""
        if self._combiner is None or not gil_enabled():
            return self._alone(search)
        try:
            return self._combiner.submit(search)
        except GroupLeaderFailed:  # the thread running our group was interrupted: a read, so rerun
            return self._alone(search)

    def _alone(self, search: Callable[[], Hits]) -> Hits:
        with self._storage.snapshot():
            return hybrid.finish(self._storage, search())

    def _run(self, searches: list[Callable[[], Hits]], release: Release) -> list[Hits | BaseException]:
        out: list[Hits | BaseException] = []
        try:
            with self._storage.snapshot():
                for search in searches:
                    try:
                        out.append(search())
                    except Exception as exc:  # to its own caller
                        out.append(exc)
                out = self._finish(out)
        except Exception as exc:  # the snapshot failed (to begin or to end): none of its answers holds
            return [exc] * len(searches)
        return out

    def _finish(self, ranked: list[Hits | BaseException]) -> list[Hits | BaseException]:
        """Each ranked answer with its records, read for the whole group in ONE statement (the
        union of their stubs' rows); if that read fails, each search reads its own, so that an
        error lands on its own caller only (had the failure ended the snapshot, its end fails the
        whole group: ``_run``). Each caller owns its answer: a record that several answers share
        is copied for all but the first (its metadata is a dict the caller may change)."""
        rows = [row for hits in ranked if not isinstance(hits, BaseException) for row in hybrid.pending(hits)]
        found: dict[Any, dict[str, Any]] | None
        try:
            found = self._storage.records(rows) if rows else {}
        except Exception:
            found = None
        out: list[Hits | BaseException] = []
        taken: set[Any] = set()
        for hits in ranked:
            if isinstance(hits, BaseException):
                out.append(hits)
                continue
            try:
                out.append(
                    hybrid.finish(self._storage, hits, None if found is None else _own(found, hits, taken))
                )
            except Exception as exc:  # to its own caller
                out.append(exc)
        return out


def _own(found: dict[Any, dict[str, Any]], hits: Hits, taken: set[Any]) -> dict[Any, dict[str, Any]]:
    """The records of ``hits``' stubs out of a group's ``found``: those an earlier answer took
    (``taken``) as deep copies, so that no two callers share a dict."""
    mine = {}
    for row in hybrid.pending(hits):
        if row in found:
            mine[row] = copy.deepcopy(found[row]) if row in taken else found[row]
            taken.add(row)
    return mine


def check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not math.isfinite(threshold):  # NaN compares false with every score: it silently found nothing
        raise ValueError(
            f"threshold must be a finite number (a cosine, usually in [-1, 1]), got {threshold!r}"
        )
    return float(threshold)
