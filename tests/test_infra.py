"""The shared infrastructure every part stands on: SQLite connections per thread and process, the
``IN (…)`` chunker, and the one file-lock helper."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from hivemem.infra.locks import FileLock, locked
from hivemem.infra.sqlitedb import Connections, in_chunks

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _fds_on(path: Path) -> int:
    """How many descriptors of this process point at ``path`` (or its WAL/SHM files)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.startswith(str(path))
    return n


def test_connections_are_per_thread_and_close_closes_every_thread_s(tmp_path) -> None:
    path = tmp_path / "x.sqlite"
    conns = Connections(lambda: sqlite3.connect(path, check_same_thread=False))
    mine = conns.get()
    assert conns.get() is mine
    theirs: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: theirs.append(conns.get()))
    t.start()
    t.join()
    assert theirs[0] is not mine
    conns.close()
    for conn in (mine, theirs[0]):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    assert conns.get() is not mine  # used again: reconnects
    conns.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_opens_its_own_connection_and_leaves_the_parent_s_alone(tmp_path) -> None:
    path = tmp_path / "x.sqlite"
    conns = Connections(lambda: sqlite3.connect(path, isolation_level=None))
    parent = conns.get()
    parent.execute("CREATE TABLE t (x)")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            child = conns.get()
            child.execute("INSERT INTO t VALUES (1)")
            conns.close()
            os.write(write, b"1" if child is not parent else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert parent.execute("SELECT count(*) FROM t").fetchone()[0] == 1  # still open here
    conns.close()


def test_embedding_cache_close_releases_every_thread_s_file(tmp_path) -> None:
    """Regression: ``EmbeddingCache.close()`` closed only the calling thread's connection."""
    from hivemem.embed.cache import EmbeddingCache

    path = tmp_path / "cache.sqlite"
    cache = EmbeddingCache(path, shared=False)
    vec = np.ones((1, 4), dtype=np.float32) / 2

    def use() -> None:
        cache.put_many("m", ["t"], vec)
        assert cache.get_many("m", 4, ["t"])[0] is not None

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _fds_on(path) >= 3
    cache.close()
    assert _fds_on(path) == 0


def test_in_chunks_covers_every_value_once_under_the_limit() -> None:
    values = list(range(1234))
    chunks = list(in_chunks(values, size=500))
    assert [len(c) for _, c in chunks] == [500, 500, 234]
    assert all(marks.count("?") == len(c) for marks, c in chunks)
    assert [v for _, c in chunks for v in c] == values
    assert list(in_chunks([])) == []


def test_file_lock_contends_within_a_process_and_times_out(tmp_path) -> None:
    path = tmp_path / "a.lock"
    with FileLock(path) as first:
        assert first.acquire(timeout=0)
        first.write("123\n")
        second = FileLock(path)
        assert not second.acquire(timeout=0.1)
        assert second.read() == "123"  # the holder's note is readable (and never truncated)
        assert not second.acquire(exclusive=False, timeout=0)
        second.release()
    with locked(path, timeout=0) as held:
        assert held
    with locked(path, exclusive=False, timeout=0) as a, locked(path, exclusive=False, timeout=0) as b:
        assert a and b  # shared locks coexist


def test_a_lock_dies_with_its_holder(tmp_path) -> None:
    path = tmp_path / "b.lock"
    code = (
        "import sys, time; from hivemem.infra.locks import FileLock;"
        f"l = FileLock({str(path)!r}); l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with locked(path, timeout=0) as held:
            assert not held
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with locked(path, timeout=5) as held:
            assert held
    finally:
        holder.kill()
        holder.wait(10)


def test_the_project_metadata_builds_without_a_warning() -> None:
    """A fresh ``pip install -e .`` (``make demo``) prints no setuptools deprecation notices: the
    metadata is read here with every warning turned into an error (the TOML-table ``license`` of
    before failed this)."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "from setuptools.dist import Distribution\n"
        "from setuptools.config.pyprojecttoml import apply_configuration\n"
        "apply_configuration(Distribution(), 'pyproject.toml')\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
