"""The shared vector index against a brute-force float32 reference read from the SQLite rows.

Other processes insert, delete and re-embed while this one searches; writers and searchers run at
once in separate processes; writers and searchers are killed with SIGKILL mid-operation; index
files that are truncated, garbage, stale, ahead of the database or made for another model or
store are rebuilt, never used. Vectors are random (a model adds nothing to storage logic).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from memory_helpers import kill_after

from hivemem.memory import filters as flt
from hivemem.memory.records import prepare
from hivemem.memory.storage import vectorindex
from hivemem.memory.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]
DIM = 384

# A child process: applies ``ops`` to the store (module constants first, to force catch-ups and
# compactions), or loops forever when ``ops["loop"]`` (to be killed).
_CHILD = r"""
import json, sys
import numpy as np
from hivemem.memory import filters
from hivemem.memory.records import content_hash, prepare
from hivemem.memory.storage import vectorindex
from hivemem.memory.storage.sqlite import SQLiteStorage
path, ops = sys.argv[1], json.loads(sys.argv[2])
for name, value in ops.get("constants", {}).items():
    setattr(vectorindex, name, value)
if ops.get("die_before_publish"):  # killed after patching the files, before the new header
    import os
    vectorindex.SharedIndex._publish = lambda self, header: os._exit(9)
s = SQLiteStorage(path)
s.bind_model("test/rand", 384)
rng = np.random.default_rng(ops["seed"])

def unit(n):
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

def step(r):
    for mid in ops.get("delete", []):
        assert s.delete(mid)
    for mid in ops.get("update", []):
        s.update(mid, f"rewritten {r} {mid}", unit(1)[0], None, content_hash(f"rewritten {r} {mid}"))
    n = ops.get("insert", 0)
    new = [m for i in range(n) for m in prepare(f"late {ops['seed']} {r} {i}", user_id=f"u{i % 3}")]
    if new:
        s.insert(new, unit(len(new)))
    if ops.get("delete_user"):
        s.delete_where(filters.parse({"user_id": ops["delete_user"]}))

if ops.get("loop") == "write":
    print("ready", flush=True)
    r = 0
    while True:
        r += 1
        step(r)
        ids = [row[0] for row in s._db().execute("SELECT id FROM memories ORDER BY random() LIMIT 8")]
        for mid in ids[:5]:
            s.delete(mid)
        for mid in ids[5:]:
            s.update(mid, f"again {r} {mid}", unit(1)[0], None, content_hash(f"again {r} {mid}"))
elif ops.get("loop") == "search":
    print("ready", flush=True)
    while True:
        s.search(unit(1)[0], filters.parse({"user_id": "u1"}), 10, None)
        s.search(unit(1)[0], None, 10, None)
elif ops.get("loop") == "check":  # search, and compare with brute force in the same snapshot
    db, done, bad = s._db(), 0, 0
    import time
    end = time.monotonic() + ops["seconds"]
    while time.monotonic() < end:
        q = unit(1)[0]
        user = ["u0", "u1", None][done % 3]
        with s.snapshot():
            got = [h["id"] for h in s.search(q, filters.parse({"user_id": user}) if user else None, 10, None)]
            sql = "SELECT id, vec FROM memories" + (" WHERE user_id = ?" if user else "")
            rows = db.execute(sql, (user,) if user else ()).fetchall()
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), 384)
        want = [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:10]]
        bad += got != want
        done += 1
    print(json.dumps({"done": done, "bad": bad}))
else:
    step(0)
s.close()
"""


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _reference(path: Path, q: np.ndarray, k: int, user: str | None, contains: str | None = None) -> list[str]:
    """The exact top-k by brute force over the rows as SQLite has them (ties: smaller row id)."""
    db = sqlite3.connect(path)
    sql, params = "SELECT id, vec FROM memories WHERE 1", []
    if user:
        sql, params = sql + " AND user_id = ?", [*params, user]
    if contains:
        sql, params = sql + " AND instr(memory, ?) > 0", [*params, contains]
    rows = db.execute(sql + " ORDER BY rid", params).fetchall()
    db.close()
    if not rows:
        return []
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    return [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:k]]


def _where(user: str | None, contains: str | None = None) -> Any:
    spec: dict[str, Any] = {}
    if user:
        spec["user_id"] = user
    if contains:
        spec["memory"] = {"contains": contains}
    return flt.parse(spec) if spec else None


def _child(path: Path, ops: dict[str, Any], **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), json.dumps(ops)], env=env, text=True, **popen
    )


def _run(path: Path, ops: dict[str, Any]) -> None:
    child = _child(path, ops, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-3000:]


def _fill(path: Path, n: int, seed: int = 1) -> tuple[SQLiteStorage, list[str]]:
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    mems = [m for i in range(n) for m in prepare(f"memory {i}", user_id=f"u{i % 3}")]
    rng = np.random.default_rng(seed)
    for at in range(0, n, 1000):
        storage.insert(mems[at : at + 1000], _unit(rng, len(mems[at : at + 1000])))
    return storage, [m.id for m in mems]


def _check(storage: SQLiteStorage, queries: np.ndarray) -> None:
    for q in queries:
        for user, contains in (
            (None, None),
            ("u1", None),
            ("u1", "memory 1"),
            (None, "late"),
            (None, "memory"),
        ):
            got = [r["id"] for r in storage.search(q, _where(user, contains), 10, None)]
            assert got == _reference(storage.path, q, 10, user, contains), (user, contains)


# the paths of a filtered search: the subset alone; the best of all rows, filter checked (a filter
# most rows pass), else int8 over the subset; or the best of all rows, more and more
@pytest.mark.parametrize(("small_subset", "prefilter_max"), [(2000, 50_000), (100, 50_000), (100, 100)])
def test_search_matches_brute_force_across_process_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_subset: int, prefilter_max: int
) -> None:
    monkeypatch.setattr(vectorindex, "RESCORE", 64)
    monkeypatch.setattr(vectorindex, "SMALL_SUBSET", small_subset)
    monkeypatch.setattr(vectorindex, "PREFILTER_MAX", prefilter_max)
    path = tmp_path / "s.sqlite"
    storage, ids = _fill(path, 3000)
    queries = _unit(np.random.default_rng(9), 6)
    _check(storage, queries)
    index = storage.index
    assert index.rebuilds == 1  # the first writer built it; every later write appended
    assert index.read_header()["n"] == 3000  # type: ignore[index]
    # another process deletes, re-embeds and inserts; the files lag (a tail, changed rows)
    _run(path, {"seed": 2, "delete": ids[:40:2], "update": ids[1:41:2], "insert": 30})
    _check(storage, queries)
    targeted = [r["id"] for r in storage.search(queries[0], None, 5, None)]
    _run(path, {"seed": 3, "delete": targeted[:3], "update": targeted[3:], "insert": 5})
    _check(storage, queries)
    # the same, with the writer bringing the files up to date after each commit (patches, tombstones)
    late = [r["id"] for r in storage.search(queries[1], None, 6, None)]
    _run(path, {"seed": 4, "delete": late[:3], "update": late[3:], "insert": 7, "constants": {"CATCH_UP": 1}})
    header = index.read_header()
    assert header is not None and header["n"] == 3000 + 30 + 5 + 7 and header["dead"] >= 3
    _check(storage, queries)
    # a third of the rows deleted at once: the writer compacts into a new generation
    _run(path, {"seed": 5, "delete_user": "u2", "constants": {"CATCH_UP": 1, "COMPACT_MIN": 100}})
    after = index.read_header()
    assert after is not None and after["gen"] == header["gen"] + 1 and after["dead"] == 0
    assert after["n"] == storage.count()
    _check(storage, queries)
    assert index.rebuilds == 1  # this process never rebuilt: it followed the files
    storage.reset()
    storage.bind_model("test/rand", DIM)
    assert storage.search(queries[0], None, 10, None) == []
    storage.close()


def test_a_read_past_sqlites_length_limit_gives_the_same_answer(tmp_path: Path) -> None:
    """``indexrank.fetch`` reads rows as one ``group_concat`` value; past the connection's
    ``SQLITE_LIMIT_LENGTH`` (1e9 bytes by default) SQLite refuses it ("string or blob too big"):
    the rows are then read a chunk at a time, same answer. Here the limit is lowered to 100 kB
    (65 vectors) and another process leaves a tail of 600 rows (920 kB) the files do not hold."""
    path = tmp_path / "s.sqlite"
    storage, _ = _fill(path, 2000)
    queries = _unit(np.random.default_rng(11), 3)
    _check(storage, queries)
    _run(path, {"seed": 6, "insert": 600})
    storage._db().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 100_000)  # this thread's connection
    _check(storage, queries)
    storage.close()


def _damage(index: vectorindex.SharedIndex, how: str, path: Path) -> None:
    header = index.read_header()
    assert header is not None
    codes = index.dir / f"{header['gen']}.codes"
    if how == "truncated":
        os.truncate(codes, os.path.getsize(codes) // 3)
    elif how == "garbage":
        codes.write_bytes(np.random.default_rng(0).integers(-127, 127, os.path.getsize(codes), dtype=np.int8))
    elif how == "header_garbage":
        (index.dir / "header.json").write_bytes(b'{"format": 1, "n": 10')
    elif how == "other_model":
        index._publish({**header, "model": "other/model"})
    elif how == "other_store":  # e.g. a store file replaced by another one
        index._publish({**header, "store": "0" * 32})
    elif how == "behind_trimmed_log":  # changes the files never got, trimmed from the log
        storage = SQLiteStorage(path)
        for (mid,) in storage._db().execute("SELECT id FROM memories LIMIT 5").fetchall():
            storage.delete(mid)
        storage.close()
        db = sqlite3.connect(path)
        db.execute("UPDATE meta SET value = ? WHERE key = 'pruned'", (header["seq"] + 3,))
        db.commit()
        db.close()
    elif how == "ahead_of_database":  # the database lost commits the files hold
        index._publish({**header, "last_rid": header["last_rid"] + 50, "seq": header["seq"] + 3})
    elif how == "rows_replaced":  # the row ids now name other memories
        index._publish({**header, "last_id": "not-the-memory-at-that-row"})
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "header_garbage", "other_model", "other_store", "behind_trimmed_log",
     "ahead_of_database", "rows_replaced"],
)  # fmt: skip
def test_damaged_index_is_rebuilt_never_used(tmp_path: Path, how: str) -> None:
    path = tmp_path / "d.sqlite"
    storage, _ = _fill(path, 2500)
    queries = _unit(np.random.default_rng(4), 4)
    _check(storage, queries)
    old = storage.index.read_header()
    storage.close()
    _damage(storage.index, how, path)
    fresh = SQLiteStorage(path)  # a new process's view: maps the files afresh
    fresh.bind_model("test/rand", DIM)
    _check(fresh, queries)
    assert fresh.index.rebuilds == 1
    new = fresh.index.read_header()
    assert new is not None and old is not None and new["gen"] > old["gen"]
    assert new["n"] == fresh.count() == (2495 if how == "behind_trimmed_log" else 2500)
    fresh.close()


@pytest.mark.slow
def test_sigkill_of_writers_and_searchers_leaves_a_correct_index(tmp_path: Path) -> None:
    path = tmp_path / "k.sqlite"
    storage, _ = _fill(path, 6000)
    queries = _unit(np.random.default_rng(8), 4)
    constants = {"CATCH_UP": 1, "COMPACT_MIN": 64}  # every write touches the files
    for delay in (0.4, 0.9, 1.5):
        ops = {"seed": int(delay * 10), "insert": 40, "loop": "write", "constants": constants}
        kill_after(_child(path, ops, stdout=subprocess.PIPE), delay)
        _check(storage, queries)
    # a searcher killed while it rebuilds a missing index, then one killed while catching up
    for p in storage.index.dir.iterdir():
        p.unlink()
    kill_after(
        _child(path, {"seed": 1, "loop": "search", "constants": constants}, stdout=subprocess.PIPE), 0.05
    )
    _run(path, {"seed": 7, "insert": 400})  # a tail for the next searcher to append
    kill_after(
        _child(path, {"seed": 2, "loop": "search", "constants": constants}, stdout=subprocess.PIPE), 0.3
    )
    fresh = SQLiteStorage(path)
    fresh.bind_model("test/rand", DIM)
    _check(fresh, queries)
    _check(storage, queries)
    fresh.close()
    storage.close()


@pytest.mark.slow
def test_concurrent_writers_and_searchers_match_their_snapshot(tmp_path: Path) -> None:
    """Searchers in other processes compare every result with brute force in the same snapshot
    while two writer processes insert, delete and re-embed: no result may differ."""
    path = tmp_path / "c.sqlite"
    storage, _ = _fill(path, 4000)
    storage.close()
    writers = [
        _child(path, {"seed": 10 + i, "insert": 25, "loop": "write", "constants": {"CATCH_UP": 16 * (i + 1)}},
               stdout=subprocess.PIPE)
        for i in range(2)
    ]  # fmt: skip
    try:
        for w in writers:
            assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        checkers = [
            _child(path, {"seed": 20 + i, "loop": "check", "seconds": 4}, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
            for i in range(2)
        ]  # fmt: skip
        results = []
        for c in checkers:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err[-3000:]
            results.append(json.loads(out))
    finally:  # the writers loop forever: never leave one behind
        for w in writers:
            w.send_signal(signal.SIGKILL)
            w.wait()
    assert all(r["done"] >= 10 for r in results), results
    assert all(r["bad"] == 0 for r in results), results


def test_rows_patched_after_a_snapshot_do_not_condemn_the_index(tmp_path: Path) -> None:
    """A process mapping the files for the first time, in a snapshot older than a row patched by a
    writer that then died before publishing its header, must not take the patched row for damage
    (and rebuild): the changes log, read afresh, says why it differs."""
    path = tmp_path / "p.sqlite"
    storage, ids = _fill(path, 20)  # so few rows that the first mapping checks every one
    q = _unit(np.random.default_rng(3), 1)[0]
    fresh = SQLiteStorage(path)
    fresh.bind_model("test/rand", DIM)
    with fresh.snapshot():
        fresh._db().execute("SELECT count(*) FROM memories").fetchone()  # the snapshot begins here
        ops = {"seed": 5, "update": ids[:1], "constants": {"CATCH_UP": 1}, "die_before_publish": True}
        child = _child(path, ops, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.wait(timeout=120) == 9  # it patched the row in place, then died
        got = [h["id"] for h in fresh.search(q, None, 10, None)]
        rows = fresh._db().execute("SELECT id, vec FROM memories ORDER BY rid").fetchall()
    assert storage.index.read_header()["seq"] == 0  # type: ignore[index]
    assert fresh.index.rebuilds == 0
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    assert got == [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:10]]  # the snapshot's
    fresh.close()
    storage.close()


def test_rows_changed_after_a_snapshot_are_found_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search sees its snapshot although another process deleted and re-embedded its best rows
    after the snapshot began and patched the shared files in place (tombstones, new codes): those
    rows are scored exactly from the snapshot."""
    monkeypatch.setattr(vectorindex, "RESCORE", 64)
    path = tmp_path / "a.sqlite"
    storage, _ = _fill(path, 3000)
    db = storage._db()
    for at, q in enumerate(_unit(np.random.default_rng(6), 3)):
        with storage.snapshot():
            best = [r["id"] for r in storage.search(q, None, 10, None)]  # the snapshot begins here
            assert best == _reference(path, q, 10, None)
            seq = db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            # after the snapshot began: its best rows deleted or re-embedded, the files patched
            ops = {"seed": 30 + at, "delete": best[:3], "update": best[3:6], "constants": {"CATCH_UP": 1}}
            _run(path, ops)
            assert storage.index.read_header()["seq"] > seq  # type: ignore[index]
            for user in (None, "u1"):
                got = [r["id"] for r in storage.search(q, _where(user), 10, None)]
                sql = "SELECT id, vec FROM memories" + (" WHERE user_id = ?" if user else "")
                rows = db.execute(sql, (user,) if user else ()).fetchall()  # in the snapshot
                vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, DIM)
                want = [rows[i][0] for i in np.argsort(-(vecs @ q), kind="stable")[:10]]
                assert got == want, (at, user)
    storage.close()


def test_a_process_never_keeps_the_files_of_a_replaced_generation(tmp_path: Path) -> None:
    """A process still mapping the (unlinked) files of a generation must not take a new
    generation for them: after the index directory is wiped, the rebuild must not reuse its number."""
    path = tmp_path / "w.sqlite"
    storage, _ = _fill(path, 3000)
    queries = _unit(np.random.default_rng(5), 4)
    _check(storage, queries)  # maps the files
    old = storage.index.read_header()
    for p in storage.index.dir.iterdir():
        p.unlink()
    _run(path, {"seed": 3, "delete_user": "u0"})  # rebuilt by this writer: other rows at each position
    new = storage.index.read_header()
    assert new is not None and old is not None and new["n"] != old["n"]
    _check(storage, queries)
    storage.close()
