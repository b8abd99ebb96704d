"""A vector search over the SQLite store's int8 index (see ``vectorindex``), in its stages:

1. **mask**: the rows the files hold that changed since the header (and the tombstones), never
   ranked in int8;
2. **fresh rows**: those changed rows and the tail the files do not hold yet, read from SQLite;
3. **plan and rank** (``candidates``): which rows the int8 pass ranks and how many of its best
   are re-scored: all rows when unfiltered; with a filter, its rows alone when it matches few, else
   the best of all rows with the filter checked on them (``post_filter``), more and more;
4. **late rows**: rows changed by commits after the snapshot began, which the files may already
   hold in their new state, read as the snapshot has them;
5. **re-score** every gathered row exactly from its float32 vector and keep the best ``k``.

The int8 arithmetic and the re-score counts are the engine shared with PostgreSQL (``int8``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from hivemem.infra.sqlitedb import int_array
from hivemem.memory.storage import int8
from hivemem.memory.storage.indexfiles import (
    CHUNK,
    Array,
    Scratch,
    View,
    blobs,
    isin,
    positions,
    sorted_unique,
)
from hivemem.memory.storage.indexheader import StaleIndex, StoreState
from hivemem.memory.storage.indexverify import LiveLog
from hivemem.memory.storage.sqlcompile import Compiled

Rows = tuple[Array, bytes]  # row ids, and their float32 vectors end to end (``fetch``)
NO_ROWS: Rows = (np.empty(0, dtype=np.int64), b"")
Hits = list[tuple[int, float]]  # (rid, exact score), best first


@dataclass(frozen=True)
class Plan:
    """How a search is planned (``vectorindex``'s constants, read when it starts)."""

    rescore: int  # at least this many of the int8 best re-scored exactly (``int8.RESCORE``)

    small_subset: int  # a filter matching up to this many rows: those rows, without a first try
    prefilter_max: int  # else, if the best of all rows hold too few that pass: int8 over the subset


def exact_search(db: sqlite3.Connection, query: Array, sql: str, params: list[Any], k: int,
                 threshold: float | None) -> Hits:  # fmt: skip
    """``(rid, score)`` of the best ``k`` rows passing ``sql``, every row scored exactly from its
    float32 vector in SQLite, ``CHUNK`` rows at a time (bounded memory): the answer when the
    index cannot be built or is damaged. Same order and ties as ``Ranker.search``."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    rids, scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    cur = db.execute(f"SELECT rid, vec FROM memories WHERE {sql}", params)
    while rows := cur.fetchmany(CHUNK):
        more = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        got = blobs(rows, 1, len(query)) @ query
        if threshold is not None:
            keep = got >= threshold
            more, got = more[keep], got[keep]
        rids, scores = np.concatenate([rids, more]), np.concatenate([scores, got])
        if len(rids) > 2 * k + CHUNK:
            order = np.lexsort((rids, -scores))[:k]
            rids, scores = rids[order], scores[order]
    order = np.lexsort((rids, -scores))[:k]
    return [(int(rids[i]), float(scores[i])) for i in order]


def _in(rids: Array) -> str:
    return json.dumps(rids.tolist())


_FETCH = (
    "SELECT group_concat(rid), CAST(group_concat(vec, '') AS BLOB)"
    " FROM (SELECT rid, vec FROM memories WHERE {where})"
)


def fetch(db: sqlite3.Connection, where: str, params: list[Any], dim: int) -> Rows:
    """Row ids and float32 vectors of the rows passing ``where``, read as ONE result row.

    Why: reading n rows is n steps of ``sqlite3``, each of which lets go of the GIL and takes it
    back; with threads searching at once, each of those is a hand-off between threads (8 threads
    spent ~50-115 context switches per search, and their CPU per search rose ~1.6x; see
    docs/memory.md#concurrent-searches). ``group_concat`` over a BLOB keeps its bytes (a UTF-8
    store reads them back as they are; the cast makes them a BLOB again), in the order of the ids.
    A result past the connection's ``SQLITE_LIMIT_LENGTH`` (1e9 bytes by default) is read
    ``CHUNK`` rows at a time instead: the same rows.
    """
    try:
        ids, vecs = db.execute(_FETCH.format(where=where), params).fetchone()
        rids = int_array(ids)
    except sqlite3.DataError:  # "string or blob too big"
        rids, vecs = _fetch_rows(db, where, params)
    vecs = vecs or b""
    if len(vecs) != 4 * dim * len(rids):  # never taken on a UTF-8 store: never scored wrong
        raise StaleIndex(f"{len(rids)} vectors read back as {len(vecs)} bytes (database encoding?)")
    return rids, vecs


def _fetch_rows(db: sqlite3.Connection, where: str, params: list[Any]) -> tuple[Array, bytes]:
    """``fetch`` for a result too big for one value: ``CHUNK`` rows a step."""
    ids: list[int] = []
    vecs: list[bytes] = []
    cur = db.execute(f"SELECT rid, vec FROM memories WHERE {where}", params)
    while rows := cur.fetchmany(CHUNK):
        ids += [r[0] for r in rows]
        vecs += [bytes(r[1] or b"") for r in rows]  # a NULL: as group_concat, a length check fails
    return np.array(ids, dtype=np.int64), b"".join(vecs)


def rescore(rows: list[Rows], query: Array, dim: int, k: int, threshold: float | None) -> Hits:
    """Stage 5: the best ``k`` of ``rows`` by exact score, ties to the older row."""
    rids = np.concatenate([r for r, _ in rows]) if rows else NO_ROWS[0]
    if not len(rids):
        return []
    vecs = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rids), dim)
    rids, first = np.unique(rids, return_index=True)  # a changed row can come twice (tail and changed)
    scores = vecs[first] @ query
    if threshold is not None:
        keep = scores >= threshold
        scores, rids = scores[keep], rids[keep]
    order = np.lexsort((rids, -scores))[:k]
    return [(int(rids[i]), float(scores[i])) for i in order]


class Ranker:
    """The int8 pass over the files of one index, with this process's cache of filter subsets
    and per-thread buffers. Safe across threads."""

    def __init__(self) -> None:
        self.scratch = Scratch()
        self._lock = threading.Lock()
        self._probes: OrderedDict[tuple[Any, ...], Array] = OrderedDict()

    def search(self, db: sqlite3.Connection, state: StoreState, view: View, query: Array, where: Compiled,
               k: int, threshold: float | None, log: LiveLog,
               plan: Plan) -> tuple[Hits, int]:  # fmt: skip
        """``(rid, exact score)`` of the best ``k`` rows passing ``where``, best first; and how many
        rows the files lag behind the snapshot (tail + changed: a catch-up is due past CATCH_UP)."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        sql, params, filtered = where.sql, where.params, not where.always
        cond = f" AND ({sql})" if filtered else ""
        changed, masked = self.mask(db, view)
        exact = self.fresh_rows(db, view, changed, cond, params, state.dim)
        exact.append(self.candidates(db, state, view, query, sql, params, masked, k, filtered, plan))
        exact.append(self.late_rows(db, state, cond, params, log))
        lag = (state.high - view.header.last_rid) + len(changed)
        return rescore(exact, query, state.dim, k, threshold), lag

    @staticmethod
    def mask(db: sqlite3.Connection, view: View) -> tuple[Array, Array]:
        """Stage 1: the row ids the files hold that changed since the header, and the positions
        never ranked in int8 (those rows and the tombstones), ascending."""
        changed = np.array(
            sorted({r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (view.header.seq,))}),
            dtype=np.int64,
        )
        changed = changed[changed <= view.header.last_rid]
        masked = np.flatnonzero(view.dead)  # a copy: a writer may set tombstones meanwhile
        if len(changed):
            masked = sorted_unique(np.concatenate([masked, positions(view.rids, changed)]))
        return changed, masked

    @staticmethod
    def fresh_rows(db: sqlite3.Connection, view: View, changed: Array, cond: str, params: list[Any],
                   dim: int) -> list[Rows]:  # fmt: skip
        """Stage 2: the rows passing the filter that the files do not hold as this snapshot has
        them: the tail past the header, and the changed rows."""
        exact = [fetch(db, f"rid > ?{cond}", [view.header.last_rid, *params], dim)]
        if len(changed):
            where = f"rid IN (SELECT value FROM json_each(?)){cond}"
            exact.append(fetch(db, where, [_in(changed), *params], dim))
        return exact

    def candidates(self, db: sqlite3.Connection, state: StoreState, view: View, query: Array, sql: str,
                   params: list[Any], masked: Array, k: int, filtered: bool, plan: Plan) -> Rows:  # fmt: skip
        """Stage 3: the rows to re-score among those the files hold (known to pass the filter)."""
        n, want = view.header.n, int8.rescore_count(k, plan.rescore)
        if n == 0:
            return NO_ROWS
        q8 = int8.quantise_query(query)
        chosen: Array  # row ids to re-score exactly (known to pass the filter)
        if not filtered:
            chosen = view.rids[self.rank(view, q8, None, masked, want)]
        else:
            # a small subset: scored by itself; a large one: the best of all rows, filter checked
            # (tried first, it needs no list of the subset); in between: int8 over the subset
            subset = self.subset(db, state, view, sql, params, plan.small_subset)
            if subset is None:
                passing = self.post_filter(db, view, q8, masked, want, sql, params, once=True)
                if passing is not None:
                    return passing
                subset = self.subset(db, state, view, sql, params, plan.prefilter_max)
                if subset is None:
                    return self.post_filter(db, view, q8, masked, want, sql, params, once=False) or NO_ROWS
            pos = positions(view.rids, subset)
            if len(pos) <= want:
                chosen = view.rids[pos[~isin(pos, masked)]]
            else:
                chosen = view.rids[self.rank(view, q8, pos, masked, want)]
        if not len(chosen):
            return NO_ROWS
        return fetch(db, "rid IN (SELECT value FROM json_each(?))", [_in(chosen)], state.dim)

    @staticmethod
    def late_rows(
        db: sqlite3.Connection, state: StoreState, cond: str, params: list[Any], log: LiveLog
    ) -> Rows:
        """Stage 4: rows changed by commits after this snapshot began may be tombstoned or carry
        new codes in the files by now (a writer's catch-up patches in place; a header published by
        another process may be ahead of the snapshot), so the int8 pass may have missed them:
        read here as this snapshot has them. Runs after every read of the files."""
        late = log.changed_after(db, state.seq)
        if late is None:  # the log was trimmed past this snapshot meanwhile: every row, exactly
            return fetch(db, f"rid > 0{cond}", params, state.dim)
        if not len(late):
            return NO_ROWS
        return fetch(db, f"rid IN (SELECT value FROM json_each(?)){cond}", [_in(late), *params], state.dim)

    def rank(self, view: View, q8: Array, pos: Array | None, masked: Array, count: int) -> Array:
        """Positions of the ``count`` best rows by int8 score (among ``pos`` if given), best first."""
        n = view.header.n
        if pos is None or len(pos) * 4 > n:  # one pass over all rows beats a gather
            dots = self.scratch.dots(n)
            if view.mapped:
                scores = int8.scores(q8, view.files.maps["codes"][:n], view.files.maps["scales"][:n], dots)
            else:  # block by block through a bounded buffer (pread: a truncated file reads short)
                codes_buf, scales_buf = (
                    self.scratch.buffer("codes", view.files.dim),
                    self.scratch.buffer("scales", 1),
                )
                for start in range(0, n, CHUNK):
                    stop = min(n, start + CHUNK)
                    codes = view.rows("codes", start, stop, codes_buf)
                    int8.scores(q8, codes, view.rows("scales", start, stop, scales_buf), dots[:, start:stop])
                scores = dots[0]
            if len(masked):
                scores[masked] = -np.inf
            if pos is not None:
                scores = scores[pos]
        else:
            scores = self._gathered(view, q8, pos)
            if len(masked):
                scores[isin(pos, masked)] = -np.inf
        top = int8.best(scores, count, masked=bool(len(masked)))
        return top if pos is None else pos[top]

    def _gathered(self, view: View, q8: Array, pos: Array) -> Array:
        """int8 scores of the rows at ``pos`` (a subset of at most a quarter of the rows)."""
        if view.mapped:
            codes, scales = view.files.maps["codes"][pos], view.files.maps["scales"][pos]
        else:  # the blocks holding them, each read from its first to its last wanted row
            order = np.argsort(pos, kind="stable")
            ranked = pos[order]
            codes = np.empty((len(pos), view.files.dim), dtype=np.int8)
            scales = np.empty(len(pos), dtype=np.float32)
            bounds = np.searchsorted(ranked, np.arange(0, view.header.n + CHUNK, CHUNK))
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                if lo == hi:
                    continue
                first, last = int(ranked[lo]), int(ranked[hi - 1]) + 1
                at = ranked[lo:hi] - first
                block = view.rows("codes", first, last, self.scratch.buffer("codes", view.files.dim))
                codes[order[lo:hi]] = block[at]
                scales[order[lo:hi]] = view.rows("scales", first, last, self.scratch.buffer("scales", 1))[at]
        return int8.scores(q8, codes, scales)

    def subset(self, db: sqlite3.Connection, state: StoreState, view: View, sql: str, params: list[Any],
               limit: int) -> Array | None:  # fmt: skip
        """Row ids (≤ last_rid) passing the filter, or None if more than ``limit`` (cached until
        the next write)."""
        key = (state.uid, state.version, view.header.last_rid, sql, tuple(params), limit)
        with self._lock:
            hit = self._probes.get(key)
            if hit is not None:
                self._probes.move_to_end(key)
                return None if len(hit) > limit else hit
        rids = int_array(
            db.execute(
                "SELECT group_concat(rid) FROM"
                f" (SELECT rid FROM memories WHERE rid <= ? AND ({sql}) LIMIT ?)",
                [view.header.last_rid, *params, limit + 1],
            ).fetchone()[0]
        )
        with self._lock:
            self._probes[key] = rids
            while len(self._probes) > 16:
                self._probes.popitem(last=False)
        return None if len(rids) > limit else rids

    def post_filter(self, db: sqlite3.Connection, view: View, q8: Array, masked: Array, want: int,
                    sql: str, params: list[Any], once: bool) -> Rows | None:  # fmt: skip
        """``(rid, vec)`` of the rows passing ``sql`` among the int8 best of the whole index,
        taking more of the best (×4 each time) until at least ``want`` pass.

        The passing rows among the int8 top-C of all rows are exactly the int8 top of the
        filtered rows, so once ``want`` of them pass, this is at least as good as ranking the
        filtered rows. One query checks the filter and reads the vectors to re-score. With
        ``once``: one try only, None when too few pass.
        """
        live = view.header.n - len(masked)
        rows = NO_ROWS
        for count in int8.widening(want + want // 4, live, 4):
            top = view.rids[self.rank(view, q8, None, masked, count)]
            where = f"rid IN (SELECT value FROM json_each(?)) AND ({sql})"
            rows = fetch(db, where, [_in(top), *params], view.files.dim)
            if len(rows[0]) >= want or count >= live:
                return rows
            if once:
                return None  # too few pass: the caller lists the subset instead
        return rows
