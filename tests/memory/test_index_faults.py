"""Faults from the world around the store (issue 26): a full disk, an unwritable index folder,
index files truncated or damaged under running readers in other processes, a rebuild killed with
SIGKILL. Each must end in a clear error or a correct answer, never a crash or a wrong result.

Vectors are random where a test is about the index files and storage only (a model adds nothing
there, as in test_vector_index.py); the disk-full error of a write goes through ``Memory`` with
the real model.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hivemem import DiskFull, Embedder, Memory
from hivemem.memory import filters as flt
from hivemem.memory.records import prepare
from hivemem.memory.storage import vectorindex
from hivemem.memory.storage.sqlite import SQLiteStorage
from hivemem.memory.storage.vectorindex import StaleIndex, read_state

ROOT = Path(__file__).resolve().parents[2]
DIM = 384

# A reader in another process: searches in a loop and compares each result with brute force in
# the same snapshot; once the parent has damaged the files (the marker exists) it does 20 more.
_READER = r"""
import json, os, sys
import numpy as np
from hivemem.memory.storage.sqlite import SQLiteStorage
path, marker, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = SQLiteStorage(path)
s.bind_model("test/rand", 384)
rng, db = np.random.default_rng(seed), s._db()
done = bad = after = 0
while after < 20:
    q = rng.standard_normal(384).astype(np.float32)
    q /= np.linalg.norm(q)
    with s.snapshot():
        got = [h["id"] for h in s.search(q, None, 10, None)]
        rows = db.execute("SELECT id, vec FROM memories").fetchall()
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), 384)
    bad += got != [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:10]]
    done += 1
    if done == 3:
        print("ready", flush=True)
    after += os.path.exists(marker)
print(json.dumps({"done": done, "bad": bad}), flush=True)
"""


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _store(path: Path, n: int, seed: int = 1) -> SQLiteStorage:
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    mems = [m for i in range(n) for m in prepare(f"memory {i}", user_id=f"u{i % 3}")]
    rng = np.random.default_rng(seed)
    for at in range(0, n, 1000):
        storage.insert(mems[at : at + 1000], _unit(rng, len(mems[at : at + 1000])))
    return storage


def _exact(path: Path, q: np.ndarray, k: int = 10, user: str | None = None) -> list[str]:
    db = sqlite3.connect(path)
    where = " WHERE user_id = ?" if user else ""
    rows = db.execute(f"SELECT id, vec FROM memories{where} ORDER BY rid", (user,) if user else ()).fetchall()
    db.close()
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    return [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:k]]


def _ids(storage: SQLiteStorage, q: np.ndarray, k: int = 10) -> list[str]:
    return [r["id"] for r in storage.search(q, None, k, None)]


def _generation_files(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.iterdir() if p.name.split(".")[0].isdigit())


def _file(storage: SQLiteStorage, kind: str) -> Path:
    header = storage.index.read_header()
    assert header is not None
    return storage.index.dir / f"{header['gen']}.{kind}"


def _position(storage: SQLiteStorage, memory_id: str) -> int:
    """The row of ``memory_id`` in the index files."""
    (rid,) = storage._db().execute("SELECT rid FROM memories WHERE id = ?", (memory_id,)).fetchone()
    rids = np.fromfile(_file(storage, "rids"), dtype=np.int64)
    header = storage.index.read_header()
    assert header is not None
    pos = int(np.searchsorted(rids[: header["n"]], rid))
    assert pos < header["n"] and rids[pos] == rid, "the row is not in the index files yet"
    return pos


# -- a full disk ------------------------------------------------------------------------------------


def test_full_disk_on_commit_is_disk_full_naming_the_file(
    small_tmpfs: Callable[..., Path], embedder: Embedder
) -> None:
    """SQLITE_FULL at COMMIT: the real cause as DiskFull (not "cannot rollback - no transaction
    is active"); everything committed before is intact and nothing of the failed batch is kept."""
    disk = small_tmpfs(3 << 20)
    path = disk / "m.sqlite"
    m = Memory(path, embedder=embedder)
    stored: list[str] = []
    with pytest.raises(DiskFull) as caught:
        for i in range(1000):
            items = [
                {"messages": f"note {i}.{j}: " + "the quick brown fox " * 12, "user_id": "u"}
                for j in range(40)
            ]
            stored += [r["id"] for r in m.add_batch(items)["results"]]
    message = str(caught.value)
    assert str(path) in message and "disk full" in message, message
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert stored, "the disk filled before the first batch: make the tmpfs larger"
    assert len(m.get_all(user_id="u", top_k=100_000)["results"]) == len(stored)
    assert all(m.get(mid) is not None for mid in stored[:: max(1, len(stored) // 50)])
    m.close()


def test_search_on_a_full_disk_scans_sqlite_and_leaves_no_partial_files(
    tmp_path: Path, small_tmpfs: Callable[..., Path], fill_disk: Callable[[Path], Path]
) -> None:
    disk = small_tmpfs(24 << 20)
    path = disk / "s.sqlite"
    writer = _store(path, 1500)  # stays open: the WAL and its shared memory exist already
    for p in writer.index.dir.iterdir():  # the index is gone (a clean-up, a new machine)
        p.unlink()
    writer.index.dir.rmdir()
    filler = fill_disk(disk)
    queries = _unit(np.random.default_rng(3), 4)
    reader = SQLiteStorage(path)
    reader.bind_model("test/rand", DIM)
    for _ in range(2):  # each try: no rebuild, no partial files, the exact answer
        for q in queries:
            assert _ids(reader, q) == _exact(path, q)
    assert reader.index.rebuilds == 0
    assert not reader.index.dir.exists() or _generation_files(reader.index.dir) == []
    filler.unlink()  # space again: the next search builds the index and uses it
    for q in queries:
        assert _ids(reader, q) == _exact(path, q)
    assert reader.index.rebuilds == 1 and reader.index.read_header() is not None
    reader.close()
    writer.close()


def test_search_with_a_read_only_index_folder_scans_sqlite(
    tmp_path: Path, small_tmpfs: Callable[..., Path]
) -> None:
    path = tmp_path / "r.sqlite"
    writer = _store(path, 1200)
    writer.close()
    index_dir = Path(f"{path}-index")
    for p in index_dir.iterdir():
        p.unlink()
    small_tmpfs(1 << 20, at=index_dir, readonly=True)  # an empty folder nobody may write to
    reader = SQLiteStorage(path)
    reader.bind_model("test/rand", DIM)
    for q in _unit(np.random.default_rng(5), 4):
        assert _ids(reader, q) == _exact(path, q)
    assert reader.index.rebuilds == 0
    reader.close()


# -- files truncated or damaged under running readers -------------------------------------------------


def _readers(path: Path, marker: Path, count: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _READER, str(path), str(marker), str(40 + i)], env=env,
                         text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(count)
    ]  # fmt: skip
    for p in procs:  # each has mapped and searched the files
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()[1][-3000:]
    return procs


def _results(procs: list[subprocess.Popen[str]]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f"reader exited {p.returncode} (SIGBUS is -7): {stderr[-3000:]}"
        out.append(json.loads(stdout))
    return out


@pytest.mark.parametrize("kind", ["codes", "scales"])
def test_truncating_an_index_file_under_running_readers_kills_none(tmp_path: Path, kind: str) -> None:
    """A careless restore (``cp -r backup/memory.sqlite-index .`` truncates files in place) used to
    kill every process that mapped the file with SIGBUS."""
    path = tmp_path / "t.sqlite"
    _store(path, 3000).close()
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    target = _file(storage, kind)
    backup = target.read_bytes()
    marker = tmp_path / "truncated"
    procs = _readers(path, marker, 2)
    try:
        os.truncate(target, 0)  # what cp does first; the copy then comes back a moment later
        marker.touch()
        results = _results(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if target.exists():
        target.write_bytes(backup)
    assert all(r["bad"] == 0 for r in results), results
    for q in _unit(np.random.default_rng(6), 3):  # and this process, which had it open too
        assert _ids(storage, q) == _exact(path, q)
    storage.close()


def test_overwritten_codes_under_running_readers_are_detected(tmp_path: Path) -> None:
    """Processes that already had the index open answered every query wrong after the codes file
    was overwritten in place; now each notices (the files changed: their rows are verified again)."""
    path = tmp_path / "o.sqlite"
    _store(path, 3000).close()
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    queries = _unit(np.random.default_rng(7), 3)
    for q in queries:
        assert _ids(storage, q) == _exact(path, q)
    target = _file(storage, "codes")
    marker = tmp_path / "overwritten"
    procs = _readers(path, marker, 2)
    try:
        size = target.stat().st_size
        with open(target, "r+b") as f:  # same size, other bytes
            f.write(np.random.default_rng(1).integers(-127, 128, size, dtype=np.int8).tobytes())
        marker.touch()
        results = _results(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(r["bad"] == 0 for r in results), results
    for q in queries:
        assert _ids(storage, q) == _exact(path, q)
    storage.close()


def _damage_row(storage: SQLiteStorage, memory_id: str, how: str) -> None:
    pos = _position(storage, memory_id)
    if how == "negated":  # the row's codes negated: it ranks last instead of first
        target = _file(storage, "codes")
        codes = np.fromfile(target, dtype=np.int8, count=DIM, offset=pos * DIM)
        with open(target, "r+b") as f:
            f.seek(pos * DIM)
            f.write((-codes).astype(np.int8).tobytes())
    elif how == "one_byte":  # a single code changed
        target = _file(storage, "codes")
        with open(target, "r+b") as f:
            f.seek(pos * DIM + 7)
            (old,) = f.read(1)
            f.seek(pos * DIM + 7)
            f.write(bytes([(old + 128) % 256]))
    elif how == "scale":  # its scale shrunk: it ranks low
        target = _file(storage, "scales")
        with open(target, "r+b") as f:
            f.seek(pos * 4)
            f.write(np.float32(1e-6).tobytes())
    elif how == "tombstone":  # marked deleted though it is not
        with open(_file(storage, "dead"), "r+b") as f:
            f.seek(pos)
            f.write(b"\x01")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["negated", "one_byte", "scale", "tombstone"])
def test_a_damaged_row_never_changes_a_fresh_process_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(vectorindex, "CATCH_UP", 1)  # the files hold every row
    path = tmp_path / "f.sqlite"
    storage = _store(path, 3000)
    q = _unit(np.random.default_rng(11), 1)[0]
    top = _exact(path, q)
    assert _ids(storage, q) == top
    _damage_row(storage, top[0], how)
    storage.close()
    fresh = SQLiteStorage(path)  # a new process's view: opens the files afresh
    fresh.bind_model("test/rand", DIM)
    for _ in range(3):
        assert _ids(fresh, q) == top
    assert fresh.index.rebuilds == 1  # found, rebuilt from SQLite, never used
    fresh.close()


def test_compaction_does_not_copy_damage_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectorindex, "CATCH_UP", 1)  # the files hold every row
    monkeypatch.setattr(vectorindex, "COMPACT_MIN", 100)
    path = tmp_path / "c.sqlite"
    storage = _store(path, 3000)
    assert (storage.index.read_header() or {})["n"] == 3000
    monkeypatch.setattr(vectorindex, "CATCH_UP", 10**9)  # no catch-up until this test asks for one
    q = _unit(np.random.default_rng(12), 1)[0]
    ids = [r[0] for r in storage._db().execute("SELECT id FROM memories WHERE user_id = 'u2'")]
    keep = next(i for i in _exact(path, q) if i not in set(ids))
    for at in range(0, len(ids), 200):
        for mid in ids[at : at + 200]:
            storage.delete(mid)
    _damage_row(storage, keep, "negated")
    before = _generation_files(storage.index.dir)
    db = storage._db()
    # a catch-up that compacts (a third of the rows dead) finds the damage
    with storage.snapshot(), pytest.raises(StaleIndex, match="damaged"):
        storage.index.catch_up(db, read_state(db), storage.index.read_header() or {})
    assert _generation_files(storage.index.dir) == before  # the new generation was discarded
    assert _ids(storage, q) == _exact(path, q)
    assert storage.index.rebuilds == 2  # the first writer's, and the one after the damage
    storage.close()


@pytest.mark.slow
def test_sigkill_during_a_rebuild_leaves_a_correct_index(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    storage = _store(path, 30_000)
    queries = _unit(np.random.default_rng(13), 3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = (
        "import sys, numpy as np\n"
        "from hivemem.memory.storage.sqlite import SQLiteStorage\n"
        "s = SQLiteStorage(sys.argv[1]); s.bind_model('test/rand', 384)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    for p in s.index.dir.iterdir(): p.unlink()\n"
        "    s.search(np.ones(384, dtype=np.float32) / 384 ** 0.5, None, 5, None)\n"
        "    s.index._files = None\n"
    )
    for delay in (0.0, 0.05, 0.2):
        child = subprocess.Popen([sys.executable, "-c", script, str(path)], env=env, text=True,
                                 stdout=subprocess.PIPE)  # fmt: skip
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 60
            while not list(storage.index.dir.glob("*.codes")) and time.monotonic() < deadline:
                time.sleep(0.001)  # a rebuild has begun writing
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        fresh = SQLiteStorage(path)
        fresh.bind_model("test/rand", DIM)
        for q in queries:
            assert _ids(fresh, q) == _exact(path, q)
        header = fresh.index.read_header()
        assert header is not None and header["n"] == 30_000
        assert _generation_files(fresh.index.dir) == sorted(
            f"{header['gen']}.{k}" for k in vectorindex._KINDS
        )
        fresh.close()
    storage.close()


def test_mapped_files_follow_writes_and_survive_a_chmod_and_truncate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mapped path (any owner but root maps the files; root, as here, reads them with pread):
    forced, it still matches brute force through patches, tombstones, appends, growth and a
    compaction; and a file made writable and truncated (only on purpose) is seen by the check
    before use, never touched through the mapping."""
    monkeypatch.setattr(vectorindex, "_mappable", lambda st: True)
    monkeypatch.setattr(vectorindex, "CATCH_UP", 1)
    monkeypatch.setattr(vectorindex, "COMPACT_MIN", 100)
    monkeypatch.setattr(vectorindex, "SMALL_SUBSET", 50)  # filtered searches: int8 over the subset
    path = tmp_path / "m.sqlite"
    storage = _store(path, 3000)
    queries = _unit(np.random.default_rng(21), 3)
    user = flt.parse({"user_id": "u1"})

    def check() -> None:
        for q in queries:
            assert _ids(storage, q) == _exact(path, q)
            got = [r["id"] for r in storage.search(q, user, 10, None)]
            assert got == _exact(path, q, 10, "u1")

    check()
    files = storage.index._files
    assert files is not None and len(files.maps) == len(vectorindex._KINDS)
    rng = np.random.default_rng(22)
    ids = [r[0] for r in storage._db().execute("SELECT id FROM memories ORDER BY rid")]
    for mid in ids[:30]:
        storage.delete(mid)
    for mid in ids[30:40]:
        storage.update(mid, f"new {mid}", _unit(rng, 1)[0], None, f"h-{mid}")
    more = [m for i in range(2000) for m in prepare(f"more {i}", user_id=f"u{i % 3}")]
    storage.insert(more, _unit(rng, len(more)))  # past the mapped capacity: mapped again
    check()
    storage.delete_where(flt.parse({"user_id": "u2"}))  # a third dead: compacted
    check()
    gen = (storage.index.read_header() or {})["gen"]
    assert storage.index.rebuilds == 1  # followed every change without a rebuild
    target = storage.index.dir / f"{gen}.codes"
    os.chmod(target, 0o644)
    os.truncate(target, 0)
    check()
    assert storage.index.rebuilds == 2
    storage.close()
