"""What every SQLite file of hivemem needs when many threads and processes open it at once.

One helper each, used by the embedding cache, the memory store and the task library:
``Connections`` (a connection per thread and process, all closed by ``close()``), ``in_chunks``
(``IN (…)`` lists under SQLite's variable limit), ``enable_wal``, ``retry_locked``, and
``disk_full`` (SQLite's "database or disk is full" as the ``DiskFull`` that names the file).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # numpy only where a memory store reads id lists: task workers never load it
    import numpy as np

from hivemem.errors import DiskFull

T = TypeVar("T")

# Values per ``IN (…)`` query: SQLite allows 32,766 variables per statement (999 before 3.32);
# 500 stays far below either, and fetching a few thousand rows in 500s costs nothing measurable.
IN_CHUNK = 500


class Connections:
    """One SQLite connection per thread *and process*, opened on first use by ``connect()``.

    Per thread: a connection serialises everything done through it, and holds its own read
    snapshot, so threads must not share one. Per process: SQLite forbids carrying an open
    connection across ``fork()`` (the child would share the parent's file locks and caches); a
    forked child that inherited this object opens its own connection on first use, and never
    touches — or closes — the parent's. ``close()`` closes every connection this process opened,
    from whichever thread opened it (a thread that later uses the object again reconnects).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[sqlite3.Connection] = []
        self._pid = os.getpid()

    def get(self) -> sqlite3.Connection:
        """This thread's connection in this process (opened now if it has none)."""
        local = self._local
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == pid:
            return conn
        conn = self._connect()
        with self._lock:
            if self._pid != pid:  # forked: the parent's connections are not ours to use or close
                self._opened, self._pid = [], pid
            self._opened.append(conn)
        local.conn, local.pid = conn, pid
        return conn

    def close(self) -> None:
        """Close every connection this process opened through this object."""
        with self._lock:
            mine = self._opened if self._pid == os.getpid() else []
            self._opened, self._pid = [], os.getpid()
            self._local = threading.local()
        for conn in mine:
            conn.close()


def in_chunks(values: Sequence[T], size: int = IN_CHUNK) -> Iterator[tuple[str, Sequence[T]]]:
    """``(marks, chunk)`` pairs for an ``IN (…)`` query over many values: ``chunk`` holds at most
    ``size`` of them and ``marks`` is ``"?,?,…"`` with one ``?`` per value::

        for marks, chunk in in_chunks(keys):
            rows += db.execute(f"SELECT vec FROM vectors WHERE key IN ({marks})", chunk).fetchall()
    """
    for start in range(0, len(values), size):
        chunk = values[start : start + size]
        yield ",".join("?" * len(chunk)), chunk


def enable_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL (persistent: only the first opener really changes it)."""
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode=WAL")


def retry_locked(step: Callable[[], T], timeout: float) -> T:
    """Run ``step``, retrying while SQLite says the file is locked or busy.

    Switching to WAL and creating the schema need a moment of exclusive access; when several
    processes open a new file at once, SQLite can answer SQLITE_BUSY without consulting the busy
    handler, so ``busy_timeout`` alone does not help there.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def int_array(group_concat: str | None) -> np.ndarray:
    """The integers of an SQL ``group_concat(...)`` as an array: ~5× faster than fetching one row
    per integer (no Python tuple per row), which matters for lists of thousands of row ids."""
    import numpy as np

    if not group_concat:
        return np.empty(0, dtype=np.int64)
    return np.fromstring(group_concat, dtype=np.int64, sep=",")


def disk_full(exc: BaseException, what: str) -> DiskFull | None:
    """``exc`` as a ``DiskFull`` naming ``what`` (e.g. "memory database /x/memory.sqlite") when it
    says the disk is full — SQLite's SQLITE_FULL or an ``OSError`` with ENOSPC — else None.

    Why: SQLite reports a full disk as ``OperationalError: database or disk is full``, which
    names neither the file nor what to do, and callers could only tell it apart by its text.
    """
    if isinstance(exc, DiskFull):
        return exc
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    full = code == sqlite3.SQLITE_FULL or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC)
    if not full:
        return None
    return DiskFull(f"{what}: disk full, nothing of this write was stored (free some space and retry; {exc})")
