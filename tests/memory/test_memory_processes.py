"""Many real processes on one store, and a process killed with SIGKILL in the middle of a batch;
each test on a SQLite file and on a PostgreSQL schema (``location``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from memory_helpers import HashEmbedder

from hivemem import Embedder, Memory
from hivemem.embed.corpus import sentences
from hivemem.memory.storage.locate import resolve

ROOT = Path(__file__).resolve().parents[2]


def _query(location: str, sqlite_sql: str, pg_sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the store itself (``{ns}`` in ``pg_sql``: the store's schema); on SQLite
    the file's integrity is checked too."""
    where = resolve(location)
    if isinstance(where, Path):
        db = sqlite3.connect(where)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return db.execute(sqlite_sql).fetchall()
        finally:
            db.close()
    import psycopg

    with psycopg.connect(where.conninfo, autocommit=True) as conn:
        # A client killed with SIGKILL may have sent its COMMIT already: the server finishes that
        # transaction after the kill. Wait until no other session is inside a transaction, so the
        # rows read below (and those a second query reads) are the final state, not a moment of it.
        deadline = time.monotonic() + 60
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend' AND state <> 'idle'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "a killed client's session never ended"
            time.sleep(0.02)
        return conn.execute(pg_sql.format(ns=f'"{where.schema}"')).fetchall()


_WRITER = r"""
import json, os, sys, time
from hivemem import Embedder, Memory
path, start, me, texts = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
m = Memory(path, embedder=Embedder(threads=1))
while not os.path.exists(start):
    time.sleep(0.005)
if me % 2:
    out = m.add_batch([{"messages": t, "user_id": "shared"} for t in texts])["results"]
else:
    out = [m.add(t, user_id="shared")["results"][0] for t in texts]
print(json.dumps({r["memory"]: [r["id"], r["event"]] for r in out}))
"""


@pytest.mark.slow
def test_25_processes_add_concurrently(
    location: str, tmp_path: Path, hm_home: Path, embedder: Embedder
) -> None:
    n_proc, per = 25, 8
    pool = sentences(n_proc * per, seed=11)
    shared = pool[: per // 2]
    own = pool[per // 2 :]
    path, start = location, tmp_path / "go"
    env = {**os.environ, "HIVEMEM_HOME": str(hm_home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    for i in range(n_proc):
        texts = shared + own[i * (per // 2) : (i + 1) * (per // 2)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, str(path), str(start), str(i), json.dumps(texts)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    start.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        assert "locked" not in err and "deadlock" not in err
        outputs.append(json.loads(out))
    rows = _query(path, "SELECT memory, id FROM memories", "SELECT memory, id FROM {ns}.memories")
    assert len(rows) == len(shared) + n_proc * (per // 2)
    assert len({m for m, _ in rows}) == len(rows)  # no text twice
    ids = dict(rows)
    for out in outputs:  # every process got the one stored id for every text it added
        assert all(ids[text] == rid for text, (rid, _) in out.items())
    for text in shared:  # exactly one process won each shared text
        assert sum(out[text][1] == "ADD" for out in outputs) == 1
    history = _query(path, "SELECT count(*) FROM history", "SELECT count(*) FROM {ns}.history")[0][0]
    assert history == len(rows)  # one ADD event per stored memory, none for the losers


_BATCHER = r"""
import itertools, sys
from hivemem import Embedder, Memory
path, texts, size, tag = sys.argv[1], open(sys.argv[2]).read().splitlines(), int(sys.argv[3]), sys.argv[4]
m = Memory(path, embedder=Embedder(threads=1))
print("ready", flush=True)
# texts are in the embedding cache, and each round uses a new scope: the child never stops writing
for r in itertools.count():
    for k in range(len(texts) // size):
        part = texts[k * size : (k + 1) * size]
        m.add_batch([{"messages": t, "user_id": f"{tag}-{r}", "metadata": {"batch": k}} for t in part])
"""


@pytest.mark.slow
def test_sigkill_mid_batch_leaves_whole_batches(
    location: str, tmp_path: Path, hm_home: Path, embedder: Embedder
) -> None:
    size = 150
    texts = [f"kill test note number {i}" for i in range(size * 8)]  # short: quick to embed
    embedder.embed(texts)  # warm the shared cache: the child's time then goes mostly into writing
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    env = {**os.environ, "HIVEMEM_HOME": str(hm_home), "PYTHONPATH": str(ROOT)}
    path = location
    for delay in (0.1, 0.3, 0.6):
        _kill_when_busy([_BATCHER, str(path), str(tmp_path / "texts.txt"), str(size), str(delay)], env, delay)
        # one statement, one snapshot: a PostgreSQL server may still commit the batch whose commit
        # the killed child had sent (whole, as it must), between two separate reads
        rows = _query(
            path,
            "SELECT user_id, json_extract(metadata, '$.batch'), count(*), (SELECT count(*) FROM history)"
            " FROM memories GROUP BY 1, 2",
            "SELECT user_id, meta -> 'batch', count(*), (SELECT count(*) FROM {ns}.history)"
            " FROM {ns}.memories GROUP BY 1, 2",
        )
        counts = {(user, batch): n for user, batch, n, _ in rows}
        assert any(user.startswith(f"{delay}-") for user, _ in counts)  # the child got to write
        assert all(n == size for n in counts.values()), counts  # and every batch is whole
        assert {history for *_, history in rows} == {sum(counts.values())}


_THREADS = r"""
import json, os, sys, threading, time
from hivemem import Embedder, Memory
path, start, texts, shared = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
m = Memory(path, embedder=Embedder(threads=1))
out, errors = [], []
def work(mine):
    try:
        for t in mine + shared:  # single adds, every thread also adds the shared texts
            out.append(m.add(t, user_id="shared", metadata={"pid": os.getpid()})["results"][0])
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=work, args=(texts[i::10],)) for i in range(10)]
while not os.path.exists(start):
    time.sleep(0.005)
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"results": out, "errors": errors}))
"""


@pytest.mark.slow
def test_threads_of_single_adds_in_two_processes(
    location: str, tmp_path: Path, hm_home: Path, embedder: Embedder
) -> None:
    """Ten threads of ``add`` in each of two processes (real model): nothing lost or duplicated,
    each shared text stored once with one ADD event across both processes and all threads."""
    pool = sentences(130, seed=12)
    shared, own = pool[:10], pool[10:]
    env = {**os.environ, "HIVEMEM_HOME": str(hm_home), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = tmp_path / "go"
    Memory(location, embedder=embedder).close()  # the store exists: the children only open it
    procs = []
    for i in range(2):
        texts = json.dumps(own[i::2])
        args = [sys.executable, "-c", _THREADS, location, str(start), texts, json.dumps(shared)]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    start.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        report = json.loads(out)
        assert report["errors"] == []
        results.extend(report["results"])
    assert len(results) == len(own) + 2 * 10 * len(shared)
    rows = _query(location, "SELECT memory, id FROM memories", "SELECT memory, id FROM {ns}.memories")
    assert sorted(m for m, _ in rows) == sorted(pool)  # all there, none twice
    ids = dict(rows)
    assert all(ids[r["memory"]] == r["id"] for r in results)  # every caller got the stored id
    for text in pool:
        assert sum(r["event"] == "ADD" for r in results if r["memory"] == text) == 1
    history = _query(location, "SELECT count(*) FROM history", "SELECT count(*) FROM {ns}.history")[0][0]
    assert history == len(pool)


_THREAD_KILL = r"""
import itertools, sys, threading
from hivemem import Embedder, Memory
path, texts, tag = sys.argv[1], open(sys.argv[2]).read().splitlines(), sys.argv[3]
m = Memory(path, embedder=Embedder(threads=1))
print("ready", flush=True)
def work(w):  # each add call stores three memories: all of them or none
    for r in itertools.count():
        for k in range(w, len(texts) // 3, 8):
            turns = [{"role": "user", "content": t} for t in texts[3 * k : 3 * k + 3]]
            m.add(turns, user_id=f"{tag}-{r}", metadata={"call": k})
threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(8)]
for t in threads:
    t.start()
threads[0].join()
"""


@pytest.mark.slow
def test_sigkill_amid_threads_of_adds_leaves_whole_calls(
    location: str, tmp_path: Path, hm_home: Path, embedder: Embedder
) -> None:
    """Eight threads of three-message ``add`` calls, killed with SIGKILL: every call that was
    stored is stored whole (calls of one group share a transaction, each still all or nothing)."""
    texts = [f"thread kill note {i}" for i in range(3 * 64)]
    embedder.embed(texts)  # the shared cache: the child's time goes mostly into writing
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    env = {**os.environ, "HIVEMEM_HOME": str(hm_home), "PYTHONPATH": str(ROOT)}
    for delay in (0.2, 0.5):
        child = subprocess.Popen(
            [sys.executable, "-c", _THREAD_KILL, location, str(tmp_path / "texts.txt"), str(delay)],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        rows = _query(
            location,
            "SELECT user_id, json_extract(metadata, '$.call'), count(*) FROM memories GROUP BY 1, 2",
            "SELECT user_id, meta -> 'call', count(*) FROM {ns}.memories GROUP BY 1, 2",
        )
        counts = {(user, call): n for user, call, n in rows}
        assert any(user.startswith(f"{delay}-") for user, _ in counts)  # the child got to write
        assert all(n == 3 for n in counts.values()), counts
        history = _query(location, "SELECT count(*) FROM history", "SELECT count(*) FROM {ns}.history")[0][0]
        assert history == sum(counts.values())


def _kill_when_busy(code_and_args: list[str], env: dict[str, str], delay: float) -> None:
    """Run ``python -c code args…``, wait for its "ready", let it work ``delay`` s, then SIGKILL it."""
    cmd = [sys.executable, "-c", *code_and_args]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()


_UPDATER = r"""
import itertools, sys
sys.path[:0] = [sys.argv[3], sys.argv[3] + "/.."]  # tests/memory and tests/
from memory_helpers import HashEmbedder  # NOT a model: this test measures storage atomicity
from hivemem import Memory
path, ids, start = sys.argv[1], sys.argv[2].split(","), int(sys.argv[4])
m = Memory(path, embedder=HashEmbedder())
print("ready", flush=True)
for r in itertools.count(start):  # every round rewrites every memory: text, vector, metadata, history
    m.batch_update([{"memory_id": i, "text": f"update kill note {n} round {r}", "metadata": {"round": r}}
                    for n, i in enumerate(ids)])
"""


def test_sigkill_mid_batch_update_leaves_all_or_nothing(location: str, tmp_path: Path) -> None:
    """A child rewrites 300 memories per ``batch_update`` without pause (the rounds go on across
    the three kills) and is killed with SIGKILL:
    every memory then holds the same round (text, metadata), and the history holds whole rounds.
    The child embeds with ``HashEmbedder`` (not a model): what is measured is the storage."""
    n = 300
    with Memory(location, embedder=HashEmbedder()) as m:
        out = m.add_batch([{"messages": f"update kill note {i} round 0", "user_id": "k"} for i in range(n)])
        ids = [r["id"] for r in out["results"]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last, here = 0, str(Path(__file__).parent)
    for delay in (0.2, 0.5, 0.9):
        _kill_when_busy([_UPDATER, location, ",".join(ids), here, str(last + 1)], env, delay)
        rows = _query(
            location,
            "SELECT memory, json_extract(metadata, '$.round'), (SELECT count(*) FROM history"
            " WHERE event = 'UPDATE') FROM memories",
            "SELECT memory, (meta ->> 'round')::int, (SELECT count(*) FROM {ns}.history"
            " WHERE event = 'UPDATE') FROM {ns}.memories",
        )
        rounds = {r[1] for r in rows}
        assert len(rows) == n
        assert len(rounds) == 1, f"memories of different rounds after SIGKILL: {sorted(rounds, key=str)[:5]}"
        (r,) = rounds
        last = r or last
        assert all(text.endswith(f" round {last}") for text, _, _ in rows)
        assert rows[0][2] % n == 0  # UPDATE events: one per memory of each whole round
        with Memory(location, embedder=HashEmbedder()) as m:  # vectors follow the texts
            text = f"update kill note 7 round {last}"
            hit = m.search(text, user_id="k", top_k=1, mode="vector")["results"][0]
            assert hit["memory"] == text and hit["score"] == pytest.approx(1.0, abs=1e-4)
