"""Advisory file locks between processes: the one ``flock`` helper every part uses.

Why ``flock``: the kernel drops the lock when its holder dies — ``kill -9`` and the OOM killer
included — so a crashed process never wedges the others, and nothing has to clean up stale lock
files. It locks an *open file description*, so the lock belongs to this ``FileLock`` object: a
second object in the same process (or another thread's) contends like any other process.

Users: the service's pid lock (held for the service's life: proof that its socket is not stale),
the lock of whoever starts the service, the model export, a results file of ``run_parallel``, and
a memory store's shared vector index.

Why not the ``filelock`` package: it opens the file with ``O_TRUNC``, so a process that merely
*tries* the service's pid lock would erase the holder's pid from it; and the pid lock must read and
write through the locked descriptor.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

_POLL_S = 0.02  # how often a waiter with a deadline tries again (flock cannot time out by itself)


class FileLock:
    """A ``flock`` on ``path`` (created ``mode`` if missing, never truncated or unlinked).

    ``acquire(timeout=None)`` waits as long as it takes, ``timeout=0`` tries once, a positive
    ``timeout`` retries until then; it returns whether the lock is held. ``exclusive=False``
    takes a shared lock (held by many at once, never while anyone holds it exclusively).
    Closing the descriptor (``release``, or the process dying) releases the lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, mode)

    def acquire(self, *, exclusive: bool = True, timeout: float | None = None) -> bool:
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if timeout is None:
            fcntl.flock(self.fd, kind)
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, kind | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def read(self, size: int = 64) -> str:
        """What the holder wrote into the file (e.g. its pid), for messages."""
        return os.pread(self.fd, size, 0).decode(errors="replace").strip()

    def write(self, text: str) -> None:
        """Replace the file's content (the holder recording who it is)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(
    path: str | os.PathLike[str], *, exclusive: bool = True, timeout: float | None = None, mode: int = 0o600
) -> Iterator[bool]:
    """``with locked(path, timeout=…) as held:`` — ``held`` is False when the lock was not had in
    time (nothing is held then); the lock is released when the block ends."""
    lock = FileLock(path, mode=mode)
    try:
        yield lock.acquire(exclusive=exclusive, timeout=timeout)
    finally:
        lock.release()
