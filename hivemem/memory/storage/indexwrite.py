"""Writing the files of the SQLite store's int8 index (see ``vectorindex``): a full build from a
snapshot, a catch-up (changed rows patched, deleted rows tombstoned, the tail appended) and a
compaction copy. The caller holds the index lock and publishes the header afterwards; a failure
raises, and the caller discards the files of a generation it never published.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from hivemem.memory.storage.indexfiles import (
    CHUNK,
    KINDS,
    Array,
    Files,
    blobs,
    positions,
    pwrite,
    row_checks,
)
from hivemem.memory.storage.indexheader import Header, StaleIndex
from hivemem.memory.storage.int8 import quantise

Fds = dict[str, int]


def open_rw(directory: Path, gen: int) -> Fds:
    """The files of generation ``gen`` open for writing (created if missing). They stay read-only
    for everyone (0444) between writes, so that no one but root can shrink them under a reader's
    mapping (``indexfiles.mappable``): made writable for the moment of the open."""
    fds: Fds = {}
    try:
        for kind in KINDS:
            path = directory / f"{gen}.{kind}"
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o644)
            fds[kind] = os.open(path, os.O_RDWR | os.O_CREAT, 0o444)
            os.fchmod(fds[kind], 0o444)
    except BaseException:
        close(fds)
        raise
    return fds


def close(fds: Fds) -> None:
    for fd in fds.values():
        os.close(fd)


def discard(directory: Path, gen: int) -> None:
    """Remove the files of an unpublished generation (a build that failed: no partial files)."""
    for kind in KINDS:
        with contextlib.suppress(OSError):
            (directory / f"{gen}.{kind}").unlink()


def grow(fds: Fds, dim: int, rows: int) -> None:
    for kind, width in (("codes", dim), ("rids", 8), ("scales", 4), ("dead", 1), ("check", 4)):
        if os.fstat(fds[kind]).st_size < rows * width:
            os.ftruncate(fds[kind], rows * width)


def capacity(rows: int) -> int:
    return -(-max(rows + rows // 4, 4096) // 4096) * 4096


def write_rows(fds: Fds, dim: int, at: int, rids: Array, vectors: Array) -> None:
    codes, scales = quantise(vectors)
    rids = rids.astype(np.int64)
    pwrite(fds["codes"], codes.tobytes(), at * dim)
    pwrite(fds["rids"], rids.tobytes(), at * 8)
    pwrite(fds["scales"], scales.tobytes(), at * 4)
    pwrite(fds["dead"], bytes(len(rids)), at)
    pwrite(fds["check"], row_checks(codes, scales, rids).tobytes(), at * 4)


def append(
    fds: Fds, db: sqlite3.Connection, dim: int, n: int, after: int, last_id: str
) -> tuple[int, int, str]:
    """The rows of the snapshot with a row id above ``after``, written from row ``n`` on:
    ``(n, last_rid, last_id)`` after them."""
    cur = db.execute("SELECT rid, id, vec FROM memories WHERE rid > ? ORDER BY rid", (after,))
    last_rid = after
    while rows := cur.fetchmany(CHUNK):
        rids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if os.fstat(fds["codes"]).st_size < (n + len(rows)) * dim:
            grow(fds, dim, capacity(n + len(rows)))
        write_rows(fds, dim, n, rids, blobs(rows, 2, dim))
        n += len(rows)
        last_rid, last_id = int(rows[-1][0]), rows[-1][1]
    return n, last_rid, last_id


def build(directory: Path, gen: int, db: sqlite3.Connection, dim: int) -> tuple[int, int, str]:
    """Generation ``gen`` written from every row of the snapshot ``db`` is in: ``(n, last_rid,
    last_id)``."""
    count = db.execute("SELECT count(*) FROM memories").fetchone()[0]
    fds = open_rw(directory, gen)
    try:
        grow(fds, dim, capacity(count))
        return append(fds, db, dim, 0, 0, "")
    finally:
        close(fds)


def catch_up(directory: Path, files: Files, db: sqlite3.Connection, header: Header, seq: int) -> Header:
    """Apply the changes and append the tail since ``header`` to its files: the header that covers
    them up to the snapshot's changes log entry ``seq`` (not yet published)."""
    n, dim, dead = header.n, header.dim, header.dead
    fds = open_rw(directory, header.gen)
    try:
        changed = np.array(
            sorted({r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (header.seq,))}),
            dtype=np.int64,
        )
        changed = changed[changed <= header.last_rid]
        if len(changed):
            rids = files.rids_upto(n, header.last_rid)
            pos = positions(rids, changed)
            changed = rids[pos]
            now = dict(
                db.execute(
                    "SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?))",
                    (json.dumps(changed.tolist()),),
                ).fetchall()
            )
            for rid, p in zip(changed.tolist(), pos.tolist(), strict=True):
                if rid in now:  # re-embedded: new codes, the check value last
                    vec = np.frombuffer(now[rid], dtype=np.float32)[None, :]
                    codes, scales = quantise(vec)
                    pwrite(fds["codes"], codes.tobytes(), p * dim)
                    pwrite(fds["scales"], scales.tobytes(), p * 4)
                    check = row_checks(codes, scales, np.array([rid], dtype=np.int64))
                    pwrite(fds["check"], check.tobytes(), p * 4)
                else:  # deleted after the header (a killed writer may have set it already)
                    pwrite(fds["dead"], b"\x01", p)
                    dead += 1
        n, last_rid, last_id = append(fds, db, dim, n, header.last_rid, header.last_id)
    finally:
        close(fds)
    return header.but(n=n, last_rid=last_rid, last_id=last_id, seq=seq, dead=dead)


def compact(directory: Path, files: Files, header: Header, gen: int) -> int:
    """Generation ``gen`` written from the live rows of ``header``'s files (no SQLite): how many.

    Every block is verified before it is copied (check values, and the tombstones against the
    header's count): damage is never copied forward; StaleIndex, and the caller rebuilds.
    """
    n, dim = header.n, header.dim
    rids_all = files.rids_upto(n, header.last_rid)
    dead = files.pread("dead", 0, n)
    if (count := int(np.count_nonzero(dead))) != header.dead:
        raise StaleIndex(f"tombstones damaged: {count} set, {header.dead} deleted")
    out = 0
    fds = open_rw(directory, gen)
    try:
        for fd in fds.values():
            os.ftruncate(fd, 0)  # files of a compaction killed before it published
        grow(fds, dim, capacity(n - header.dead))
        for at in range(0, n, CHUNK):
            stop = min(at + CHUNK, n)
            codes, scales = files.pread("codes", at, stop), files.pread("scales", at, stop)
            rids, check = rids_all[at:stop], files.pread("check", at, stop)
            wrong = np.flatnonzero(row_checks(codes, scales, rids) != check)
            if len(wrong):
                raise StaleIndex(f"row {rids[wrong[0]]} is damaged (found by compaction)")
            keep = np.flatnonzero(dead[at:stop] == 0)
            if not len(keep):
                continue
            pwrite(fds["codes"], codes[keep].tobytes(), out * dim)
            pwrite(fds["rids"], rids[keep].tobytes(), out * 8)
            pwrite(fds["scales"], scales[keep].tobytes(), out * 4)
            pwrite(fds["dead"], bytes(len(keep)), out)
            pwrite(fds["check"], check[keep].tobytes(), out * 4)
            out += len(keep)
    finally:
        close(fds)
    return out
