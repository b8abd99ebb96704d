"""What every SQLite file of hivemem needs when many processes open it at once."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


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
    if not group_concat:
        return np.empty(0, dtype=np.int64)
    return np.fromstring(group_concat, dtype=np.int64, sep=",")
