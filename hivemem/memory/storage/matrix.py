"""An in-memory copy of every stored vector, for top-k search by one pass over a matrix.

At 100k memories of 384 floats the table is 150 MB, and a float32 product with one query reads
all of it: ~15 ms on the 2-core dev box, bound by memory bandwidth, more than embedding the query.
So a search over a large candidate set (``QUANTISED_MIN`` rows or more, all of them live rows)
first ranks an int8 copy (38 MB; ``numkong``'s SIMD int8 dot kernels, ~2.5 ms with the selection)
and then re-scores the best ``RESCORE`` rows exactly in float32: the scores returned are exact,
and the top-k equals the float32 top-k unless a true top-k row ranks below ``RESCORE`` in int8
(recall@10 is measured by ``benchmarks/memory.py``). Filtered subsets are scored exactly in float32.

The copy is kept in step with the database by two counters in ``meta`` — ``version`` (bumped by
every write) and ``rewrites`` (bumped by a reset, and by deletes in files made before row ids were
AUTOINCREMENT) — and by the ``changes`` log of deleted or re-embedded row ids. New rows are
appended (row ids only grow), changed rows are patched or marked dead; dead rows are dropped once
they are many. Readers take an immutable ``Snapshot`` and never wait for a refresh in progress.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

import numkong
import numpy as np

QUANTISED_MIN = 20_000  # below this, one float32 product costs under ~3 ms: no first pass
RESCORE = 256  # rows re-scored in float32 after the int8 pass (at least 4 × k)


@dataclass(frozen=True)
class Snapshot:
    version: int
    rids: np.ndarray  # int64, ascending; dead rows included (they have no row in the database)
    vectors: np.ndarray  # (len(rids), dim) float32, rows aligned with rids
    codes: np.ndarray  # (len(rids), dim) int8: vectors * scale, rounded
    dead: np.ndarray  # positions of dead rows, ascending
    live: int  # len(rids) - len(dead)


def _quantise(vectors: np.ndarray, scale: float) -> np.ndarray:
    """int8 codes of ``vectors * scale``, in blocks that stay in cache (no 150 MB temporaries)."""
    out = np.empty(vectors.shape, dtype=np.int8)
    tmp = np.empty((min(len(vectors), 4096), *vectors.shape[1:]), dtype=np.float32)
    for at in range(0, len(vectors), 4096):
        part = tmp[: len(vectors[at : at + 4096])]
        np.multiply(vectors[at : at + 4096], scale, out=part)
        np.rint(part, out=part)
        np.clip(part, -127, 127, out=part)
        out[at : at + 4096] = part
    return out


class VectorMatrix:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._clear()
        self._version = -1
        self._rewrites = -1
        self._seq = 0  # last entry of the ``changes`` log applied
        self.reloads = 0  # full loads from the database (the first one included)
        self._snap = self._make(-1)

    def _clear(self) -> None:
        self._n = 0
        self._rids = np.empty(0, dtype=np.int64)
        self._buf = np.empty((0, self.dim), dtype=np.float32)
        self._codes = np.empty((0, self.dim), dtype=np.int8)
        self._dead = np.empty(0, dtype=np.int64)
        self._scale = 0.0

    def _make(self, version: int) -> Snapshot:
        n = self._n
        live = n - len(self._dead)
        return Snapshot(version, self._rids[:n], self._buf[:n], self._codes[:n], self._dead, live)

    def snapshot(self, db: sqlite3.Connection, counters: dict[str, int]) -> Snapshot:
        """The copy as of the caller's read transaction on ``db`` (which saw these counters)."""
        version, rewrites = counters["version"], counters["rewrites"]
        snap = self._snap
        if snap.version == version and self._rewrites == rewrites:
            return snap
        with self._lock:
            if self._version == version and self._rewrites == rewrites:
                return self._snap
            if rewrites != self._rewrites or version < self._version or self._seq < counters["pruned"]:
                self._clear()
                self.reloads += 1
                self._seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            else:
                self._apply_changes(db)
            last = int(self._rids[self._n - 1]) if self._n else -1
            rows = db.execute("SELECT rid, vec FROM memories WHERE rid > ? ORDER BY rid", (last,)).fetchall()
            self._append(rows)
            if len(self._dead) > max(256, self._n // 8):
                self._compact()
            self._version, self._rewrites = version, rewrites
            self._snap = self._make(version)
            return self._snap

    def _apply_changes(self, db: sqlite3.Connection) -> None:
        """Rows deleted since the last refresh → dead; rows re-embedded → patched (copy on write)."""
        log = db.execute("SELECT seq, rid FROM changes WHERE seq > ? ORDER BY seq", (self._seq,)).fetchall()
        if not log:
            return
        self._seq = log[-1][0]
        rids = self._rids[: self._n]
        touched = np.unique(np.fromiter((r for _, r in log), dtype=np.int64, count=len(log)))
        pos = np.searchsorted(rids, touched)
        held = pos < self._n
        held[held] &= rids[pos[held]] == touched[held]
        touched, pos = touched[held], pos[held]
        if not len(touched):
            return
        marks = ",".join("?" * len(touched))
        now = dict(db.execute(f"SELECT rid, vec FROM memories WHERE rid IN ({marks})", touched.tolist()))
        changed = [(p, now[r]) for r, p in zip(touched.tolist(), pos.tolist(), strict=True) if r in now]
        gone = [p for r, p in zip(touched.tolist(), pos.tolist(), strict=True) if r not in now]
        if changed:  # new arrays: snapshots in readers' hands keep the old ones
            self._buf, self._codes = self._buf.copy(), self._codes.copy()
            at = np.array([p for p, _ in changed], dtype=np.int64)
            vecs = np.frombuffer(b"".join(v for _, v in changed), dtype=np.float32).reshape(-1, self.dim)
            self._buf[at] = vecs
            self._fit_scale(vecs)
            self._codes[at] = _quantise(vecs, self._scale)
        if gone:
            self._dead = np.union1d(self._dead, np.array(gone, dtype=np.int64))

    def _fit_scale(self, new: np.ndarray) -> None:
        """One scale for all rows, set by the largest component seen; widened (rarely) as needed."""
        peak = max(float(np.abs(new).max()), 1e-6)
        if self._scale == 0 or peak * self._scale > 127:
            self._scale = 127 / peak
            self._codes = _quantise(self._buf[: self._n], self._scale)

    def _compact(self) -> None:
        keep = np.ones(self._n, dtype=bool)
        keep[self._dead] = False
        self._rids, self._buf, self._codes = (
            self._rids[: self._n][keep],
            self._buf[: self._n][keep],
            self._codes[: self._n][keep],
        )
        self._n = len(self._rids)
        self._dead = np.empty(0, dtype=np.int64)

    def _append(self, rows: list[tuple[int, bytes]]) -> None:
        if not rows:
            return
        new = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        rids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        need = self._n + len(rows)
        self._fit_scale(new)
        if need > len(self._buf) or len(self._codes) < len(self._buf):
            # grow by half again so that a stream of small appends costs amortised O(1) per row;
            # old snapshots keep their own (old) arrays, so readers are never disturbed
            cap = max(need, int(len(self._buf) * 1.5), 1024)
            buf = np.empty((cap, self.dim), dtype=np.float32)
            buf[: self._n] = self._buf[: self._n]
            codes = np.empty((cap, self.dim), dtype=np.int8)
            codes[: self._n] = self._codes[: self._n]
            all_rids = np.empty(cap, dtype=np.int64)
            all_rids[: self._n] = self._rids[: self._n]
            self._buf, self._codes, self._rids = buf, codes, all_rids
        self._buf[self._n : need] = new
        self._codes[self._n : need] = _quantise(new, self._scale)
        self._rids[self._n : need] = rids
        self._n = need


def _first_pass(snap: Snapshot, query: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` best rows by int8 inner product (dead rows possibly among them)."""
    peak = float(np.abs(query).max()) or 1.0
    q8 = _quantise(query, 127 / peak)  # the query's own scale: ranking ignores a positive factor
    # exact integer dot products (|sum| < 2**24, so float32 holds them exactly)
    dots = np.asarray(numkong.cdist(q8[None, :], snap.codes, metric="dot", out_dtype="float32"))[0]
    if count >= len(dots):
        return np.arange(len(dots), dtype=np.int64)
    return np.argpartition(dots, len(dots) - count)[len(dots) - count :].astype(np.int64)


def top_k(
    snap: Snapshot, query: np.ndarray, positions: np.ndarray | None, k: int, threshold: float | None
) -> list[tuple[int, float]]:
    """``(rid, score)`` of the best ``k`` live rows (among ``positions`` if given), best first.

    ``positions`` holds only live rows (the SQL filter saw the same database state), so a
    ``positions`` as long as the live row count means "every row".
    """
    every = positions is None or len(positions) == snap.live
    n = len(snap.rids)
    if every and snap.live >= QUANTISED_MIN:
        count = min(n, max(RESCORE, 4 * k) + len(snap.dead))
        cand = _first_pass(snap, query, count)
        if len(snap.dead):
            cand = cand[~np.isin(cand, snap.dead)]
        scores = snap.vectors[cand] @ query
        rids = snap.rids[cand]
    elif every:
        scores = snap.vectors @ query
        rids = snap.rids
        if len(snap.dead):
            alive = np.ones(n, dtype=bool)
            alive[snap.dead] = False
            scores, rids = scores[alive], rids[alive]
    elif len(positions) * 8 > n:
        # a large share of the rows: one full product beats gathering the rows first
        scores = (snap.vectors @ query)[positions]
        rids = snap.rids[positions]
    else:
        scores = snap.vectors[positions] @ query
        rids = snap.rids[positions]
    if threshold is not None:
        keep = scores >= threshold
        scores, rids = scores[keep], rids[keep]
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, rids = scores[part], rids[part]
    order = np.argsort(-scores, kind="stable")
    return [(int(rids[i]), float(scores[i])) for i in order]
