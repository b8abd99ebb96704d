"""A throwaway PostgreSQL server with pgvector, for the test suite and the benchmarks.

``make test`` must run on a fresh machine with nothing installed but Python, so the server comes
from a wheel: ``pgserver`` (PostgreSQL 16.2 + pgvector 0.6.2, ~34 MB, pulled in by the ``dev``
extra). Only its binaries are used; the server's life is managed here, because a test server must
never outlive the test run:

* it is a child process started with ``PR_SET_PDEATHSIG`` (Linux), so when the process that
  started it dies, even by ``kill -9``, the kernel sends the postmaster SIGINT (fast shutdown);
* it listens on a Unix socket in its own temporary directory only (no TCP port to collide with
  another run on the same machine);
* ``stop()`` shuts it down (SIGINT, then SIGQUIT, then SIGKILL) and removes the directory, and a
  new server first removes the directories of earlier runs whose owner is gone.

PostgreSQL refuses to run as root. As root the server runs as the ``nobody`` user (no user is
created); the binaries are copied next to the data directory when ``nobody`` cannot read them
where they are (e.g. a virtual environment under ``/root``). Measured here: initdb + start
≈ 1.5 s. A system PostgreSQL with pgvector is used instead when ``HIVEMEM_PG_BIN`` names its
``bin`` directory.

Use::

    from pgtemp import TempPostgres  # tests/ is on sys.path (conftest.py; benchmarks add it)

    with TempPostgres() as pg:
        print(pg.dsn)  # postgresql://postgres@/postgres?host=/tmp/hivemem-pg-…
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hivemem.errors import NoPostgres

_PREFIX = "hivemem-pg-"
_PR_SET_PDEATHSIG = 1
# Settings of every throwaway server: Unix socket only, room for the 25-process tests, parallel
# query memory in files rather than /dev/shm (a container's /dev/shm may be 64 MB).
_BASE_SETTINGS = {
    "listen_addresses": "",
    "max_connections": "300",
    "dynamic_shared_memory_type": "mmap",
    "logging_collector": "off",
}


def find_bin_dir() -> Path:
    """The ``bin`` directory of a PostgreSQL build that has pgvector."""
    candidates: list[Path] = []
    if os.environ.get("HIVEMEM_PG_BIN"):
        candidates.append(Path(os.environ["HIVEMEM_PG_BIN"]))
    else:
        # the pgserver wheel: PostgreSQL + pgvector in site-packages (located, not imported: its
        # import sets up lock files and a runtime directory that are not needed here)
        spec = importlib.util.find_spec("pgserver")
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    for bin_dir in candidates:
        if (bin_dir / "postgres").exists() and _has_pgvector(bin_dir):
            return bin_dir
    tried = ", ".join(str(c) for c in candidates) or "nothing (pgserver is not installed)"
    raise NoPostgres(
        "no PostgreSQL with pgvector found (tried: "
        + tried
        + "). Install the dev extra (pip install -e '.[dev]' brings the pgserver wheel), or set "
        "HIVEMEM_PG_BIN to the bin directory of a PostgreSQL that has pgvector, or point "
        "HIVEMEM_TEST_PG_DSN at a running server with pgvector."
    )


def _has_pgvector(bin_dir: Path) -> bool:
    try:
        share = subprocess.run(
            [str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(share) / "extension" / "vector.control").exists()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust kill(0)
    return state not in ("Z", "X")


def sweep_stale(tmp: Path | None = None) -> int:
    """Remove the directories of earlier throwaway servers whose owner process is gone."""
    removed = 0
    for root in Path(tmp or tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((root / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        try:
            postmaster = int((root / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is not None and _alive(postmaster):
            continue  # its server is still shutting down: leave it to a later sweep
        shutil.rmtree(root, ignore_errors=True)
        removed += 1
    return removed


def _copy_install(bin_dir: Path, dest: Path) -> Path:
    """Copy a PostgreSQL install where ``nobody`` can read it → the copy's ``bin``. The wheel's
    binaries find their bundled libraries by a relative RPATH (``$ORIGIN/../../../pgserver.libs``),
    so the copy keeps that layout: ``dest/pgserver/pginstall/…`` and ``dest/pgserver.libs``."""
    install = bin_dir.parent
    shutil.copytree(install, dest / install.parent.name / install.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dest / libs.name, symlinks=True)
    return dest / install.parent.name / install.name / bin_dir.name


def _readable_by_others(path: Path) -> bool:
    """Every directory above ``path`` can be entered, and ``path`` read, by any user."""
    path = path.resolve()
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & 0o001:
            return False
    return bool(path.stat().st_mode & 0o004)


class TempPostgres:
    """A PostgreSQL server in a temporary directory; ``dsn`` once started; see the module docstring.

    ``settings``: extra ``postgresql.conf`` settings (``{"shared_buffers": "1GB"}``).
    """

    def __init__(self, settings: dict[str, str] | None = None, *, bin_dir: Path | None = None) -> None:
        self.settings = {**_BASE_SETTINGS, **(settings or {})}
        self.bin_dir = bin_dir
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.dsn = ""

    # -- start ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> str:
        if self.proc is not None:
            return self.dsn
        bin_dir = self.bin_dir or find_bin_dir()
        sweep_stale()
        self.root = root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (root / "owner.pid").write_text(str(os.getpid()))
        user: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            root.chmod(0o711)  # nobody may enter, not list
            if not _readable_by_others(bin_dir / "postgres"):
                bin_dir = _copy_install(bin_dir, root / "pg")
        data, run = root / "data", root / "run"
        for d in (data, run):
            d.mkdir(mode=0o700)
            if user:
                os.chown(d, user["user"], user["group"])
        log = root / "server.log"
        try:
            with log.open("ab") as out:
                subprocess.run(
                    [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                     "--encoding=UTF8", "--locale=C", "--no-sync"],
                    stdout=out, stderr=subprocess.STDOUT, check=True, timeout=timeout, **user,
                )  # fmt: skip
                args = [str(bin_dir / "postgres"), "-D", str(data), "-k", str(run)]
                for key, value in self.settings.items():
                    args += ["-c", f"{key}={value}"]
                self.proc = subprocess.Popen(
                    args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent(), **user
                )
        except (OSError, subprocess.SubprocessError) as exc:
            text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            self.stop()
            raise NoPostgres(f"could not start PostgreSQL from {bin_dir}: {exc}\n{text}") from None
        self.dsn = f"postgresql://postgres@/postgres?host={run}"
        self._wait_ready(timeout, log)
        return self.dsn

    def _wait_ready(self, timeout: float, log: Path) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-3000:]
                code = self.proc.poll()
                self.stop()
                why = f"exited with code {code}" if code is not None else f"not ready after {timeout:g} s"
                raise NoPostgres(f"the throwaway PostgreSQL {why}; its log:\n{text}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=5):
                    return
            except psycopg.OperationalError:
                time.sleep(0.05)

    # -- stop ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Shut the server down (fast, then immediate, then kill) and delete its directory."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 20.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> TempPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking the kernel to send SIGINT to the child when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # resolved before fork: the child only calls it
    prctl = libc.prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the call: nobody would stop us
            os._exit(1)

    return arm
