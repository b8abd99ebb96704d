"""The runner's results file: append-only JSONL, one record per item, safe to resume.

Each record is written with a single ``write`` of one complete line and flushed (optionally
fsync'd), so a killed runner leaves at most one torn *last* line; :meth:`ResultsFile.open` cuts
it off before appending again. A sidecar ``<file>.lock`` (``flock``) keeps two runners from
writing the same file at once; the lock dies with its process, so a ``kill -9`` never leaves a
stale lock behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from hivemem.infra.locks import FileLock
from hivemem.pool.failures import user_traceback

Key = str | int


class ResultsFile:
    """Exclusive, resumable access to one results file. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.records: dict[Key, dict[str, Any]] = {}
        self.torn_bytes = 0  # size of the torn last line that was cut off, if any
        self._lock: FileLock | None = None
        self._out: IO[bytes] | None = None

    def __enter__(self) -> ResultsFile:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Lock, load what earlier runs recorded, drop a torn last line, and get ready to append."""
        if self.path.is_dir():
            raise ValueError(f"results path {self.path} is a directory, expected a .jsonl file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(f"{self.path}.lock", mode=0o644)  # held until close()
        if not lock.acquire(timeout=0):
            lock.release()
            raise RuntimeError(f"another run is writing to {self.path} (its lock file is held)")
        self._lock = lock
        try:
            self._load()
            self._out = open(self.path, "ab")  # noqa: SIM115 - held until close()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        good_end = 0
        for lineno, line in enumerate(data.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):  # the runner died mid-write: this item is simply redone
                self.torn_bytes = len(line)
                break
            good_end += len(line)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(
                    f"{self.path}:{lineno}: not a JSON line ({exc}); refusing to resume"
                ) from None
            if not isinstance(rec, dict) or "key" not in rec or "ok" not in rec:
                raise ValueError(f"{self.path}:{lineno}: not a hivemem results record (needs 'key' and 'ok')")
            self.records[rec["key"]] = rec
        if self.torn_bytes:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def drop(self, keys: set[Key]) -> None:
        """Remove the records of ``keys`` (errors about to be retried), atomically.

        The new content is written to a temp file and renamed over the old one, so a crash
        leaves either the old file or the new one, never a half-written mix.
        """
        if not keys:
            return
        kept = [rec for k, rec in self.records.items() if k not in keys]
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.writelines(_line(rec) for rec in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for k in keys:
            self.records.pop(k, None)
        if self._out is not None:
            self._out.close()
            self._out = open(self.path, "ab")  # noqa: SIM115 - held until close()

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as one line, then flush (and fsync if asked)."""
        assert self._out is not None, "ResultsFile is not open"
        self._out.write(_line(record))
        self._out.flush()
        if self.fsync:
            os.fsync(self._out.fileno())
        self.records[record["key"]] = record

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def read_results(path: str | os.PathLike[str]) -> dict[Key, dict[str, Any]]:
    """The records of a results file by key (a torn last line is ignored, the file is untouched)."""
    records: dict[Key, dict[str, Any]] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n") and line.strip():
                rec = json.loads(line)
                records[rec["key"]] = rec
    return records


def error_fields(exc: BaseException) -> dict[str, Any]:
    """The error part of a record (also built on cluster workers, where the exception happened);
    the traceback starts at the user's code (:func:`hivemem.pool.failures.user_traceback`)."""
    return {
        "ok": False,
        "error": f"{type(exc).__name__}: {exc}",
        "error_type": type(exc).__name__,
        "traceback": user_traceback(exc),
    }
