"""Search against a brute-force float32 reference while another process inserts, deletes and
re-embeds rows: the cached matrix follows the changes log without reloading, and the int8 first
pass (forced on here by lowering its size threshold) returns the exact top-k."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hivemem.memory import filters as flt
from hivemem.memory.records import prepare
from hivemem.memory.storage import matrix
from hivemem.memory.storage.sqlite import SQLiteStorage

ROOT = Path(__file__).resolve().parents[2]
DIM = 384

_OTHER = r"""
import json, sys
import numpy as np
from hivemem.memory.records import content_hash, prepare
from hivemem.memory.storage.sqlite import SQLiteStorage
path, ops = sys.argv[1], json.loads(sys.argv[2])
s = SQLiteStorage(path)
s.bind_model("test/rand", 384)
rng = np.random.default_rng(ops["seed"])
for mid in ops["delete"]:
    assert s.delete(mid)
for mid in ops["update"]:
    v = rng.standard_normal(384).astype(np.float32)
    s.update(mid, "rewritten " + mid, v / np.linalg.norm(v), None, content_hash("rewritten " + mid))
new = [m for i in range(ops["insert"]) for m in prepare(f"late {ops['seed']} {i}", user_id=f"u{i % 3}")]
v = rng.standard_normal((len(new), 384)).astype(np.float32)
s.insert(new, v / np.linalg.norm(v, axis=1, keepdims=True))
if ops["delete_user"]:
    from hivemem.memory import filters
    s.delete_where(filters.parse({"user_id": ops["delete_user"]}))
s.close()
"""


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _reference(path: Path, q: np.ndarray, k: int, user: str | None) -> list[str]:
    db = sqlite3.connect(path)
    sql = "SELECT id, vec FROM memories" + (" WHERE user_id = ?" if user else "")
    rows = db.execute(sql, (user,) if user else ()).fetchall()
    db.close()
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
    order = np.argsort(-(vecs @ q), kind="stable")[:k]
    return [rows[i][0] for i in order]


def _other_process(path: Path, ops: dict) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _OTHER, str(path), json.dumps(ops)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("first_pass", [True, False])
def test_search_matches_brute_force_across_process_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_pass: bool
) -> None:
    monkeypatch.setattr(matrix, "QUANTISED_MIN", 500 if first_pass else 10**9)
    monkeypatch.setattr(matrix, "RESCORE", 64)
    rng = np.random.default_rng(1)
    path = tmp_path / "s.sqlite"
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    mems = [m for i in range(3000) for m in prepare(f"memory {i}", user_id=f"u{i % 3}")]
    storage.insert(mems, _unit(rng, len(mems)))
    queries = _unit(rng, 8)

    def check() -> None:
        for q in queries:
            for user in (None, "u1"):
                where = flt.parse({"user_id": user}) if user else None
                got = [r["id"] for r in storage.search(q, where, 10, None)]
                assert got == _reference(path, q, 10, user)

    check()
    assert storage._matrix is not None and storage._matrix.reloads == 1
    ids = [m.id for m in mems]
    _other_process(path, {"seed": 2, "delete": ids[:40:2], "update": ids[1:41:2], "insert": 30,
                          "delete_user": None})  # fmt: skip
    check()
    # now delete and re-embed exactly the rows nearest to a query
    targeted = [r["id"] for r in storage.search(queries[0], None, 5, None)]
    _other_process(path, {"seed": 3, "delete": targeted[:3], "update": targeted[3:], "insert": 5,
                          "delete_user": None})  # fmt: skip
    check()
    assert storage._matrix.reloads == 1  # followed the log; never reloaded the whole matrix
    _other_process(path, {"seed": 4, "delete": [], "update": [], "insert": 0, "delete_user": "u2"})
    check()  # a third of the rows dead at once: compacted locally, still no reload
    assert storage._matrix.reloads == 1 and len(storage._matrix._snap.dead) == 0
    assert storage.count() == len(storage._matrix._snap.rids) == storage._matrix._snap.live
    storage.reset()
    storage.bind_model("test/rand", DIM)
    assert storage.search(queries[0], None, 10, None) == []
    storage.close()


def test_one_scope_uses_the_whole_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that selects every live row takes the whole-matrix path (int8 pass) and is exact."""
    monkeypatch.setattr(matrix, "QUANTISED_MIN", 100)
    calls: list[int] = []
    real = matrix._first_pass
    monkeypatch.setattr(matrix, "_first_pass", lambda s, q, c: calls.append(c) or real(s, q, c))
    rng = np.random.default_rng(5)
    path = tmp_path / "one.sqlite"
    storage = SQLiteStorage(path)
    storage.bind_model("test/rand", DIM)
    mems = [m for i in range(1000) for m in prepare(f"m {i}", user_id="one")]
    storage.insert(mems, _unit(rng, len(mems)))
    storage.delete(mems[0].id)
    q = _unit(rng, 1)[0]
    got = [r["id"] for r in storage.search(q, flt.parse({"user_id": "one"}), 10, None)]
    assert calls and got == _reference(path, q, 10, "one")
    storage.close()
