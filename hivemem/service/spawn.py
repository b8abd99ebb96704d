"""Start the service on demand, exactly once when many processes ask at the same moment.

The first caller takes an exclusive ``flock`` on ``<socket>.start.lock``, checks again that nobody
is listening, starts ``python -m hivemem.service`` detached (own session, output to
``<socket>.log``) and waits for the socket to accept connections; everyone else blocks on the lock
and, once they hold it, finds the service running. A lock dies with its holder, so a crashed starter
never wedges the others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hivemem.service import paths
from hivemem.service.errors import ServiceUnavailable

EXIT_ALREADY_RUNNING = 3  # mirrors server.EXIT_ALREADY_RUNNING without importing the server side


def can_connect(sock: Path) -> bool:
    """Whether a service accepts connections on ``sock`` right now."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


@contextlib.contextmanager
def _locked(path: Path, deadline: float) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        f"timed out waiting for another process to start the service ({path})"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_running(sock: Path, args: list[str], deadline: float) -> None:
    """Return once a service listens on ``sock``, starting one (with ``args``) if nobody does."""
    if can_connect(sock):
        return
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(paths.start_lock_path(sock), deadline):
        if can_connect(sock):
            return
        log = paths.log_path(sock)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hivemem.service", "--socket", str(sock), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        # Reap it when it exits so a dead service never lingers as a zombie of this worker.
        threading.Thread(target=proc.wait, name="hivemem-reaper", daemon=True).start()
        while time.monotonic() < deadline:
            if can_connect(sock):
                return
            code = proc.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise ServiceUnavailable(
                    f"the hivemem service exited with code {code} while starting; see {log}:\n{_tail(log)}"
                )
            time.sleep(0.02)
        raise ServiceUnavailable(f"the hivemem service did not start listening on {sock} in time; see {log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
