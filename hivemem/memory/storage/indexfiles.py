"""The files of one generation of the SQLite store's int8 index (see ``vectorindex``): their
layout, the check value of each row, reading them (mapped or with ``pread``) and writing them.

Per indexed row, aligned arrays, one file each: ``G.codes`` int8 × dim, ``G.rids`` int64
(ascending), ``G.scales`` float32, ``G.dead`` uint8 (tombstones), ``G.check`` float32
(``row_checks``). Files stay read-only for everyone (0444) between writes, so that nobody but
root can shrink them under a reader's mapping (``mappable``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numkong
import numpy as np
import numpy.typing as npt

from hivemem.memory.storage.indexheader import Header, StaleIndex

Array = npt.NDArray[Any]

CHUNK = 8192  # rows quantised, checked or copied at a time (bounded temporaries)
KINDS = ("codes", "rids", "scales", "dead", "check")
DTYPES: dict[str, type[np.generic]] = {
    "codes": np.int8, "rids": np.int64, "scales": np.float32, "dead": np.uint8, "check": np.float32,
}  # fmt: skip
_CHECK_MOD = 65_521  # the row id enters a row's check value modulo this prime (exact in float32)


def blobs(rows: list[tuple[Any, ...]], at: int, dim: int) -> Array:
    """The float32 vectors in column ``at`` of ``rows``, as one ``(len(rows), dim)`` array."""
    if not rows:
        return np.empty((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(r[at] for r in rows), dtype=np.float32).reshape(len(rows), dim)


# Set operations by sorting: numpy's isin/unique/union1d import numpy.ma on first use, a cost on
# a fresh process's first search (docs/memory.md#measurements-behind-the-design).
def sorted_unique(a: Array) -> Array:
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def isin(a: Array, b: Array) -> Array:
    """``np.isin(a, b)`` for integer arrays."""
    if not len(a) or not len(b):
        return np.zeros(len(a), dtype=bool)
    b = np.sort(b)
    pos = np.minimum(np.searchsorted(b, a), len(b) - 1)
    return cast(Array, b[pos] == a)


def positions(rids: Array, wanted: Array) -> Array:
    """Positions in ``rids`` (ascending) of those of ``wanted`` it holds."""
    pos = np.searchsorted(rids, wanted)
    found = pos < len(rids)
    found[found] &= rids[pos[found]] == wanted[found]
    return cast(Array, pos[found])


def pwrite(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` at ``offset``: a short write (the disk filled up) is an ENOSPC OSError."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no space left on device")
        view, offset = view[written:], offset + written


@functools.lru_cache(maxsize=4)
def _probe(dim: int) -> Array:
    """The fixed int8 vector whose inner product with a row's codes enters its check value: every
    entry is non-zero, so a change of any single code changes the product."""
    rng = np.random.default_rng(0x6869766D656D)  # fixed: writers and readers of every process agree
    probe: Array = (rng.integers(1, 128, dim) * rng.choice([-1, 1], dim)).astype(np.int8)
    return probe


def row_checks(codes: Array, scales: Array, rids: Array) -> Array:
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
    checks: Array = dots * scales.astype(np.float32) + (rids % _CHECK_MOD).astype(np.float32)
    checks = checks.astype(np.float32)
    return checks


def mappable(st: os.stat_result) -> bool:
    """Whether nobody but root (or this user, on purpose: chmod first) can shrink the file under a
    mapping: read-only for everyone, owned by this (non-root) user. Root ignores modes."""
    euid = os.geteuid()
    return euid != 0 and st.st_uid == euid and not st.st_mode & 0o222


class Files:
    """The files of one generation, open read-only: mapped where they cannot be shrunk under the
    mapping (``mappable``), read with ``pread`` otherwise (a shrunk file then reads short: an
    error, never SIGBUS). Kept open while a view uses them, so a replaced generation stays
    readable (its unlinked files live until the last descriptor closes)."""

    def __init__(
        self, directory: Path, gen: int, dim: int, mappable: Callable[[os.stat_result], bool]
    ) -> None:
        self.gen, self.dim = gen, dim
        self.width = {"codes": dim, "rids": 8, "scales": 4, "dead": 1, "check": 4}
        self.fds: dict[str, int] = {}
        self.maps: dict[str, Array] = {}
        caps = []
        try:
            for kind in KINDS:
                fd = os.open(directory / f"{gen}.{kind}", os.O_RDONLY)
                self.fds[kind] = fd
                st = os.fstat(fd)
                caps.append(st.st_size // self.width[kind])
                if st.st_size and mappable(st):
                    buf = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ)
                    rows = st.st_size // self.width[kind]
                    arr = np.frombuffer(buf, dtype=DTYPES[kind])[: rows * (dim if kind == "codes" else 1)]
                    self.maps[kind] = arr.reshape(-1, dim) if kind == "codes" else arr
        except BaseException:
            self.close()
            raise
        self.cap = min(caps)
        self.rids = np.empty(0, dtype=np.int64)  # row ids of rows [0, len) read so far (never rewritten)
        self.signature: tuple[Any, ...] | None = None  # what fstat said when the blocks were verified
        self.verified = np.zeros(0, dtype=bool)  # per block of CHUNK rows: check values matched
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
        """(size, mtime, ctime, mode) of each file, now: one fstat each."""
        out = []
        for kind in KINDS:
            st = os.fstat(self.fds[kind])
            out.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
        return tuple(out)

    def pread(self, kind: str, start: int, stop: int, out: Array | None = None) -> Array:
        """Rows [start, stop) of ``kind`` read with ``pread`` (into ``out`` if given)."""
        width = self.width[kind]
        rows = stop - start
        flat = rows * (self.dim if kind == "codes" else 1)
        buf = np.empty(flat, dtype=DTYPES[kind]) if out is None or out.size < flat else out
        buf = buf.reshape(-1)[:flat]
        try:
            got = os.preadv(self.fds[kind], [cast(Any, buf)], start * width) if rows else 0
        except OSError as exc:  # an I/O error: the files are not used
            raise StaleIndex(f"{self.gen}.{kind} cannot be read: {exc}") from None
        if got != rows * width:
            raise StaleIndex(f"{self.gen}.{kind} was truncated while in use ({got} of {rows * width} bytes)")
        return buf.reshape(rows, self.dim) if kind == "codes" else buf

    def rids_upto(self, n: int, last_rid: int) -> Array:
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

    header: Header
    files: Files
    rids: Array  # row ids of rows [0, n)
    dead: Array  # tombstones of rows [0, n) as of the check (a copy)
    mapped: bool  # read through the mappings (else pread)

    def rows(self, kind: str, start: int, stop: int, out: Array | None = None) -> Array:
        """Rows [start, stop) of ``kind``: a slice of the mapping, or read into ``out``."""
        if self.mapped:
            return self.files.maps[kind][start:stop]
        return self.files.pread(kind, start, stop, out)


class Scratch(threading.local):
    """This thread's buffers for reading blocks of rows and for int8 scores (bounded, sized in
    docs/memory.md#the-shared-vector-index)."""

    def __init__(self) -> None:
        self.bufs: dict[str, Array] = {}
        self.scores = np.empty((1, 0), dtype=np.float32)

    def buffer(self, kind: str, width: int) -> Array:
        """A buffer for ``CHUNK`` rows of ``kind`` read with pread."""
        buf = self.bufs.get(kind)
        if buf is None or buf.size < CHUNK * width:
            buf = self.bufs[kind] = np.empty(CHUNK * width, dtype=DTYPES[kind])
        return buf

    def dots(self, rows: int) -> Array:
        """A ``(1, rows)`` float32 buffer for the int8 scores of ``rows`` rows."""
        if self.scores.shape[1] < rows:
            self.scores = np.empty((1, max(rows, 1024)), dtype=np.float32)
        return self.scores[:, :rows]
