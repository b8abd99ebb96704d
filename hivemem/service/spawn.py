"""Start the service on demand, exactly once when many processes ask at the same moment.

The first caller takes an exclusive ``flock`` on ``<socket>.start.lock``, checks again that nobody
is listening, starts ``python -m hivemem serve`` (``SERVICE_COMMAND``) detached (own session, output to
``<socket>.log``) and waits for the socket to accept connections; everyone else blocks on the lock
and, once they hold it, finds the service running. A lock dies with its holder, so a crashed starter
never wedges the others.

What is started: a running service records how it was started in ``<socket>.options.json``
(options, interpreter, working directory and the few environment variables it reads; removed when
it stops cleanly). If that file is there, the service died without stopping (``kill -9``, OOM) and
is started again exactly as it was — same HTTP port, keys, memory file, agent — not with the
options of whichever worker noticed. The file is used only if it belongs to this user and nobody
else may write it. Otherwise the caller's options apply, and a service started this way exits after
``AUTO_IDLE_TIMEOUT`` (600 s) without clients unless the caller chose ``idle_timeout``: nobody
started it by hand, so nobody would think to stop it. A service started by hand keeps running.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hivemem.errors import ServiceUnavailable
from hivemem.infra.locks import locked
from hivemem.service import paths

# The machine's service is what ``hivemem serve`` runs (the service with the companions the
# composition adds: MCP, and HTTP when asked); named here as a command, never imported.
SERVICE_COMMAND = ("-m", "hivemem", "serve")
EXIT_ALREADY_RUNNING = 3  # mirrors server.EXIT_ALREADY_RUNNING without importing the server side
AUTO_IDLE_TIMEOUT = 600.0  # seconds without a client before an auto-started service exits
# The environment variables a service reads, recorded so that its replacement sees the same ones.
RECORDED_ENV = ("HIVEMEM_API_KEY", "HIVEMEM_HOME", "HIVEMEM_CACHE", "HIVEMEM_EVENT_LOOP", "PYTHONPATH")


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


def ensure_running(sock: Path, args: list[str], deadline: float) -> float:
    """Return once a service listens on ``sock``, starting one (with ``args``) if nobody does.

    On a machine where the model was never prepared, the caller has it prepared first, in a child
    process of its own whose progress lines reach the caller's stderr (a user sees why the first
    call takes a minute; the service then starts in a second, and never holds the export's torch).
    Returns ``deadline`` moved on by the time that took, for the caller to go on with.
    """
    if can_connect(sock):
        return deadline
    from hivemem.embed.model import prepared_manifest  # only to start one: a relay stays stdlib-only

    started = time.monotonic()
    prepared_manifest()
    deadline += time.monotonic() - started
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    start_lock = paths.start_lock_path(sock)
    with locked(start_lock, timeout=max(0.0, deadline - time.monotonic())) as held:
        if not held:
            raise ServiceUnavailable(
                f"timed out waiting for another process to start the service ({start_lock})"
            )
        if can_connect(sock):
            return deadline
        log = paths.log_path(sock)
        command, env, cwd = start_command(sock, args)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env=env,
                cwd=cwd,
            )
        # Reap it when it exits so a dead service never lingers as a zombie of this worker.
        threading.Thread(target=proc.wait, name="hivemem-reaper", daemon=True).start()
        while time.monotonic() < deadline:
            if can_connect(sock):
                return deadline
            code = proc.poll()
            if code is not None and code != EXIT_ALREADY_RUNNING:
                raise ServiceUnavailable(
                    f"the hivemem service exited with code {code} while starting; see {log}:\n{_tail(log)}"
                )
            time.sleep(0.02)
        raise ServiceUnavailable(f"the hivemem service did not start listening on {sock} in time; see {log}")


def start_command(sock: Path, args: list[str]) -> tuple[list[str], dict[str, str] | None, str | None]:
    """``(argv, env, cwd)`` of the service to start on ``sock`` (see the module docstring)."""
    recorded = read_options(sock)
    if recorded is not None:
        command = [recorded["executable"], *SERVICE_COMMAND, "--socket", str(sock), *recorded["args"]]
        return command, {**os.environ, **recorded["env"]}, recorded["cwd"]
    if "--idle-timeout" not in args:
        args = [*args, "--idle-timeout", f"{AUTO_IDLE_TIMEOUT:g}"]
    return [sys.executable, *SERVICE_COMMAND, "--socket", str(sock), *args], None, None


def write_options(sock: Path, options: dict[str, Any]) -> None:
    """Record how this service was started (0600, replaced atomically); see ``start_command``."""
    path = paths.options_path(sock)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(options, f)
    os.replace(temp, path)


def read_options(sock: Path) -> dict[str, Any] | None:
    """The recorded options if they are ours and well formed, else None (the caller's apply)."""
    try:
        fd = os.open(paths.options_path(sock), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return None  # planted or loosened by someone else: never run what it says
        try:
            data = json.load(f)
        except ValueError:
            return None
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("args"), list)
        and all(isinstance(a, str) for a in data["args"])
        and isinstance(data.get("env"), dict)
        and all(k in RECORDED_ENV and isinstance(v, str) for k, v in data["env"].items())
        and isinstance(data.get("cwd"), str)
        and isinstance(data.get("executable"), str)
        and os.path.isdir(data["cwd"])
        and os.access(data["executable"], os.X_OK)
    )
    return data if ok else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
