"""An in-memory copy of every stored vector, for exact top-k search by one matrix product.

At 100k memories of 384 floats the whole table is 150 MB and a product with one query takes a
few milliseconds, far less than embedding the query itself, so no approximate index is needed.

The copy is tied to two counters kept in the database: ``version`` (bumped by every write) and
``rewrites`` (bumped by deletes, updates and resets). When only ``version`` moved — other
processes or threads appended rows — the new rows are appended (row ids only grow); when
``rewrites`` moved the copy is reloaded. Readers take an immutable ``Snapshot`` and never wait
for a refresh in progress to finish computing their product.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Snapshot:
    version: int
    rids: np.ndarray  # int64, ascending
    vectors: np.ndarray  # (len(rids), dim) float32, rows aligned with rids


class VectorMatrix:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._lock = threading.Lock()
        self._rids = np.empty(0, dtype=np.int64)
        self._buf = np.empty((0, dim), dtype=np.float32)
        self._n = 0
        self._version = -1
        self._rewrites = -1
        self._snap = Snapshot(-1, self._rids, self._buf)

    def snapshot(self, db: sqlite3.Connection, version: int, rewrites: int) -> Snapshot:
        """The copy as of the caller's read transaction on ``db`` (which saw these counters)."""
        snap = self._snap
        if snap.version == version and self._rewrites == rewrites:
            return snap
        with self._lock:
            if self._version == version and self._rewrites == rewrites:
                return self._snap
            if rewrites != self._rewrites or version < self._version:
                self._n = 0
                self._rids = np.empty(0, dtype=np.int64)
            last = int(self._rids[self._n - 1]) if self._n else -1
            rows = db.execute("SELECT rid, vec FROM memories WHERE rid > ? ORDER BY rid", (last,)).fetchall()
            self._append(rows)
            self._version, self._rewrites = version, rewrites
            self._snap = Snapshot(version, self._rids[: self._n], self._buf[: self._n])
            return self._snap

    def _append(self, rows: list[tuple[int, bytes]]) -> None:
        if not rows:
            if self._n == 0:
                self._buf = np.empty((0, self.dim), dtype=np.float32)
            return
        new = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        rids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        need = self._n + len(rows)
        if self._n == 0 or need > len(self._buf):
            # grow by half again so that a stream of small appends costs amortised O(1) per row;
            # old snapshots keep their own (old) arrays, so readers are never disturbed
            cap = max(need, int(len(self._buf) * 1.5), 1024)
            buf = np.empty((cap, self.dim), dtype=np.float32)
            buf[: self._n] = self._buf[: self._n]
            all_rids = np.empty(cap, dtype=np.int64)
            all_rids[: self._n] = self._rids[: self._n]
            self._buf, self._rids = buf, all_rids
        elif len(self._rids) < len(self._buf):
            grown = np.empty(len(self._buf), dtype=np.int64)
            grown[: self._n] = self._rids[: self._n]
            self._rids = grown
        self._buf[self._n : need] = new
        self._rids[self._n : need] = rids
        self._n = need


def top_k(
    snap: Snapshot, query: np.ndarray, positions: np.ndarray | None, k: int, threshold: float | None
) -> list[tuple[int, float]]:
    """``(rid, score)`` of the best ``k`` rows (among ``positions`` if given), best first."""
    if positions is None:
        scores = snap.vectors @ query
        rids = snap.rids
    elif len(positions) * 8 > len(snap.rids):
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
