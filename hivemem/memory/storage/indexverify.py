"""The checks that keep a damaged int8 index of a SQLite store from ever being used (see
``vectorindex``, "Never used when wrong"): the check value of every row and the tombstone count
before a process first ranks them, spot checks against the float32 vectors in SQLite, and the
changes log as of *now* (beyond the caller's snapshot), which tells damage from rows a writer
patched for commits after the snapshot.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.infra.sqlitedb import Connections, int_array
from hivemem.memory.storage.indexfiles import (
    CHUNK,
    Array,
    Scratch,
    View,
    positions,
    row_checks,
    sorted_unique,
)
from hivemem.memory.storage.indexheader import StaleIndex
from hivemem.memory.storage.int8 import quantise


class LiveLog:
    """The store's changes log as of now, through one read-only connection per thread that is
    never inside a transaction: each query sees the latest commit (the caller's connection is
    inside its read snapshot)."""

    def __init__(self) -> None:
        self._store: str | None = None  # the database file, learnt from the first caller's connection
        self._conns = Connections(self._connect)

    def close(self) -> None:
        self._conns.close()

    def _connect(self) -> sqlite3.Connection:
        assert self._store is not None
        return sqlite3.connect(
            f"{Path(self._store).resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip

    def _now(self, db: sqlite3.Connection) -> sqlite3.Connection:
        if self._store is None:
            self._store = db.execute("PRAGMA database_list").fetchone()[2]
        return self._conns.get()

    def changed_since(self, db: sqlite3.Connection, seq: int, rids: list[int]) -> set[int]:
        """Which of ``rids`` the changes log holds after ``seq`` *now*, beyond the snapshot of ``db``."""
        rows = self._now(db).execute(
            "SELECT rid FROM changes WHERE seq > ? AND rid IN (SELECT value FROM json_each(?))",
            (seq, json.dumps(rids)),
        )
        return {r for (r,) in rows}

    def changed_after(self, db: sqlite3.Connection, seq: int) -> Array | None:
        """Row ids changed (deleted or re-embedded) by commits after ``seq``, as of now; None if the
        log was trimmed past ``seq`` meanwhile (which rows changed is then unknown)."""
        sql = (
            "SELECT (SELECT value FROM meta WHERE key = 'pruned'),"
            " (SELECT group_concat(rid) FROM changes WHERE seq > ?)"
        )
        pruned, rids = self._now(db).execute(sql, (seq,)).fetchone()
        return None if int(pruned or 0) > seq else int_array(rids)


def verify(
    db: sqlite3.Connection, view: View, signature: tuple[Any, ...], log: LiveLog, scratch: Scratch
) -> None:
    """The check value of every row not yet verified by this process since the files last
    changed (``signature``: any write, ours or anyone's, changes it), and the tombstones
    against the header's count: StaleIndex for damage.

    Rows changed by commits after the header (a writer patches them in place, the check value
    last) are masked by every search, so a mismatch there is no damage.
    """
    files, n = view.files, view.header.n
    blocks = -(-n // CHUNK)
    with files.lock:
        if files.signature != signature:
            files.signature, files.verified, files.verified_n = signature, np.zeros(0, dtype=bool), 0
        if len(files.verified) < blocks:
            more = np.zeros(blocks - len(files.verified), dtype=bool)
            files.verified = np.concatenate([files.verified, more])
        if n > files.verified_n:  # rows appended since: their block is checked again
            files.verified[files.verified_n // CHUNK :] = False
        todo = np.flatnonzero(~files.verified[:blocks]).tolist()
    bad: list[int] = []
    good: list[int] = []
    for block in todo:
        start, stop = block * CHUNK, min(n, (block + 1) * CHUNK)
        codes = view.rows("codes", start, stop, scratch.buffer("codes", files.dim))
        scales = view.rows("scales", start, stop, scratch.buffer("scales", 1))
        check = view.rows("check", start, stop, scratch.buffer("check", 1))
        wrong = np.flatnonzero(row_checks(codes, scales, view.rids[start:stop]) != check)
        if len(wrong):
            bad += (wrong + start).tolist()
        else:
            good.append(block)
    if bad:
        rids = view.rids[bad].tolist()
        damaged = sorted(set(rids) - log.changed_since(db, view.header.seq, rids))
        if damaged:
            raise StaleIndex(f"row {damaged[0]} is damaged ({len(damaged)} rows: check values differ)")
    dead = int(np.count_nonzero(view.dead))
    if dead != view.header.dead:  # tombstones set since the header must be for changed rows
        later = log.changed_after(db, view.header.seq)
        if later is None:
            raise StaleIndex("behind the trimmed changes log")
        pos = sorted_unique(positions(view.rids, later))
        if dead - int(np.count_nonzero(view.dead[pos])) != view.header.dead:
            raise StaleIndex(f"tombstones damaged: {dead} set, the header counts {view.header.dead}")
    with files.lock:
        if files.signature == signature:
            files.verified[good] = True
            if not bad:
                files.verified_n = max(files.verified_n, n)


SPOT_CHECKS = 16  # rows checked against SQLite when a process first maps a generation/region


def spot_check(db: sqlite3.Connection, view: View, log: LiveLog, lock: threading.Lock) -> None:
    """Rows of the files against the float32 vectors in SQLite (codes are deterministic): the
    rows appended since this process last looked, and once per generation a random sample."""
    files, n = view.files, view.header.n
    new = range(max(files.checked_upto, n - SPOT_CHECKS), n)
    pos = set(new)
    if not files.sampled and n:
        pos.update(random.Random().sample(range(n), min(SPOT_CHECKS, n)))
    if pos:
        at = np.array(sorted(pos), dtype=np.int64)
        rids = view.rids[at]
        changed = {r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (view.header.seq,))}
        rows = dict(
            db.execute(
                "SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?))",
                (json.dumps(rids.tolist()),),
            ).fetchall()
        )
        bad: dict[int, str] = {}
        for p, rid in zip(at.tolist(), rids.tolist(), strict=True):
            if view.dead[p] or rid in changed:
                continue
            blob = rows.get(rid)
            if blob is None:
                bad[rid] = f"row {rid} is in the index but not in the database"
                continue
            vec = np.frombuffer(blob, dtype=np.float32)
            if len(vec) != files.dim:
                raise StaleIndex("vector length differs")
            codes, scales = quantise(vec[None, :])
            held_codes, held_scale = view.rows("codes", p, p + 1)[0], view.rows("scales", p, p + 1)[0]
            if np.abs(codes[0].astype(np.int16) - held_codes).max(initial=0) > 1 or not np.isclose(
                scales[0], held_scale, rtol=1e-5, atol=0
            ):
                bad[rid] = f"the codes of row {rid} do not match its vector"
        if bad:  # a writer may have patched rows for changes committed after this snapshot
            for rid in set(bad) - log.changed_since(db, view.header.seq, list(bad)):
                raise StaleIndex(bad[rid])
    with lock:
        files.checked_upto = max(files.checked_upto, n)
        files.sampled = True
