"""Keyword context (issue 23): each memory is also indexed with the memories just before it in its
scope (``storage/fts.py``, ``memories_ctx``). These tests measure storage, not ranking quality, so
they use the hash embedder (NOT a model; ``tests/hash_embedder.py``) and run in the fast set; the
recall it buys is measured by ``benchmarks/retrieval.py`` on LoCoMo with the real model.

The derived table must always equal a rebuild from scratch (``expected``): after any sequence of
writes, after a process is killed mid-batch, and after an old store is opened (backfill). A window
never crosses user/agent/run scopes: another scope's text must never help rank a memory.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder

from hivemem import Memory
from hivemem.errors import DiskFull
from hivemem.memory.storage import fts

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]


def expected(path: Path | str) -> dict[int, str]:
    """The context of every row, computed from scratch: the memory and the ``CONTEXT_BEFORE``
    memories before it in its scope (newest first, one per line)."""
    db = sqlite3.connect(path)
    by_scope: dict[str, list[str]] = {}
    out = {}
    for rid, scope, text in db.execute("SELECT rid, scope, memory FROM memories ORDER BY rid"):
        mine = by_scope.setdefault(scope, [])
        mine.append(text)
        out[rid] = "\n".join(reversed(mine[-(fts.CONTEXT_BEFORE + 1) :]))
    db.close()
    return out


def stored(path: Path | str) -> dict[int, str]:
    """The context table as it is, after FTS5's own check that its index matches its rows."""
    db = sqlite3.connect(path)
    db.execute("INSERT INTO memories_ctx (memories_ctx) VALUES ('integrity-check')")
    out = dict(db.execute("SELECT rowid, context FROM memories_ctx"))
    db.close()
    return out


def words(m: Memory, query: str, **scope: str) -> list[str]:
    return [h["memory"] for h in m.search(query, mode="keyword", **scope)["results"]]


@pytest.mark.parametrize("seed", [23, 24, 25])
def test_random_writes_keep_the_context_equal_to_a_rebuild(tmp_path: Path, seed: int) -> None:
    """Adds, batches, updates, deletes, batch updates and deletes and delete_all in three scopes,
    in random order: after every step the table equals a rebuild from scratch."""
    path = tmp_path / "m.sqlite"
    m = Memory(path, embedder=HashEmbedder(), keyword_context=True)
    scopes: list[dict[str, str]] = [{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a", "run_id": "r1"}]
    rng = random.Random(seed)
    ids: dict[int, list[str]] = {0: [], 1: [], 2: []}
    n = 0
    for step in range(120):
        s = rng.randrange(3)
        op = rng.choice(["add", "batch", "batch", "update", "delete", "batch_update", "batch_delete", "all"])
        mine = ids[s]
        if op == "add" or (not mine and op != "batch"):
            n += 1
            mine.append(m.add(f"note {n} word{n % 7}", **scopes[s])["results"][0]["id"])
        elif op == "batch":
            texts = [f"note {n + i} batch{step} word{(n + i) % 5}" for i in range(1, rng.randint(2, 6))]
            n += len(texts)
            mine += [r["id"] for r in m.add_batch([{"messages": t, **scopes[s]} for t in texts])["results"]]
        elif op == "update":
            n += 1
            m.update(rng.choice(mine), f"rewritten {n} word{n % 3}")
        elif op == "delete":
            m.delete(mine.pop(rng.randrange(len(mine))))
        elif op == "batch_update":
            chosen = rng.sample(mine, min(len(mine), 3))
            m.batch_update([{"memory_id": i, "text": f"batch rewrite {n} {j}"} for j, i in enumerate(chosen)])
            n += 1
        elif op == "batch_delete":
            chosen = rng.sample(mine, min(len(mine), 2))
            m.batch_delete([{"memory_id": i} for i in chosen])
            ids[s] = [i for i in mine if i not in chosen]
        elif rng.random() < 0.3:  # delete_all of one scope, now and then
            m.delete_all(**scopes[s])
            ids[s] = []
            if s == 0:  # user a without run_id also holds the run's memories
                ids[2] = []
        assert stored(path) == expected(path), f"step {step}: {op} in scope {scopes[s]}"
    assert len(expected(path)) > 20  # the sequence left a store to compare
    m.close()


def test_a_window_never_crosses_scopes(tmp_path: Path) -> None:
    """Two users and two runs of one user, interleaved: a memory's window holds only its own
    scope's memories, and another scope's words never bring it into a search."""
    path = tmp_path / "m.sqlite"
    m = Memory(path, embedder=HashEmbedder(), keyword_context=True)
    for i in range(4):
        m.add(f"alice note {i}", user_id="alice")
        m.add(f"bob secret zanzibar {i}", user_id="bob")
        m.add(f"alice run one {i}", user_id="alice", run_id="r1")
        m.add(f"alice run two quokka {i}", user_id="alice", run_id="r2")
    assert stored(path) == expected(path)
    for context in stored(path).values():
        lines = context.split("\n")
        assert len({line.split(" ")[0] + line.split(" ")[1] for line in lines}) == 1, context
    assert words(m, "zanzibar", user_id="alice") == []
    assert words(m, "quokka", user_id="alice", run_id="r1") == []
    assert len(words(m, "quokka", user_id="alice", run_id="r2")) == 4
    m.close()


def test_a_neighbour_word_finds_the_memory_only_with_the_option(tmp_path: Path) -> None:
    """What the option is for: "who went with her?" is answered by the turn after the one that
    names the place; with context the later turn holds the place's word in its window."""
    path = tmp_path / "m.sqlite"
    turns = ["Jane: I hiked Yosemite last week", "Tom: who went with you?", "Jane: my sister Ann"]
    with Memory(path, embedder=HashEmbedder()) as m:
        m.add_batch([{"messages": t, "user_id": "u"} for t in turns])
        assert words(m, "yosemite", user_id="u") == [turns[0]]
    with Memory(path, embedder=HashEmbedder(), keyword_context=True) as m:
        found = m.search("yosemite", user_id="u", mode="keyword", explain=True)["results"]
        assert [h["memory"] for h in found] == turns  # the turn itself first, then its followers
        details = [h["score_details"] for h in found]
        assert details[0]["keyword_body"] > 0 and details[0]["keyword_context"] > 0
        assert details[2]["keyword_body"] == 0 and details[2]["keyword_context"] > 0
        hybrid = m.search("yosemite", user_id="u", explain=True)["results"]
        assert {"keyword_body", "keyword_context"} <= set(hybrid[0]["score_details"])
        assert all("_keyword_parts" not in h for h in hybrid + m.search("yosemite", user_id="u")["results"])


def test_the_option_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sqlite"
    monkeypatch.setenv("HIVEMEM_KEYWORD_CONTEXT", "1")
    with Memory(path, embedder=HashEmbedder()) as m:
        assert m._storage.context == 0.5
    with Memory(path, embedder=HashEmbedder(), keyword_context=False) as m:
        assert m._storage.context == 0.0
    monkeypatch.setenv("HIVEMEM_KEYWORD_CONTEXT", "maybe")
    with pytest.raises(ValueError, match="HIVEMEM_KEYWORD_CONTEXT must be 1 or 0"):
        Memory(path, embedder=HashEmbedder())
    monkeypatch.delenv("HIVEMEM_KEYWORD_CONTEXT")
    with pytest.raises(TypeError, match="keyword_context must be True or False"):
        Memory(path, embedder=HashEmbedder(), keyword_context="yes")  # type: ignore[arg-type]
    with Memory.from_config({"path": str(path), "keyword_context": True}) as m:
        assert m._storage.context == 0.5


def _has_context(path: Path) -> bool:
    db = sqlite3.connect(path)
    found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_ctx'").fetchone()
    db.close()
    return found is not None


def test_an_old_store_is_backfilled_in_steps_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.sqlite"
    with Memory(path, embedder=HashEmbedder()) as m:
        for user in ("a", "b"):
            m.add_batch([{"messages": f"{user} turn {i}", "user_id": user} for i in range(25)])
    assert not _has_context(path)  # a store never opened with the option: its writes pay nothing
    monkeypatch.setattr(fts, "CONTEXT_BATCH", 7)
    steps = []
    real = fts.backfill_context

    def one_step_then_die(db: sqlite3.Connection, batch: int | None = None) -> bool:
        steps.append(batch)
        if len(steps) == 3:
            raise KeyboardInterrupt  # as a process killed mid-backfill: two steps are committed
        return real(db, batch)

    monkeypatch.setattr(fts, "backfill_context", one_step_then_die)
    with pytest.raises(KeyboardInterrupt):
        Memory(path, embedder=HashEmbedder(), keyword_context=True)
    done = stored(path)
    assert len(done) == 14 and all(done[r] == c for r, c in expected(path).items() if r in done)
    monkeypatch.setattr(fts, "backfill_context", real)
    with Memory(path, embedder=HashEmbedder()) as m:  # option off: the backfill still resumes
        assert stored(path) == expected(path)
        assert words(m, "turn", user_id="b")[:1] == ["b turn 0"]
        m.add("a turn 25", user_id="a")
    assert stored(path) == expected(path)


def test_a_backfill_on_a_full_disk_is_disk_full_and_resumes(
    small_tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills during the backfill of an old store: a DiskFull naming the file, the steps
    committed before it kept, and the next open with room finishes the job."""
    disk = small_tmpfs(24 << 20)
    path = disk / "old.sqlite"
    with Memory(path, embedder=HashEmbedder()) as m:
        for b in range(6):
            m.add_batch(
                [{"messages": f"turn {b}.{i}: " + "words of a turn " * 6, "user_id": "u"} for i in range(500)]
            )
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"x" * max(0, free - (1200 << 10)))  # room for a few steps, not for all
    monkeypatch.setattr(fts, "CONTEXT_BATCH", 200)
    with pytest.raises(DiskFull) as caught:
        Memory(path, embedder=HashEmbedder(), keyword_context=True)
    assert str(path) in str(caught.value) and "disk full" in str(caught.value)
    done = stored(path)
    assert 0 < len(done) < 3000 and all(done[r] == c for r, c in expected(path).items() if r in done)
    filler.unlink()
    with Memory(path, embedder=HashEmbedder()):
        assert stored(path) == expected(path)


_BATCHER = r"""
import itertools, sys
sys.path[:0] = [sys.argv[2]]
from hash_embedder import HashEmbedder  # NOT a model: this test measures storage atomicity
from hivemem import Memory
m = Memory(sys.argv[1], embedder=HashEmbedder())
print("ready", flush=True)
for r in itertools.count():  # batches of 200 in two scopes, updates and deletes in between
    got = m.add_batch([{"messages": f"kill turn {r} {i}", "user_id": f"u{r % 2}"} for i in range(200)])
    ids = [x["id"] for x in got["results"]]
    m.batch_update([{"memory_id": i, "text": f"kill rewrite {r} {n}"} for n, i in enumerate(ids[::50])])
    m.batch_delete([{"memory_id": i} for i in ids[1::40]])
"""


def test_sigkill_during_writes_leaves_a_consistent_context(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    Memory(path, embedder=HashEmbedder(), keyword_context=True).close()  # the child writes without it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.2, 0.5, 0.9):
        child = subprocess.Popen(
            [sys.executable, "-c", _BATCHER, str(path), str(ROOT / "tests")],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert stored(path) == expected(path)
    assert len(expected(path)) > 200  # the child got to write


def test_reset_keeps_the_context_index(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    with Memory(path, embedder=HashEmbedder(), keyword_context=True) as m:
        m.add_batch([{"messages": f"t {i}", "user_id": "u"} for i in range(5)])
        m.reset()
        assert stored(path) == {}
        m.add_batch([{"messages": f"again {i}", "user_id": "u"} for i in range(3)])
        assert stored(path) == expected(path) and len(expected(path)) == 3


def test_postgres_refuses_the_option_clearly(pg_url: Callable[[], str]) -> None:
    """Until PostgreSQL has the context index, the option is refused there with what to do."""
    with pytest.raises(ValueError, match="keyword_context is not available on"):
        Memory(pg_url(), embedder=HashEmbedder(), keyword_context=True)
