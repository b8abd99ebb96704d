"""One int8 vector index per SQLite store, in files that every process of the machine maps.

Why: the index used to be an in-RAM float32 matrix built by each searching process, held once per
process and rebuilt before each fresh process's first search (figures:
docs/memory.md#the-shared-vector-index). Now the index lives next to the store
(``memory.sqlite-index/``) as plain files that processes read through the page cache, which holds
it once for all of them (the task library shares its file the same way), and a fresh process
searches at once. The files are mapped only where nobody else can shrink them (mode 0444, owned by
this non-root user: a mapping of a truncated file is SIGBUS); otherwise (root) read with ``pread``
in blocks.

What is in it, per indexed row (aligned arrays, one file each, generation ``G``):

* ``G.codes`` int8 × dim: the vector scaled by ``127 / max|v|`` and rounded (one scale per row,
  so appending never re-quantises anything); ``G.scales`` float32: ``max|v| / 127``;
* ``G.rids`` int64, ascending: the SQLite row ids (``AUTOINCREMENT``: never reused);
* ``G.dead`` uint8: 1 for a deleted row (a tombstone), until a compaction drops it;
* ``G.check`` float32: the row's check value (``row_checks``: codes, scale and row id).

Its size on disk and search times at 1M rows are in docs/memory.md#measurements-behind-the-design.
A search ranks every row by int8 inner product (numkong's SIMD kernel), takes the best
``RESCORE``, and re-scores them exactly from the float32 blobs in SQLite: scores are exact, and
the top-k equals the exact top-k unless a true top-k row ranks below ``RESCORE`` in int8
(recall@10 is measured by ``benchmarks/memory.py``).

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
cost, docs/memory.md#measurements-behind-the-design) and scores those rows exactly as its
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

The parts: ``indexheader`` (the typed header, the store state), ``indexfiles`` (the files, their
check values, mapped or ``pread`` reads), ``indexwrite`` (build, catch-up, compaction),
``indexverify`` (the checks), ``indexrank`` (the stages of a search) on the int8 engine both
backends share (``int8``). This module holds the directory, its lock and the upkeep that the
store only calls: ``after_write`` (the catch-up), ``begin``/``lagging`` around a read snapshot,
``nearest`` (a search that repairs a damaged index, or scans SQLite exactly when it cannot).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hivemem.infra.locks import locked
from hivemem.memory.storage import indexwrite
from hivemem.memory.storage.indexfiles import KINDS as _KINDS
from hivemem.memory.storage.indexfiles import Array, Files, View, row_checks
from hivemem.memory.storage.indexfiles import mappable as _mappable
from hivemem.memory.storage.indexheader import FORMAT, Header, StaleIndex, StoreState, parse, read_state
from hivemem.memory.storage.indexrank import Hits, Plan, Ranker, exact_search
from hivemem.memory.storage.indexverify import SPOT_CHECKS, LiveLog, spot_check, verify
from hivemem.memory.storage.int8 import RESCORE
from hivemem.memory.storage.sqlcompile import Compiled

__all__ = [
    "FORMAT",
    "RESCORE",
    "SPOT_CHECKS",
    "Header",
    "SharedIndex",
    "StaleIndex",
    "StoreState",
    "View",
    "exact_search",
    "read_state",
    "row_checks",
]  # fmt: skip

CATCH_UP = 256  # tail + changed rows at which a writer or reader brings the files up to date
SMALL_SUBSET = 2_000  # a filter matching up to this many rows: those rows, without a first try
PREFILTER_MAX = 50_000  # else, if the best of all rows hold too few that pass: int8 over the subset
# more rows: int8 over all rows, the filter checked on the best, more and more (see indexrank)
COMPACT_MIN = 1024  # compaction once more than max(this, a quarter of the rows) are dead
SMALL_REBUILD = 10_000  # a writer (re)builds a missing index itself only for stores this small
_log = logging.getLogger("hivemem.memory")


class _Session(threading.local):
    """Per thread: the header read before the open read snapshot began, the lag its searches saw."""

    header: Header | None = None
    lag = 0


class SharedIndex:
    """The index directory of one store (see the module docstring). Safe across threads."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)  # created by the first process that writes the index
        self._header_path = self.dir / "header.json"
        self._lock = threading.Lock()  # this process's mapping and flock state
        self._flock = threading.Lock()  # one thread of this process at a time holds the file lock
        self._files: Files | None = None
        self._ranker = Ranker()
        self._log = LiveLog()
        self._session = _Session()
        self._warned = False  # said once that the index cannot be used
        self.rebuilds = 0  # full builds from SQLite by this process
        self.catch_ups = 0  # incremental updates of the files by this process

    def close(self) -> None:
        """Close the connections and files this object opened (it opens new ones if used again;
        a view still in use keeps its files open until it is dropped)."""
        self._log.close()
        self._session = _Session()
        with self._lock:
            self._files = None

    # -- header and files ------------------------------------------------------------------------

    def read_header(self) -> Header | None:
        """The published header, or None when absent or unreadable (a torn/garbage file)."""
        try:
            return parse(self._header_path.read_bytes())
        except OSError:
            return None

    def _publish(self, header: Header | Mapping[str, Any]) -> None:
        if not isinstance(header, Header):
            header = Header.from_mapping(header)
        tmp = self.dir / f"header.json.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            tmp.write_text(header.to_json())
            os.replace(tmp, self._header_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _map(self, gen: int, dim: int, rows: int) -> Files:
        with self._lock:
            files = self._files
            if (
                files is None
                or files.gen != gen
                or files.dim != dim
                or (files.maps and min(len(m) for m in files.maps.values()) < rows)
            ):  # another generation, or mapped before it grew: opened again
                old = files
                files = Files(self.dir, gen, dim, _mappable)
                if old is not None and old.gen == gen:
                    files.checked_upto, files.sampled = old.checked_upto, old.sampled
                self._files = files
            return files

    @staticmethod
    def _fits(header: Header | None, state: StoreState, ahead_ok: bool) -> Header:
        """``header`` if it describes the store of ``state`` (StaleIndex with the reason if not)."""
        if header is None:
            raise StaleIndex("no index yet")
        if header.format != FORMAT:
            raise StaleIndex(f"format {header.format!r}, this code reads {FORMAT}")
        if (header.store, header.epoch) != (state.uid, state.epoch):
            raise StaleIndex("made for another store or before a reset")
        if (header.model, header.dim) != (state.model, state.dim):
            raise StaleIndex(f"made for model {header.model} (dim {header.dim})")
        if header.seq < state.pruned:
            raise StaleIndex("behind the trimmed changes log")
        if not ahead_ok and (header.seq > state.seq or header.last_rid > state.high):
            raise StaleIndex("ahead of the database (commits lost?)")
        return header

    def view(self, db: sqlite3.Connection, state: StoreState, header: Header | None, *,
             ahead_ok: bool = False) -> View:  # fmt: skip
        """The files as of ``header``, checked against ``state`` (StaleIndex if they do not fit).

        ``header`` must have been read before the snapshot began (unless ``ahead_ok``): a header
        ahead of the snapshot then means the database lost commits the files still hold.
        """
        header = self._fits(header, state, ahead_ok)
        n, last = header.n, header.last_rid
        if last:
            row = db.execute("SELECT id FROM memories WHERE rid = ?", (last,)).fetchone()
            if row is not None and row[0] != header.last_id:
                raise StaleIndex(f"row {last} is another memory than the index holds")
        try:
            files = self._map(header.gen, state.dim, n)
        except FileNotFoundError:
            raise StaleIndex("its files are gone") from None
        except OSError as exc:  # unreadable (permissions, an I/O error): rebuilt, or not used
            raise StaleIndex(f"its files cannot be opened: {exc}") from None
        # check before use: a file shorter than n rows (truncated by someone) is never read
        signature = files.stat()
        for kind, st in zip(_KINDS, signature, strict=True):
            if st[0] < n * files.width[kind]:
                raise StaleIndex(f"files truncated: {header.gen}.{kind} holds fewer than {n} rows")
        mapped = len(files.maps) == len(_KINDS) and all(
            len(files.maps[k]) >= n and not st[3] & 0o222 for k, st in zip(_KINDS, signature, strict=True)
        )
        dead = files.maps["dead"][:n].copy() if mapped else files.pread("dead", 0, n)
        view = View(header, files, files.rids_upto(n, last), dead, mapped)
        verify(db, view, signature, self._log, self._ranker.scratch)
        ahead = header.seq > state.seq or header.last_rid > state.high
        if (files.checked_upto < n or not files.sampled) and not ahead:
            # (rows of a header ahead of this snapshot may be missing or changed in it: checked
            # by the next search that sees this header from a newer snapshot)
            spot_check(db, view, self._log, self._lock)
        return view

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

    def rebuild(self, db: sqlite3.Connection, state: StoreState) -> Header:
        """A new generation from the snapshot ``db`` is in; the caller holds the lock.

        On any failure (a full disk, an unwritable folder) its files are removed and the error
        raised: the previous generation, if any, stays published.
        """
        old = self.read_header()
        gens = [int(p.name.split(".")[0]) for p in self.dir.glob("*.codes") if p.name.split(".")[0].isdigit()]
        # never a number used before, also when the directory was wiped: a process that still maps
        # the unlinked files of a generation would take a new one of the same number for them
        gen = max([*gens, old.gen if old else 0, time.time_ns() // 1000]) + 1
        try:
            n, last_rid, last_id = indexwrite.build(self.dir, gen, db, state.dim)
            header = Header(
                format=FORMAT, store=state.uid, epoch=state.epoch, model=state.model, dim=state.dim,
                gen=gen, n=n, last_rid=last_rid, last_id=last_id, seq=state.seq, dead=0,
            )  # fmt: skip
            self._publish(header)
        except BaseException:
            indexwrite.discard(self.dir, gen)
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

    def catch_up(self, db: sqlite3.Connection, state: StoreState, header: Header) -> Header:
        """Apply changes and append the tail since ``header`` (valid for this snapshot; lock held)."""
        files = self._map(header.gen, state.dim, header.n)
        new = indexwrite.catch_up(self.dir, files, db, header, state.seq)
        self.catch_ups += 1
        if new.dead > max(COMPACT_MIN, new.n // 4):
            return self._compact(new)
        self._publish(new)
        return new

    def _compact(self, header: Header) -> Header:
        """A new generation without the dead rows, copied from the current files (no SQLite);
        StaleIndex for damage found on the way (the caller rebuilds)."""
        files = self._map(header.gen, header.dim, header.n)
        gen = header.gen + 1
        try:
            new = header.but(gen=gen, n=indexwrite.compact(self.dir, files, header, gen), dead=0)
            self._publish(new)
        except BaseException:
            indexwrite.discard(self.dir, gen)
            raise
        self._drop_other_generations(gen)
        return new

    # -- search (in the caller's snapshot) -------------------------------------------------------

    def search(self, db: sqlite3.Connection, state: StoreState, view: View, query: Array, where: Compiled,
               k: int, threshold: float | None) -> tuple[Hits, int]:  # fmt: skip
        """``(rid, exact score)`` of the best ``k`` rows passing ``where``, best first; and how many
        rows the files lag behind the snapshot (tail + changed: a catch-up is due past CATCH_UP)."""
        plan = Plan(rescore=RESCORE, small_subset=SMALL_SUBSET, prefilter_max=PREFILTER_MAX)
        return self._ranker.search(db, state, view, query, where, k, threshold, self._log, plan)

    # -- upkeep: what the store calls ------------------------------------------------------------

    def begin(self) -> None:
        """Before the store opens a read snapshot: the header is read first (see the docstring)."""
        self._session.header = self.read_header()
        self._session.lag = 0

    def lagging(self) -> bool:
        """After the snapshot: whether its searches found the files ``CATCH_UP`` rows behind."""
        return self._session.lag >= CATCH_UP

    def nearest(self, db: sqlite3.Connection, query: Array, where: Compiled, k: int,
                threshold: float | None, state: StoreState | None = None) -> Hits:  # fmt: skip
        """The best ``k`` rows passing ``sql`` in the open snapshot of ``db`` (after ``begin``):
        through the index, rebuilt first if damaged; every row exactly if it cannot be used.
        ``state``: ``read_state`` of that snapshot, if the caller has it already."""
        state = read_state(db) if state is None else state
        view = self._usable(db, state)
        hits, lag = None, 0
        if view is not None:
            try:
                hits, lag = self.search(db, state, view, query, where, k, threshold)
            except StaleIndex as exc:  # a file changed under this search: rebuilt, searched again
                view = self._rebuilt(db, state, view, exc)
                if view is not None:
                    with contextlib.suppress(StaleIndex):
                        hits, lag = self.search(db, state, view, query, where, k, threshold)
        if hits is None:  # no usable index: every row, exactly
            hits, lag = exact_search(db, query, where.sql, where.params, k, threshold), 0
        self._session.lag = max(self._session.lag, lag)
        return hits

    def after_write(self, db: sqlite3.Connection) -> None:
        """After a commit: bring the files up to date if they lag ``CATCH_UP`` rows or more.

        Never waits for the index lock (whoever holds it is doing the same work) and never fails
        the write, which is committed already: the index is derived, and readers repair it.
        """
        with contextlib.suppress(OSError, StaleIndex):
            self._catch_up(db, wait=False)

    def _catch_up(self, db: sqlite3.Connection, wait: bool) -> None:
        header = self.read_header()  # before the snapshot: see the module docstring
        db.execute("BEGIN")
        try:
            state = read_state(db)
            if state.model is None or not state.dim:
                return
            try:
                view = self.view(db, state, header)
                if (state.high - view.header.last_rid) + (state.seq - view.header.seq) < CATCH_UP:
                    return
            except StaleIndex:
                small = SMALL_REBUILD
                rows = db.execute("SELECT count(*) FROM (SELECT 1 FROM memories LIMIT ?)", (small + 1,))
                if not wait and rows.fetchone()[0] > small:
                    return  # a writer does not pay for rebuilding a large store: the first search does
            with self.locked(wait) as got:
                if got:
                    self._refresh(db, state, header)
        finally:
            db.execute("COMMIT")

    def _refresh(self, db: sqlite3.Connection, state: StoreState, before: Header | None) -> View:
        """Under the index lock, in a snapshot: the files brought up to this snapshot (or later).

        ``before`` is the header read before the snapshot began. A header published since (by
        whoever held the lock meanwhile) may be ahead of this snapshot, and is fine to use; the
        very header that was ahead of it before it began means lost commits: rebuilt.
        """
        header = self.read_header()
        try:
            view = self.view(db, state, header, ahead_ok=header != before)
            if view.header.seq >= state.seq and view.header.last_rid >= state.high:
                return view  # someone else is there already
            header = self.catch_up(db, state, view.header)
        except (StaleIndex, FileNotFoundError):
            header = self.rebuild(db, state)
        return self.view(db, state, header, ahead_ok=True)

    def _usable(self, db: sqlite3.Connection, state: StoreState) -> View | None:
        """The index as of this snapshot, or None: it cannot be built here (a full disk, an
        unwritable folder), and the search scans SQLite exactly instead."""
        try:
            return self.view(db, state, self._session.header)
        except StaleIndex:  # missing, stale, truncated, damaged or foreign: rebuilt (once), never used
            pass
        try:
            with self.locked(wait=True):
                return self._refresh(db, state, self._session.header)
        except (OSError, StaleIndex) as exc:
            self._unusable(exc)
            return None

    def _rebuilt(self, db: sqlite3.Connection, state: StoreState, view: View, exc: StaleIndex) -> View | None:
        """After damage found while a search read the files (a file truncated under it): the index
        rebuilt under the lock, unless someone did already; None if that fails too."""
        _log.warning("the vector index of %s is damaged (%s): rebuilding it", self._store_name, exc)
        try:
            with self.locked(wait=True):
                header = self.read_header()
                if header == view.header:
                    header = self.rebuild(db, state)
                return self.view(db, state, header, ahead_ok=True)
        except (OSError, StaleIndex) as exc2:
            self._unusable(exc2)
            return None

    def _unusable(self, exc: BaseException) -> None:
        """Say once per process why searches scan SQLite exactly (slower, never wrong)."""
        if not self._warned:
            self._warned = True
            _log.warning("the vector index of %s cannot be used (%s): exact searches", self._store_name, exc)

    @property
    def _store_name(self) -> str:
        """The store file this index belongs to (``STORE-index`` is its directory)."""
        return str(self.dir).removesuffix("-index")
