"""One int8 vector index per SQLite store, in files that every process of the machine maps.

Why: the index used to be an in-RAM float32 matrix built by each searching process: at 100,000
memories one searcher held ~370 MB PSS and 25 of them 9.1 GB, and a fresh process paid ~0.9 s
for its first search. Now the index lives next to the store (``memory.sqlite-index/``) as plain
files that processes read through the page cache, which holds it once for all of them (the task
library shares its file the same way), and a fresh process searches at once. The files are
mapped only where nobody else can shrink them (mode 0444, owned by this non-root user: a
mapping of a truncated file is SIGBUS); otherwise (root) read with ``pread`` in blocks.

What is in it, per indexed row (aligned arrays, one file each, generation ``G``):

* ``G.codes`` int8 × dim: the vector scaled by ``127 / max|v|`` and rounded (one scale per row,
  so appending never re-quantises anything); ``G.scales`` float32: ``max|v| / 127``;
* ``G.rids`` int64, ascending: the SQLite row ids (``AUTOINCREMENT``: never reused);
* ``G.dead`` uint8: 1 for a deleted row (a tombstone), until a compaction drops it;
* ``G.check`` float32: the row's check value (``row_checks``: codes, scale and row id).

1M × 384 is 397 MB on disk. A search ranks every row by int8 inner product (numkong's SIMD
kernel: ~14 ms at 1M on one core), takes the best ``RESCORE``, and re-scores them exactly from
the float32 blobs in SQLite: scores are exact, and the top-k equals the exact top-k unless a true
top-k row ranks below ``RESCORE`` in int8 (recall@10 is measured by ``benchmarks/memory.py``).

**SQLite stays the source of truth.** ``header.json`` says what the files cover: the store's
``uid`` and ``epoch`` (meta ``rewrites``, bumped by ``reset``), the model and dimension, the
generation, ``n`` rows up to ``last_rid`` (and that row's memory id), and the position ``seq``
of the ``changes`` log (row ids deleted or re-embedded) already applied. A search reads the
header *before* opening its read transaction, so its snapshot contains everything the header
covers; rows committed since (``rid > last_rid``, the tail) are read from SQLite, and rows
changed since (``changes.seq > seq``) are masked in the files and scored exactly from SQLite.
The files may also hold changes committed *after* the snapshot began (a writer's catch-up
patches codes and sets tombstones in place; a header published meanwhile may be ahead of the
snapshot): after its int8 pass, a search reads the rows changed since its snapshot as of now
(one indexed query on a second, per-thread connection outside every transaction: no measurable
cost, 1.8 vs 2.0 ms per search at 20k rows, interleaved) and scores those rows exactly as its
snapshot has them. So a search sees exactly its snapshot, whatever state the files are in.

**Writers append after their commit** (or the first reader that finds a tail of ``CATCH_UP``
rows or more), under an exclusive ``flock`` taken without waiting (someone else is already at
it otherwise): patch changed rows and tombstone deleted ones in place, append the tail, then
publish a new header by an atomic rename. A process killed at any point leaves at worst rows
beyond ``n`` (ignored, overwritten next time) or rows patched ahead of the header (masked as
changed by every reader until the next header). Compaction (more than a quarter of the rows
dead) and rebuilds write a new generation and switch the header to it; readers that still map
the old files keep them until they look again. A rebuild numbers its generation from the clock
(µs), so no number is ever used twice, also after the directory was wiped: a process that still
maps the unlinked files of generation ``G`` would otherwise take a new ``G`` for them.

**Never used when wrong.** The header must match the store (uid, epoch, model, dim), must not be
ahead of the snapshot or behind the trimmed ``changes`` log, the row at ``last_rid`` must still
carry the same memory id, the files must hold ``n`` rows (``fstat`` before each search), every
row's check value must match (verified per block before a process first ranks it, and again
after any change of the files), the tombstones must match the header's count, and the first time
a process opens a generation (and for every newly appended region) it spot-checks rows against
the float32 vectors in SQLite. Compaction verifies what it copies. Anything off: the index is
rebuilt from SQLite under the lock (once; other readers wait for it), never used; if it cannot be
written (a full disk), searches scan SQLite exactly (``exact_search``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import mmap
import os
import random
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numkong
import numpy as np

from hivemem.infra.locks import locked
from hivemem.infra.sqlitedb import Connections, int_array
from hivemem.memory.storage.int8 import RESCORE, quantise

FORMAT = 2  # 2: G.check, the check value of every row
CATCH_UP = 256  # tail + changed rows at which a writer or reader brings the files up to date
SMALL_SUBSET = 2_000  # a filter matching up to this many rows: those rows, without a first try
PREFILTER_MAX = 50_000  # else, if the best of all rows hold too few that pass: int8 over the subset
# more rows: int8 over all rows, the filter checked on the best, more and more (see _post_filter)
COMPACT_MIN = 1024  # compaction once more than max(this, a quarter of the rows) are dead
SMALL_REBUILD = 10_000  # a writer (re)builds a missing index itself only for stores this small
SPOT_CHECKS = 16  # rows checked against SQLite when a process first maps a generation/region
_CHUNK = 8192  # rows quantised or copied at a time (bounded temporaries)
_KINDS = ("codes", "rids", "scales", "dead", "check")


class StaleIndex(Exception):
    """The files do not describe the store's current state (the message says why)."""


@dataclass(frozen=True)
class StoreState:
    """What the index is checked against, read in the snapshot of a search."""

    uid: str
    epoch: int
    model: str | None
    dim: int
    version: int  # meta 'version': bumped by every write
    seq: int  # last entry of the changes log
    pruned: int  # the changes log was trimmed up to here
    high: int  # highest row id ever given (AUTOINCREMENT's high-water mark)


def read_state(db: sqlite3.Connection) -> StoreState:
    meta = dict(
        db.execute(
            "SELECT key, value FROM meta WHERE key IN "
            "('uid', 'rewrites', 'model_id', 'dim', 'version', 'pruned')"
        ).fetchall()
    )
    seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'memories'").fetchone()
    except sqlite3.OperationalError:  # a store made before row ids were AUTOINCREMENT
        row = None
    high = row[0] if row else db.execute("SELECT coalesce(max(rid), 0) FROM memories").fetchone()[0]
    return StoreState(
        uid=str(meta.get("uid", "")),
        epoch=int(meta.get("rewrites", 0)),
        model=meta.get("model_id"),
        dim=int(meta.get("dim", 0) or 0),
        version=int(meta.get("version", 0)),
        seq=int(seq),
        pruned=int(meta.get("pruned", 0)),
        high=int(high),
    )


def _blobs(rows: list[tuple[Any, ...]], at: int, dim: int) -> np.ndarray:
    if not rows:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(r[at] for r in rows), dtype=np.float32).reshape(len(rows), dim)


# Set operations by sorting: numpy's isin/unique/union1d import numpy.ma on first use (~30 ms of a
# fresh process's first search).
def _sorted_unique(a: np.ndarray) -> np.ndarray:
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def _isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.isin(a, b)`` for integer arrays."""
    if not len(a) or not len(b):
        return np.zeros(len(a), dtype=bool)
    b = np.sort(b)
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return b[pos] == a


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` at ``offset``: a short write (the disk filled up) is an ENOSPC OSError."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        view, offset = view[written:], offset + written


def exact_search(db: sqlite3.Connection, query: np.ndarray, sql: str, params: list[Any], k: int,
                 threshold: float | None) -> list[tuple[int, float]]:  # fmt: skip
    """``(rid, score)`` of the best ``k`` rows passing ``sql``, every row scored exactly from its
    float32 vector in SQLite, ``_CHUNK`` rows at a time (bounded memory): the answer when the
    index cannot be built or is damaged. Same order and ties as ``SharedIndex.search``."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    rids, scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    cur = db.execute(f"SELECT rid, vec FROM memories WHERE {sql}", params)
    while rows := cur.fetchmany(_CHUNK):
        more = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        got = _blobs(rows, 1, len(query)) @ query
        if threshold is not None:
            keep = got >= threshold
            more, got = more[keep], got[keep]
        rids, scores = np.concatenate([rids, more]), np.concatenate([scores, got])
        if len(rids) > 2 * k + _CHUNK:
            order = np.lexsort((rids, -scores))[:k]
            rids, scores = rids[order], scores[order]
    order = np.lexsort((rids, -scores))[:k]
    return [(int(rids[i]), float(scores[i])) for i in order]


def _checksum(header: dict[str, Any]) -> int:
    body = {k: v for k, v in header.items() if k != "check"}
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


_DTYPES = {"codes": np.int8, "rids": np.int64, "scales": np.float32, "dead": np.uint8, "check": np.float32}
_CHECK_MOD = 65_521  # the row id enters a row's check value modulo this prime (exact in float32)


@functools.lru_cache(maxsize=4)
def _probe(dim: int) -> np.ndarray:
    """The fixed int8 vector whose inner product with a row's codes enters its check value: every
    entry is non-zero, so a change of any single code changes the product."""
    rng = np.random.default_rng(0x6869766D656D)  # fixed: writers and readers of every process agree
    return (rng.integers(1, 128, dim) * rng.choice([-1, 1], dim)).astype(np.int8)


def row_checks(codes: np.ndarray, scales: np.ndarray, rids: np.ndarray) -> np.ndarray:
    """The check value of each row: ``(probe · codes) × scale + rid mod 65521``, in float32.

    Writers store it (``G.check``); readers recompute it, with the very same operations, for each
    block of rows before they first rank it (``SharedIndex.view``), and compaction for each block
    it copies: equal bits or the index is damaged. A changed code, scale or row id changes the
    value (a negated row too, unless its product is 0); integer products are exact in float32
    (|probe · codes| ≤ 127² × dim < 2²⁴ for dim ≤ 1040).
    """
    if not len(codes):
        return np.empty(0, dtype=np.float32)
    dots = np.asarray(
        numkong.cdist(_probe(codes.shape[1])[None, :], codes, metric="dot", out_dtype="float32")
    )[0]
    return (dots * scales.astype(np.float32) + (rids % _CHECK_MOD).astype(np.float32)).astype(np.float32)


def _mappable(st: os.stat_result) -> bool:
    """Whether nobody but root (or this user, on purpose: chmod first) can shrink the file under a
    mapping: read-only for everyone, owned by this (non-root) user. Root ignores modes."""
    euid = os.geteuid()
    return euid != 0 and st.st_uid == euid and not st.st_mode & 0o222


class _Files:
    """The files of one generation, open read-only: mapped where they cannot be shrunk under the
    mapping (``_mappable``), read with ``pread`` otherwise (a shrunk file then reads short: an
    error, never SIGBUS). Kept open while a view uses them, so a replaced generation stays
    readable (its unlinked files live until the last descriptor closes)."""

    def __init__(self, directory: Path, gen: int, dim: int) -> None:
        self.gen, self.dim = gen, dim
        self.width = {"codes": dim, "rids": 8, "scales": 4, "dead": 1, "check": 4}
        self.fds: dict[str, int] = {}
        self.maps: dict[str, np.ndarray] = {}
        caps = []
        try:
            for kind in _KINDS:
                fd = os.open(directory / f"{gen}.{kind}", os.O_RDONLY)
                self.fds[kind] = fd
                st = os.fstat(fd)
                caps.append(st.st_size // self.width[kind])
                if st.st_size and _mappable(st):
                    buf = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
                    rows = st.st_size // self.width[kind]
                    arr = np.frombuffer(buf, dtype=_DTYPES[kind])[: rows * (dim if kind == "codes" else 1)]
                    self.maps[kind] = arr.reshape(-1, dim) if kind == "codes" else arr
        except BaseException:
            self.close()
            raise
        self.cap = min(caps)
        self.rids = np.empty(0, dtype=np.int64)  # row ids of rows [0, len) read so far (never rewritten)
        self.signature: tuple[Any, ...] | None = None  # what fstat said when the blocks were verified
        self.verified = np.zeros(0, dtype=bool)  # per block of _CHUNK rows: check values matched
        self.verified_n = 0  # rows covered when the blocks were verified
        self.checked_upto = 0  # rows of this generation spot-checked against SQLite by this process
        self.sampled = False
        self.lock = threading.Lock()

    def close(self) -> None:
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = {}

    def __del__(self) -> None:  # the last view using these files is gone
        self.close()

    def stat(self) -> tuple[tuple[int, int, int, int], ...]:
        """(size, mtime, ctime, mode) of each file, now: one fstat each (~1 µs)."""
        out = []
        for kind in _KINDS:
            st = os.fstat(self.fds[kind])
            out.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
        return tuple(out)

    def pread(self, kind: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of ``kind`` read with ``pread`` (into ``out`` if given)."""
        width = self.width[kind]
        rows = stop - start
        flat = rows * (self.dim if kind == "codes" else 1)
        buf = np.empty(flat, dtype=_DTYPES[kind]) if out is None or out.size < flat else out
        buf = buf.reshape(-1)[:flat]
        try:
            got = os.preadv(self.fds[kind], [cast(Any, buf)], start * width) if rows else 0
        except OSError as exc:  # an I/O error: the files are not used
            raise StaleIndex(f"{self.gen}.{kind} cannot be read: {exc}") from None
        if got != rows * width:
            raise StaleIndex(f"{self.gen}.{kind} was truncated while in use ({got} of {rows * width} bytes)")
        return buf.reshape(rows, self.dim) if kind == "codes" else buf

    def rids_upto(self, n: int, last_rid: int) -> np.ndarray:
        """Row ids of rows [0, n), read once per process (rows keep their ids): ascending, in
        [1, last_rid], else StaleIndex."""
        with self.lock:
            have = len(self.rids)
            if have < n:
                more = self.pread("rids", have, n).copy()
                if len(more) and (
                    more[0] < 1 or (have and more[0] <= self.rids[-1]) or np.any(more[1:] <= more[:-1])
                ):
                    raise StaleIndex("row ids out of order (damaged rids file)")
                self.rids = np.concatenate([self.rids, more])
            rids = self.rids[:n]
        if n and rids[-1] > last_rid:
            raise StaleIndex("row ids beyond the covered range")
        return rids


@dataclass(frozen=True)
class View:
    """One header and the files it describes, as checked for one search (``SharedIndex.view``)."""

    header: dict[str, Any]
    files: _Files
    rids: np.ndarray  # row ids of rows [0, n)
    dead: np.ndarray  # tombstones of rows [0, n) as of the check (a copy)
    mapped: bool  # read through the mappings (else pread)

    @property
    def n(self) -> int:
        return int(self.header["n"])

    @property
    def last_rid(self) -> int:
        return int(self.header["last_rid"])

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    def rows(self, kind: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of ``kind``: a slice of the mapping, or read into ``out``."""
        if self.mapped:
            return self.files.maps[kind][start:stop]
        return self.files.pread(kind, start, stop, out)


class SharedIndex:
    """The index directory of one store (see the module docstring). Safe across threads."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)  # created by the first process that writes the index
        self._header_path = self.dir / "header.json"
        self._lock = threading.Lock()  # this process's mapping and flock state
        self._flock = threading.Lock()  # one thread of this process at a time holds the file lock
        self._files: _Files | None = None
        self._local = threading.local()
        self._probes: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._store: str | None = None  # the database file, learnt from the first caller's connection
        self._now_conns = Connections(self._connect_now)  # per thread: outside every snapshot
        self.rebuilds = 0  # full builds from SQLite by this process
        self.catch_ups = 0  # incremental updates of the files by this process

    def close(self) -> None:
        """Close the connections and files this object opened (it opens new ones if used again;
        a view still in use keeps its files open until it is dropped)."""
        self._now_conns.close()
        with self._lock:
            self._files = None

    # -- the store as of now, beyond the caller's snapshot ---------------------------------------

    def _connect_now(self) -> sqlite3.Connection:
        assert self._store is not None
        return sqlite3.connect(
            f"{Path(self._store).resolve().as_uri()}?mode=ro", uri=True, timeout=60, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip

    def _now(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """This thread's read-only connection to the store of ``db``, never inside a transaction:
        each query sees the latest commit (the caller's ``db`` is inside its read snapshot)."""
        if self._store is None:
            self._store = db.execute("PRAGMA database_list").fetchone()[2]
        return self._now_conns.get()

    def _changed_since(self, db: sqlite3.Connection, seq: int, rids: list[int]) -> set[int]:
        """Which of ``rids`` the changes log holds after ``seq`` *now*, beyond the caller's snapshot."""
        rows = self._now(db).execute(
            "SELECT rid FROM changes WHERE seq > ? AND rid IN (SELECT value FROM json_each(?))",
            (seq, json.dumps(rids)),
        )
        return {r for (r,) in rows}

    def _changed_after(self, db: sqlite3.Connection, seq: int) -> np.ndarray | None:
        """Row ids changed (deleted or re-embedded) by commits after ``seq``, as of now; None if the
        log was trimmed past ``seq`` meanwhile (which rows changed is then unknown)."""
        sql = (
            "SELECT (SELECT value FROM meta WHERE key = 'pruned'),"
            " (SELECT group_concat(rid) FROM changes WHERE seq > ?)"
        )
        pruned, rids = self._now(db).execute(sql, (seq,)).fetchone()
        return None if int(pruned or 0) > seq else int_array(rids)

    # -- header and files ------------------------------------------------------------------------

    def read_header(self) -> dict[str, Any] | None:
        """The published header, or None when absent or unreadable (a torn/garbage file)."""
        try:
            raw = self._header_path.read_bytes()
            header = json.loads(raw)
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict) or header.get("check") != _checksum(header):
            return None
        return header

    def _publish(self, header: dict[str, Any]) -> None:
        header = {**header, "check": 0}
        header["check"] = _checksum(header)
        tmp = self.dir / f"header.json.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(json.dumps(header, sort_keys=True))
            os.replace(tmp, self._header_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _map(self, gen: int, dim: int, rows: int) -> _Files:
        with self._lock:
            files = self._files
            if (
                files is None
                or files.gen != gen
                or files.dim != dim
                or (files.maps and min(len(m) for m in files.maps.values()) < rows)
            ):  # another generation, or mapped before it grew: opened again
                old = files
                files = _Files(self.dir, gen, dim)
                if old is not None and old.gen == gen:
                    files.checked_upto, files.sampled = old.checked_upto, old.sampled
                self._files = files
            return files

    def view(self, db: sqlite3.Connection, state: StoreState, header: dict[str, Any] | None, *,
             ahead_ok: bool = False) -> View:  # fmt: skip
        """The files as of ``header``, checked against ``state`` (StaleIndex if they do not fit).

        ``header`` must have been read before the snapshot began (unless ``ahead_ok``): a header
        ahead of the snapshot then means the database lost commits the files still hold.
        """
        if header is None:
            raise StaleIndex("no index yet")
        if header.get("format") != FORMAT:
            raise StaleIndex(f"format {header.get('format')!r}, this code reads {FORMAT}")
        if (header["store"], header["epoch"]) != (state.uid, state.epoch):
            raise StaleIndex("made for another store or before a reset")
        if (header["model"], header["dim"]) != (state.model, state.dim):
            raise StaleIndex(f"made for model {header['model']} (dim {header['dim']})")
        if header["seq"] < state.pruned:
            raise StaleIndex("behind the trimmed changes log")
        if not ahead_ok and (header["seq"] > state.seq or header["last_rid"] > state.high):
            raise StaleIndex("ahead of the database (commits lost?)")
        n, last = int(header["n"]), int(header["last_rid"])
        if last:
            row = db.execute("SELECT id FROM memories WHERE rid = ?", (last,)).fetchone()
            if row is not None and row[0] != header["last_id"]:
                raise StaleIndex(f"row {last} is another memory than the index holds")
        try:
            files = self._map(int(header["gen"]), state.dim, n)
        except FileNotFoundError:
            raise StaleIndex("its files are gone") from None
        except OSError as exc:  # unreadable (permissions, an I/O error): rebuilt, or not used
            raise StaleIndex(f"its files cannot be opened: {exc}") from None
        # check before use: a file shorter than n rows (truncated by someone) is never read
        signature = files.stat()
        for kind, st in zip(_KINDS, signature, strict=True):
            if st[0] < n * files.width[kind]:
                raise StaleIndex(f"files truncated: {header['gen']}.{kind} holds fewer than {n} rows")
        mapped = len(files.maps) == len(_KINDS) and all(
            len(files.maps[k]) >= n and not st[3] & 0o222 for k, st in zip(_KINDS, signature, strict=True)
        )
        dead = files.maps["dead"][:n].copy() if mapped else files.pread("dead", 0, n)
        view = View(header, files, files.rids_upto(n, last), dead, mapped)
        self._verify(db, view, signature)
        ahead = header["seq"] > state.seq or header["last_rid"] > state.high
        if (files.checked_upto < n or not files.sampled) and not ahead:
            # (rows of a header ahead of this snapshot may be missing or changed in it: checked
            # by the next search that sees this header from a newer snapshot)
            self._spot_check(db, view)
        return view

    def _verify(self, db: sqlite3.Connection, view: View, signature: tuple[Any, ...]) -> None:
        """The check value of every row not yet verified by this process since the files last
        changed (``signature``: any write, ours or anyone's, changes it), and the tombstones
        against the header's count: StaleIndex for damage.

        Rows changed by commits after the header (a writer patches them in place, the check value
        last) are masked by every search, so a mismatch there is no damage.
        """
        files, n = view.files, view.n
        blocks = -(-n // _CHUNK)
        with files.lock:
            if files.signature != signature:
                files.signature, files.verified, files.verified_n = signature, np.zeros(0, dtype=bool), 0
            if len(files.verified) < blocks:
                more = np.zeros(blocks - len(files.verified), dtype=bool)
                files.verified = np.concatenate([files.verified, more])
            if n > files.verified_n:  # rows appended since: their block is checked again
                files.verified[files.verified_n // _CHUNK :] = False
            todo = np.flatnonzero(~files.verified[:blocks]).tolist()
        bad: list[int] = []
        good: list[int] = []
        for block in todo:
            start, stop = block * _CHUNK, min(n, (block + 1) * _CHUNK)
            codes = view.rows("codes", start, stop, self._buffer("codes", view.files.dim))
            scales = view.rows("scales", start, stop, self._buffer("scales", 1))
            check = view.rows("check", start, stop, self._buffer("check", 1))
            wrong = np.flatnonzero(row_checks(codes, scales, view.rids[start:stop]) != check)
            if len(wrong):
                bad += (wrong + start).tolist()
            else:
                good.append(block)
        if bad:
            rids = view.rids[bad].tolist()
            damaged = sorted(set(rids) - self._changed_since(db, view.seq, rids))
            if damaged:
                raise StaleIndex(f"row {damaged[0]} is damaged ({len(damaged)} rows: check values differ)")
        dead = int(np.count_nonzero(view.dead))
        if dead != int(view.header["dead"]):  # tombstones set since the header must be for changed rows
            later = self._changed_after(db, view.seq)
            if later is None:
                raise StaleIndex("behind the trimmed changes log")
            pos = np.searchsorted(view.rids, later)
            pos = pos[pos < n]
            pos = _sorted_unique(pos[_isin(view.rids[pos], later)])
            if dead - int(np.count_nonzero(view.dead[pos])) != int(view.header["dead"]):
                raise StaleIndex(f"tombstones damaged: {dead} set, the header counts {view.header['dead']}")
        with files.lock:
            if files.signature == signature:
                files.verified[good] = True
                if not bad:
                    files.verified_n = max(files.verified_n, n)

    def _spot_check(self, db: sqlite3.Connection, view: View) -> None:
        """Rows of the files against the float32 vectors in SQLite (codes are deterministic)."""
        files, n = view.files, view.n
        new = range(max(files.checked_upto, n - SPOT_CHECKS), n)
        pos = set(new)
        if not files.sampled and n:
            pos.update(random.Random().sample(range(n), min(SPOT_CHECKS, n)))
        if pos:
            at = np.array(sorted(pos), dtype=np.int64)
            rids = view.rids[at]
            changed = {r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (view.seq,))}
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
                for rid in set(bad) - self._changed_since(db, view.seq, list(bad)):
                    raise StaleIndex(bad[rid])
        with self._lock:
            files.checked_upto = max(files.checked_upto, n)
            files.sampled = True

    # -- the file lock ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, wait: bool) -> Iterator[bool]:
        """Hold the store's index lock (yields False, holding nothing, if busy and not ``wait``)."""
        if not self._flock.acquire(blocking=wait):
            yield False
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # released when the block ends, or by the kernel when this process is killed
            with locked(self.dir / "lock", timeout=None if wait else 0, mode=0o644) as held:
                yield held
        finally:
            self._flock.release()

    # -- writing (under the lock, in a read snapshot of the store) -------------------------------

    def _open_rw(self, gen: int) -> dict[str, int]:
        """The files of generation ``gen`` open for writing (created if missing). They stay
        read-only for everyone (0444) between writes, so that no one but root can shrink them
        under a reader's mapping (``_mappable``): made writable for the moment of the open."""
        fds: dict[str, int] = {}
        try:
            for kind in _KINDS:
                path = self.dir / f"{gen}.{kind}"
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(path, 0o644)
                fds[kind] = os.open(path, os.O_RDWR | os.O_CREAT, 0o444)
                os.fchmod(fds[kind], 0o444)
        except BaseException:
            self._close(fds)
            raise
        return fds

    @staticmethod
    def _close(fds: dict[str, int]) -> None:
        for fd in fds.values():
            os.close(fd)

    def _discard(self, gen: int) -> None:
        """Remove the files of an unpublished generation (a build that failed: no partial files)."""
        for kind in _KINDS:
            with contextlib.suppress(OSError):
                (self.dir / f"{gen}.{kind}").unlink()

    @staticmethod
    def _grow(fds: dict[str, int], dim: int, rows: int) -> None:
        for kind, width in (("codes", dim), ("rids", 8), ("scales", 4), ("dead", 1), ("check", 4)):
            if os.fstat(fds[kind]).st_size < rows * width:
                os.ftruncate(fds[kind], rows * width)

    @staticmethod
    def _capacity(rows: int) -> int:
        return -(-max(rows + rows // 4, 4096) // 4096) * 4096

    @staticmethod
    def _write_rows(fds: dict[str, int], dim: int, at: int, rids: np.ndarray, vectors: np.ndarray) -> None:
        codes, scales = quantise(vectors)
        rids = rids.astype(np.int64)
        _pwrite(fds["codes"], codes.tobytes(), at * dim)
        _pwrite(fds["rids"], rids.tobytes(), at * 8)
        _pwrite(fds["scales"], scales.tobytes(), at * 4)
        _pwrite(fds["dead"], bytes(len(rids)), at)
        _pwrite(fds["check"], row_checks(codes, scales, rids).tobytes(), at * 4)

    def rebuild(self, db: sqlite3.Connection, state: StoreState) -> dict[str, Any]:
        """A new generation from the snapshot ``db`` is in; the caller holds the lock.

        On any failure (a full disk, an unwritable folder) its files are removed and the error
        raised: the previous generation, if any, stays published.
        """
        old = self.read_header()
        gens = [int(p.name.split(".")[0]) for p in self.dir.glob("*.codes") if p.name.split(".")[0].isdigit()]
        # never a number used before, also when the directory was wiped: a process that still maps
        # the unlinked files of a generation would take a new one of the same number for them
        gen = max([*gens, int(old["gen"]) if old else 0, time.time_ns() // 1000]) + 1
        count = db.execute("SELECT count(*) FROM memories").fetchone()[0]
        n, last_rid, last_id = 0, 0, ""
        try:
            fds = self._open_rw(gen)
            try:
                self._grow(fds, state.dim, self._capacity(count))
                cur = db.execute("SELECT rid, id, vec FROM memories ORDER BY rid")
                while rows := cur.fetchmany(_CHUNK):
                    rids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                    self._grow(fds, state.dim, n + len(rows))
                    self._write_rows(fds, state.dim, n, rids, _blobs(rows, 2, state.dim))
                    n += len(rows)
                    last_rid, last_id = int(rows[-1][0]), rows[-1][1]
            finally:
                self._close(fds)
            header = {
                "format": FORMAT, "store": state.uid, "epoch": state.epoch, "model": state.model,
                "dim": state.dim, "gen": gen, "n": n, "last_rid": last_rid, "last_id": last_id,
                "seq": state.seq, "dead": 0,
            }  # fmt: skip
            self._publish(header)
        except BaseException:
            self._discard(gen)
            raise
        self.rebuilds += 1
        self._drop_other_generations(gen)
        return header

    def _drop_other_generations(self, gen: int) -> None:
        """Files of older generations and stray temporary headers (mapped copies stay valid)."""
        for p in self.dir.iterdir():
            first = p.name.split(".")[0]
            if (first.isdigit() and int(first) != gen) or p.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def catch_up(self, db: sqlite3.Connection, state: StoreState, header: dict[str, Any]) -> dict[str, Any]:
        """Apply changes and append the tail since ``header`` (valid for this snapshot; lock held)."""
        n, dim, seq = int(header["n"]), state.dim, int(header["seq"])
        files = self._map(int(header["gen"]), dim, n)
        gen = int(header["gen"])
        dead = int(header["dead"])
        fds = self._open_rw(gen)
        try:
            changed = np.array(
                sorted({r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (seq,))}),
                dtype=np.int64,
            )
            changed = changed[changed <= int(header["last_rid"])]
            if len(changed):
                rids = files.rids_upto(n, int(header["last_rid"]))
                pos = np.searchsorted(rids, changed)
                held = pos < n
                held[held] &= rids[pos[held]] == changed[held]
                changed, pos = changed[held], pos[held]
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
                        _pwrite(fds["codes"], codes.tobytes(), p * dim)
                        _pwrite(fds["scales"], scales.tobytes(), p * 4)
                        check = row_checks(codes, scales, np.array([rid], dtype=np.int64))
                        _pwrite(fds["check"], check.tobytes(), p * 4)
                    else:  # deleted after the header (a killed writer may have set it already)
                        _pwrite(fds["dead"], b"\x01", p)
                        dead += 1
            last_rid, last_id = int(header["last_rid"]), header["last_id"]
            cur = db.execute("SELECT rid, id, vec FROM memories WHERE rid > ? ORDER BY rid", (last_rid,))
            while rows := cur.fetchmany(_CHUNK):
                rids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                if os.fstat(fds["codes"]).st_size < (n + len(rows)) * dim:
                    self._grow(fds, dim, self._capacity(n + len(rows)))
                self._write_rows(fds, dim, n, rids, _blobs(rows, 2, dim))
                n += len(rows)
                last_rid, last_id = int(rows[-1][0]), rows[-1][1]
        finally:
            self._close(fds)
        new = {**header, "n": n, "last_rid": last_rid, "last_id": last_id, "seq": state.seq, "dead": dead}
        self.catch_ups += 1
        if dead > max(COMPACT_MIN, n // 4):
            return self._compact(new, dim)
        self._publish(new)
        return new

    def _compact(self, header: dict[str, Any], dim: int) -> dict[str, Any]:
        """A new generation without the dead rows, copied from the current files (no SQLite).

        Every block is verified before it is copied (check values, and the tombstones against the
        header's count): damage is never copied forward; StaleIndex, and the caller rebuilds.
        """
        n = int(header["n"])
        files = self._map(int(header["gen"]), dim, n)
        rids_all = files.rids_upto(n, int(header["last_rid"]))
        dead = files.pread("dead", 0, n)
        if (count := int(np.count_nonzero(dead))) != int(header["dead"]):
            raise StaleIndex(f"tombstones damaged: {count} set, {header['dead']} deleted")
        gen = int(header["gen"]) + 1
        out = 0
        try:
            fds = self._open_rw(gen)
            try:
                for fd in fds.values():
                    os.ftruncate(fd, 0)  # files of a compaction killed before it published
                self._grow(fds, dim, self._capacity(n - int(header["dead"])))
                for at in range(0, n, _CHUNK):
                    stop = min(at + _CHUNK, n)
                    codes, scales = files.pread("codes", at, stop), files.pread("scales", at, stop)
                    rids, check = rids_all[at:stop], files.pread("check", at, stop)
                    wrong = np.flatnonzero(row_checks(codes, scales, rids) != check)
                    if len(wrong):
                        raise StaleIndex(f"row {rids[wrong[0]]} is damaged (found by compaction)")
                    keep = np.flatnonzero(dead[at:stop] == 0)
                    if not len(keep):
                        continue
                    _pwrite(fds["codes"], codes[keep].tobytes(), out * dim)
                    _pwrite(fds["rids"], rids[keep].tobytes(), out * 8)
                    _pwrite(fds["scales"], scales[keep].tobytes(), out * 4)
                    _pwrite(fds["dead"], bytes(len(keep)), out)
                    _pwrite(fds["check"], check[keep].tobytes(), out * 4)
                    out += len(keep)
            finally:
                self._close(fds)
            new = {**header, "gen": gen, "n": out, "dead": 0}
            self._publish(new)
        except BaseException:
            self._discard(gen)
            raise
        self._drop_other_generations(gen)
        return new

    # -- search (in the caller's snapshot) -------------------------------------------------------

    def _buffer(self, kind: str, width: int) -> np.ndarray:
        """This thread's buffer for ``_CHUNK`` rows of ``kind`` read with pread (bounded: ~3 MB)."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = {}
        buf = bufs.get(kind)
        if buf is None or buf.size < _CHUNK * width:
            buf = bufs[kind] = np.empty(_CHUNK * width, dtype=_DTYPES[kind])
        return buf

    def _dots(self, rows: int) -> np.ndarray:
        buf = getattr(self._local, "dots", None)
        if buf is None or buf.shape[1] < rows:
            buf = np.empty((1, max(rows, 1024)), dtype=np.float32)
            self._local.dots = buf
        return buf[:, :rows]

    def _int8_rank(self, view: View, q8: np.ndarray, positions: np.ndarray | None, masked: np.ndarray,
                   count: int) -> np.ndarray:  # fmt: skip
        """Positions of the ``count`` best rows by int8 score (among ``positions`` if given)."""
        n = view.n
        if positions is None or len(positions) * 4 > n:  # one pass over all rows beats a gather
            dots = self._dots(n)
            if view.mapped:
                numkong.cdist(q8[None, :], view.files.maps["codes"][:n], metric="dot", out=dots,
                              out_dtype="float32")  # fmt: skip
                dots[0] *= view.files.maps["scales"][:n]
            else:  # block by block through a bounded buffer (pread: a truncated file reads short)
                codes_buf, scales_buf = self._buffer("codes", view.files.dim), self._buffer("scales", 1)
                for start in range(0, n, _CHUNK):
                    stop = min(n, start + _CHUNK)
                    codes = view.rows("codes", start, stop, codes_buf)
                    out = dots[:, start:stop]
                    numkong.cdist(q8[None, :], codes, metric="dot", out=out, out_dtype="float32")
                    dots[0, start:stop] *= view.rows("scales", start, stop, scales_buf)
            scores = dots[0]
            if len(masked):
                scores[masked] = -np.inf
            if positions is not None:
                scores = scores[positions]
            pos = positions
        else:
            pos = positions
            scores = self._gathered_scores(view, q8, pos)
            if len(masked):
                scores[_isin(pos, masked)] = -np.inf
        live = int(np.count_nonzero(scores > -np.inf)) if len(masked) else len(scores)
        count = min(count, live)
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        if count < len(scores):
            top = np.argpartition(scores, len(scores) - count)[len(scores) - count :]
        else:
            top = np.flatnonzero(scores > -np.inf)
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.astype(np.int64) if pos is None else pos[top]

    def _gathered_scores(self, view: View, q8: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """int8 scores of the rows at ``pos`` (a subset of at most a quarter of the rows)."""
        if view.mapped:
            codes, scales = view.files.maps["codes"][pos], view.files.maps["scales"][pos]
        else:  # the blocks holding them, each read from its first to its last wanted row
            order = np.argsort(pos, kind="stable")
            ranked = pos[order]
            codes = np.empty((len(pos), view.files.dim), dtype=np.int8)
            scales = np.empty(len(pos), dtype=np.float32)
            bounds = np.searchsorted(ranked, np.arange(0, view.n + _CHUNK, _CHUNK))
            for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
                if lo == hi:
                    continue
                first, last = int(ranked[lo]), int(ranked[hi - 1]) + 1
                at = ranked[lo:hi] - first
                block = view.rows("codes", first, last, self._buffer("codes", view.files.dim))
                codes[order[lo:hi]] = block[at]
                scales[order[lo:hi]] = view.rows("scales", first, last, self._buffer("scales", 1))[at]
        out = np.asarray(numkong.cdist(q8[None, :], codes, metric="dot", out_dtype="float32"))[0]
        return out * scales

    def _probe(self, db: sqlite3.Connection, state: StoreState, view: View, sql: str,
               params: list[Any], limit: int) -> np.ndarray | None:  # fmt: skip
        """Row ids (≤ last_rid) passing the filter, or None if more than ``limit`` (cached until
        the next write)."""
        key = (state.uid, state.version, view.last_rid, sql, tuple(params), limit)
        with self._lock:
            hit = self._probes.get(key)
            if hit is not None:
                self._probes.move_to_end(key)
                return None if len(hit) > limit else hit
        rids = int_array(
            db.execute(
                "SELECT group_concat(rid) FROM"
                f" (SELECT rid FROM memories WHERE rid <= ? AND ({sql}) LIMIT ?)",
                [view.last_rid, *params, limit + 1],
            ).fetchone()[0]
        )
        with self._lock:
            self._probes[key] = rids
            while len(self._probes) > 16:
                self._probes.popitem(last=False)
        return None if len(rids) > limit else rids

    def search(
        self,
        db: sqlite3.Connection,
        state: StoreState,
        view: View,
        query: np.ndarray,
        sql: str,
        params: list[Any],
        k: int,
        threshold: float | None,
    ) -> tuple[list[tuple[int, float]], int]:
        """``(rid, exact score)`` of the best ``k`` rows passing ``sql``, best first; and how many
        rows the files lag behind the snapshot (tail + changed: a catch-up is due past CATCH_UP)."""
        n, dim = view.n, state.dim
        query = np.ascontiguousarray(query, dtype=np.float32)
        changed = np.array(
            sorted({r for (r,) in db.execute("SELECT rid FROM changes WHERE seq > ?", (view.seq,))}),
            dtype=np.int64,
        )
        changed = changed[changed <= view.last_rid]
        masked = np.flatnonzero(view.dead)  # a copy: a writer may set tombstones meanwhile
        if len(changed):
            p = np.searchsorted(view.rids, changed)
            p = p[p < n]
            p = p[_isin(view.rids[p], changed)]
            masked = _sorted_unique(np.concatenate([masked, p]))
        filtered = sql != "1"
        cond = f" AND ({sql})" if filtered else ""
        exact: list[tuple[int, bytes]] = db.execute(
            f"SELECT rid, vec FROM memories WHERE rid > ?{cond}", [view.last_rid, *params]
        ).fetchall()
        if len(changed):
            exact += db.execute(
                f"SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?)){cond}",
                [json.dumps(changed.tolist()), *params],
            ).fetchall()
        want = max(RESCORE, 4 * k)
        peak = float(np.abs(query).max()) or 1.0
        q8 = np.clip(np.rint(query * (127 / peak)), -127, 127).astype(np.int8)
        chosen: np.ndarray  # row ids to re-score exactly (known to pass the filter)
        if n == 0:
            chosen = np.empty(0, dtype=np.int64)
        elif not filtered:
            chosen = view.rids[self._int8_rank(view, q8, None, masked, want)]
        else:
            # a small subset: scored by itself; a large one: the best of all rows, filter checked
            # (tried first, it needs no list of the subset); in between: int8 over the subset
            subset = self._probe(db, state, view, sql, params, SMALL_SUBSET)
            passing = None
            if subset is None:
                passing = self._post_filter(db, view, q8, masked, want, sql, params, once=True)
                if passing is None:
                    subset = self._probe(db, state, view, sql, params, PREFILTER_MAX)
                    if subset is None:
                        passing = self._post_filter(db, view, q8, masked, want, sql, params, once=False)
            if passing is not None:
                chosen = np.empty(0, dtype=np.int64)
                exact += passing
            elif subset is not None:
                pos = np.searchsorted(view.rids, subset)
                found = pos < n
                found[found] &= view.rids[pos[found]] == subset[found]
                pos = pos[found]
                if len(pos) <= want:
                    chosen = view.rids[pos[~_isin(pos, masked)]]
                else:
                    chosen = view.rids[self._int8_rank(view, q8, pos, masked, want)]
        if len(chosen):
            exact += db.execute(
                "SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?))",
                (json.dumps(chosen.tolist()),),
            ).fetchall()
        # Rows changed by commits after this snapshot began may be tombstoned or carry new codes in
        # the files by now (a writer's catch-up patches in place; a header published by another
        # process may be ahead of the snapshot), so the int8 pass may have missed them: scored
        # exactly here, as this snapshot has them. Read after every read of the files above.
        late = self._changed_after(db, state.seq)
        if late is None:  # the log was trimmed past this snapshot meanwhile: every row, exactly
            exact += db.execute(f"SELECT rid, vec FROM memories WHERE rid > 0{cond}", params).fetchall()
        elif len(late):
            exact += db.execute(
                f"SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?)){cond}",
                [json.dumps(late.tolist()), *params],
            ).fetchall()
        lag = (state.high - view.last_rid) + len(changed)
        if not exact:
            return [], lag
        by_rid = dict(exact)  # a changed row can come twice (tail and changed): one copy
        rids = np.fromiter(by_rid, dtype=np.int64, count=len(by_rid))
        vecs = np.frombuffer(b"".join(by_rid.values()), dtype=np.float32).reshape(len(by_rid), dim)
        scores = vecs @ query
        if threshold is not None:
            keep = scores >= threshold
            scores, rids = scores[keep], rids[keep]
        order = np.lexsort((rids, -scores))[:k]
        return [(int(rids[i]), float(scores[i])) for i in order], lag

    def _post_filter(self, db: sqlite3.Connection, view: View, q8: np.ndarray, masked: np.ndarray, want: int,
                     sql: str, params: list[Any], once: bool) -> list[tuple[int, bytes]] | None:  # fmt: skip
        """``(rid, vec)`` of the rows passing ``sql`` among the int8 best of the whole index,
        taking more of the best (×4 each time) until at least ``want`` pass.

        The passing rows among the int8 top-C of all rows are exactly the int8 top of the
        filtered rows, so once ``want`` of them pass, this is at least as good as ranking the
        filtered rows. One query checks the filter and reads the vectors to re-score. With
        ``once``: one try only, None when too few pass.
        """
        live = view.n - len(masked)
        count = want + want // 4
        while True:
            top = view.rids[self._int8_rank(view, q8, None, masked, min(count, live))]
            rows = db.execute(
                f"SELECT rid, vec FROM memories WHERE rid IN (SELECT value FROM json_each(?)) AND ({sql})",
                [json.dumps(top.tolist()), *params],
            ).fetchall()
            if len(rows) >= want or count >= live:
                return rows
            if once:
                return None  # too few pass: the caller lists the subset instead
            count *= 4
