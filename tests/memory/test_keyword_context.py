"""Keyword context (issue 23): each memory is also indexed with the memories just before it in its
scope (``storage/fts.py``, ``memories_ctx``). These tests measure storage, not ranking quality, so
they use the hash embedder (NOT a model; ``tests/hash_embedder.py``) and run in the fast set; the
recall it buys is measured by ``benchmarks/retrieval.py`` on LoCoMo with the real model.

The derived table must always equal a rebuild from scratch (``expected``): after any sequence of
writes, after a process is killed mid-batch, and after an old store is opened (backfill). A window
never crosses user/agent/run scopes: another scope's text must never help rank a memory.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from memory_helpers import (
    TALK,
    TALK_SEARCHES,
    around_windows,
    kill_after,
    open_killed_at_step,
    random_writes,
    talk_rewrite,
    writes_keep_equal,
)

from hivemem import Memory
from hivemem.errors import DiskFull, MemoryNotFound
from hivemem.memory.storage import fts, ftscontext, pgkeyword
from hivemem.memory.storage.postgres import PostgresStorage

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]


def expected(path: Path | str) -> dict[int, str]:
    """The context of every row, computed from scratch in Python (``around_windows``): the memory,
    the 2 before it and the 2 after it in its scope, in insertion order, one per line."""
    db = sqlite3.connect(path)
    rows = db.execute("SELECT rid, scope, memory FROM memories ORDER BY rid").fetchall()
    db.close()
    return {rid: "\n".join(texts) for rid, texts in around_windows(rows).items()}


def stored(path: Path | str) -> dict[int, str]:
    """The context table as it is, after FTS5's own check that its index matches its rows."""
    db = sqlite3.connect(path)
    db.execute("INSERT INTO memories_ctx (memories_ctx) VALUES ('integrity-check')")
    out = dict(db.execute("SELECT rowid, context FROM memories_ctx"))
    db.close()
    return out


def pg_windows(m: Memory) -> tuple[dict[int, frozenset[str]], dict[int, frozenset[str]]]:
    """PostgreSQL: ``(stored, rebuilt)``, each row's window as its set of lexemes: the table as it
    is, and one rebuilt in Python (``around_windows``) from the ``words`` of each row and its
    neighbours in its scope (the lexemes only: positions are PostgreSQL's own concatenation)."""
    storage = m._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    with storage._pool.connection() as conn:
        rows = conn.execute(f"SELECT rid, scope, tsvector_to_array(words) FROM {ns}.memories ORDER BY rid")
        ctx = conn.execute(f"SELECT rid, tsvector_to_array(words) FROM {ns}.memories_ctx").fetchall()
        members = [(rid, scope, frozenset(lexemes)) for rid, scope, lexemes in rows.fetchall()]
    rebuilt = {rid: frozenset().union(*sets) for rid, sets in around_windows(members).items()}
    return {rid: frozenset(lexemes) for rid, lexemes in ctx}, rebuilt


def windows(m: Memory) -> tuple[dict[int, Any], dict[int, Any]]:
    """``(stored, rebuilt)`` on either backend."""
    if isinstance(m._storage, PostgresStorage):
        return pg_windows(m)
    return stored(m.location), expected(m.location)


def words(m: Memory, query: str, **scope: str) -> list[str]:
    return [h["memory"] for h in m.search(query, mode="keyword", **scope)["results"]]


def _open_killed_after_install(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open with the option on PostgreSQL interrupted at the very end of ``pgcontext.install``
    (its work done, not committed), as a killed process; ``install`` restored after."""
    from hivemem.memory.storage import pgcontext

    real = pgcontext.install

    def interrupted(conn: Any, ns: str, schema: str) -> None:
        real(conn, ns, schema)
        raise KeyboardInterrupt

    monkeypatch.setattr(pgcontext, "install", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Memory(location, embedder=HashEmbedder(), keyword_context=True)
    monkeypatch.setattr(pgcontext, "install", real)


@pytest.mark.parametrize("seed", [23, 24, 25])
def test_random_writes_keep_the_context_equal_to_a_rebuild(location: str, seed: int) -> None:
    """Adds, batches, updates, deletes, batch updates and deletes and delete_all in three scopes,
    in random order: after every step the table equals a rebuild from scratch (both backends)."""
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    assert writes_keep_equal(m, seed, 120, windows) > 20  # the sequence left a store to compare


def test_a_window_never_crosses_scopes(location: str) -> None:
    """Two users and two runs of one user, interleaved: a memory's window holds only its own
    scope's memories, and another scope's words never bring it into a search."""
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    for i in range(4):
        m.add(f"alice note {i}", user_id="alice")
        m.add(f"bob secret zanzibar {i}", user_id="bob")
        m.add(f"alice run one {i}", user_id="alice", run_id="r1")
        m.add(f"alice run two quokka {i}", user_id="alice", run_id="r2")
    now, rebuilt = windows(m)
    assert now == rebuilt and len(now) == 16
    for context in now.values():
        if isinstance(context, str):  # SQLite: the window's texts, one a line
            lines = context.split("\n")
            assert len({line.split(" ")[0] + line.split(" ")[1] for line in lines}) == 1, context
        else:  # PostgreSQL: the scope lexemes of one scope only (_u… and maybe one _r…)
            assert len({w for w in context if w.startswith("_")}) <= 2, context
            assert not {"zanzibar", "alic"} <= context and not {"one", "quokka"} <= context, context
    assert words(m, "zanzibar", user_id="alice") == []
    assert words(m, "quokka", user_id="alice", run_id="r1") == []
    assert len(words(m, "quokka", user_id="alice", run_id="r2")) == 4
    m.close()


def test_a_neighbour_word_finds_the_memory_only_with_the_option(location: str) -> None:
    """What the option is for: "who went with her?" is answered by the turn after the one that
    names the place; with context the later turn holds the place's word in its window."""
    path = location
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
    monkeypatch.setattr(ftscontext, "CONTEXT_BATCH", 7)
    # killed mid-backfill at the third step: the two before it are committed
    opening = functools.partial(Memory, path, embedder=HashEmbedder(), keyword_context=True)
    open_killed_at_step(monkeypatch, ftscontext, "backfill_context", 3, opening)
    done = stored(path)
    assert len(done) == 14 and all(done[r] == c for r, c in expected(path).items() if r in done)
    with Memory(path, embedder=HashEmbedder()) as m:  # option off: the backfill still resumes
        assert stored(path) == expected(path)
        assert words(m, "turn", user_id="b")[:1] == ["b turn 0"]
        m.add("a turn 25", user_id="a")
    assert stored(path) == expected(path)


def _open_with_the_disk_filling(
    small_tmpfs: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    before: Callable[[Path], object] | None = None,
) -> tuple[Path, Path]:
    """3,000 memories in one scope on a small disk (``before(path)`` run on the store, then
    compacted), the disk filled to leave room for a few steps of window work, not for all, and an
    open with ``keyword_context`` that must fail with a DiskFull naming the file. Returns the store's
    path and the filler file (unlink it to make room)."""
    disk = small_tmpfs(24 << 20)
    path = disk / "old.sqlite"
    with Memory(path, embedder=HashEmbedder()) as m:
        for b in range(6):
            m.add_batch(
                [{"messages": f"turn {b}.{i}: " + "words of a turn " * 6, "user_id": "u"} for i in range(500)]
            )
    if before is not None:
        before(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"x" * max(0, free - (1200 << 10)))
    monkeypatch.setattr(ftscontext, "CONTEXT_BATCH", 200)
    with pytest.raises(DiskFull) as caught:
        Memory(path, embedder=HashEmbedder(), keyword_context=True)
    assert str(path) in str(caught.value) and "disk full" in str(caught.value)
    return path, filler


def test_a_backfill_on_a_full_disk_is_disk_full_and_resumes(
    small_tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills during the backfill of an old store: a DiskFull naming the file, the steps
    committed before it kept, and the next open with room finishes the job."""
    path, filler = _open_with_the_disk_filling(small_tmpfs, monkeypatch)
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
        kill_after(child, delay)
        assert stored(path) == expected(path)
    assert len(expected(path)) > 200  # the child got to write


def test_reset_keeps_the_context_index(location: str) -> None:
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        m.add_batch([{"messages": f"t {i}", "user_id": "u"} for i in range(5)])
        m.reset()
        assert windows(m)[0] == {}
        m.add_batch([{"messages": f"again {i}", "user_id": "u"} for i in range(3)])
        now, rebuilt = windows(m)
        assert now == rebuilt and len(rebuilt) == 3


@pytest.mark.parametrize("wide", [False, True])
def test_concurrent_writers_in_one_scope_end_with_exact_windows(
    pg_url: Callable[[], str], wide: bool
) -> None:
    """PostgreSQL: four writers (each its own ``Memory``, so its own connections) add, batch,
    update and delete in ONE scope at once. A window computed by one transaction cannot see the
    rows another has not committed; the scope's lock and the re-indexing of the following rows
    (``pgcontext``) must still leave every window equal to a rebuild. ``wide``: each batch also
    writes to 100 other users, so it takes the store's lock instead of the scopes' buckets."""
    location = pg_url()
    Memory(location, embedder=HashEmbedder(), keyword_context=True).close()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            with Memory(location, embedder=HashEmbedder()) as m:  # the option off: writes keep it anyway
                mine: list[str] = []
                start.wait()
                for step in range(25):
                    op = rng.choice(["add", "batch", "batch", "update", "delete"])
                    if op == "add" or not mine:
                        mine.append(m.add(f"w{w} add {step}", user_id="u")["results"][0]["id"])
                    elif op == "batch":
                        batch = [{"messages": f"w{w} batch {step} {i}", "user_id": "u"} for i in range(4)]
                        others = [{"messages": f"w{w} other {step}", "user_id": f"o{i}"} for i in range(100)]
                        mine += [r["id"] for r in m.add_batch(batch + others * wide)["results"][:4]]
                    elif op == "update":
                        m.update(rng.choice(mine), f"w{w} rewrite {step}")
                    else:
                        m.delete(mine.pop(rng.randrange(len(mine))))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Memory(location, embedder=HashEmbedder()) as m:
        now, rebuilt = windows(m)
    assert now == rebuilt and len(rebuilt) > 60


@pytest.mark.parametrize("limits", ["default", "small"])
def test_both_backends_rank_alike_with_the_option(
    tmp_path: Path, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch, limits: str
) -> None:
    """The same rows on SQLite and PostgreSQL, searched with the option on: the same memories in
    the same order, with the same scores and the same ``keyword_body``/``keyword_context`` parts
    (words both stemmers stem alike; a filter beyond the scope; a search without scope). With
    ``small`` limits, scopes are "large" (statistics of the store) and the rarest words are kept."""
    if limits == "small":
        for module in (fts, pgkeyword):
            monkeypatch.setattr(module, "RANK_BUDGET", 8)
            monkeypatch.setattr(module, "SCOPE_ROWS_MAX", 4)
    places = [str(tmp_path / "m.sqlite"), pg_url()]
    stores = [Memory(place, embedder=HashEmbedder()) for place in places]
    for m in stores:  # rows first, then the option: the backfill indexes them, later adds the triggers
        m.add_batch([{"messages": t, "user_id": u, "run_id": r, "metadata": {"n": i}}
                     for i, (u, r, t) in enumerate(TALK[:6])])  # fmt: skip
        m.close()
    stores = [Memory(place, embedder=HashEmbedder(), keyword_context=True) for place in places]
    for m in stores:
        for i, (u, r, t) in enumerate(TALK[6:], start=6):
            m.add(t, user_id=u, run_id=r, metadata={"n": i})
        talk_rewrite(m)
    searches: list[dict[str, Any]] = [*TALK_SEARCHES, {"query": "lake"}]
    for args in searches:
        found = []
        for m in stores:
            hits = m.search(**args, mode="keyword", explain=True)["results"]
            found.append([(h["memory"], round(h["score"], 9), round(h["score_details"]["keyword_body"], 9),
                           round(h["score_details"]["keyword_context"], 9)) for h in hits])  # fmt: skip
        assert found[0] == found[1] and len(found[0]) >= 2, args
        hybrid = [[h["memory"] for h in m.search(**args, explain=True)["results"]] for m in stores]
        assert hybrid[0] == hybrid[1], args
    for m in stores:
        m.close()


def test_an_import_and_expired_purges_keep_the_context(location: str, tmp_path: Path) -> None:
    """``hivemem memory import`` (``transfer.import_lines``, kept ids and history) into a store
    with the option, then a purge of expired memories: the windows equal a rebuild after each."""
    from hivemem.memory.transfer import export_lines, import_lines

    source = Memory(tmp_path / "source.sqlite", embedder=HashEmbedder())
    source.add_batch([{"messages": f"imported turn {i}", "user_id": f"u{i % 2}"} for i in range(30)])
    source.add_batch([{"messages": f"short lived {i}", "user_id": "u0", "expiration_date": "2001-01-01"}
                      for i in range(5)])  # fmt: skip
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        m.add("already here", user_id="u0")
        import_lines(m, list(export_lines(source)), batch=7)
        now, rebuilt = windows(m)
        assert now == rebuilt and len(rebuilt) == 36
        assert m.purge_expired() == 5
        now, rebuilt = windows(m)
        assert now == rebuilt and len(rebuilt) == 31
    source.close()


def test_postgres_makes_the_index_in_one_transaction(
    pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL fills the windows of an old store in the transaction that makes the table and
    its triggers: interrupted at its very end (as a killed process), it leaves no table, no
    trigger and no meta key; writes go on without it and the next open with the option makes it whole."""
    from hivemem.memory.storage import pgcontext

    location = pg_url()
    with Memory(location, embedder=HashEmbedder()) as m:
        m.add_batch([{"messages": f"old turn {i}", "user_id": f"u{i % 3}"} for i in range(40)])
    _open_killed_after_install(location, monkeypatch)
    with Memory(location, embedder=HashEmbedder()) as m:
        storage = m._storage
        assert isinstance(storage, PostgresStorage)
        with storage._pool.connection() as conn:
            ns = f'"{storage.schema}"'
            assert not pgcontext.exists(conn, ns) and not pgcontext.ready(conn, ns)
            triggers = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass"
                " AND tgname LIKE 'memories_ctx_%%'",
                (f"{ns}.memories",),
            )
            assert triggers.fetchone()[0] == 0
        m.add("old turn 40", user_id="u1")
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        now, rebuilt = windows(m)
        assert now == rebuilt and len(rebuilt) == 41
        assert words(m, "turn", user_id="u2")[:1] == ["old turn 2"]


@pytest.mark.pg  # starts its own server (no pg_dsn fixture): not in the fast loop
def test_one_statement_over_more_scopes_than_the_lock_table_holds() -> None:
    """PostgreSQL: one ``add_batch`` and one ``purge_expired`` across 3,000 users, on a server
    whose lock table holds about 10 × (20 + 22 background) = 420 locks (plus the shared memory's
    slack). A lock per scope ran out of it ("out of shared memory … max_locks_per_transaction");
    ``pgcontext`` takes at most ``LOCK_BUCKETS_MAX`` bucket locks or the store's one, and the
    windows still equal a rebuild."""
    from pgtemp import TempPostgres

    users = 3000
    with TempPostgres({"max_connections": "20", "max_locks_per_transaction": "10"}) as pg:
        location = f"{pg.dsn}&schema=t_locks&maxconn=2"
        with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
            for first in range(0, users, 250):  # small batches: few scopes per statement
                m.add_batch([{"messages": f"{word} {i}", "user_id": f"u{i}", "expiration_date": date}
                             for i in range(first, first + 250)
                             for word, date in (("short lived", "2001-01-01"), ("kept", None))])  # fmt: skip
            assert m.purge_expired() == users  # one DELETE across every scope
            now, rebuilt = windows(m)
            assert now == rebuilt and len(rebuilt) == users
            batch = [{"messages": f"later {i}", "user_id": f"u{i % users}"} for i in range(2 * users)]
            assert len(m.add_batch(batch)["results"]) == 2 * users  # one INSERT across every scope
            now, rebuilt = windows(m)
            assert now == rebuilt and len(rebuilt) == 3 * users


@pytest.mark.parametrize("other", ["another_user", "expired", "metadata"])
def test_rows_the_filter_drops_never_change_the_order(
    location: str, monkeypatch: pytest.MonkeyPatch, other: str
) -> None:
    """The best body and window a score is divided by are those of the rows that pass the filter
    (``fts.rank``): a row that fails it, with a body above every passing row's, must not change
    the order (reviewer's A/B/C). Passing, A ("mango peach", body 2 words, window 2: notes around
    it) comes before B ("lemon", body 1, window 5, between "apple banana" and "cherry grape"):
    2/2 + 0.5 × 2/5 = 1.2 against 1/2 + 0.5 = 1.0 (B's neighbours, body 2 and window 5: 1.5,
    first); C (5 words, window 5) would make A and B 2/5 + 0.2 = 0.6 and 1/5 + 0.5 = 0.7. C is
    another user's row (with the statistics of the store, as for a scope of more than
    ``SCOPE_ROWS_MAX`` rows: there FTS5 reads every user's rows), the user's own expired row, or
    one a metadata filter leaves out. Each fails on the code before ``rank`` took the bests of the
    passing rows (the order A/B flips). Every content word is in 5 windows: equal idf."""
    if other == "another_user":
        for module in (fts, pgkeyword):
            monkeypatch.setattr(module, "SCOPE_ROWS_MAX", 0)
    talk = ["note one", "note two", "mango peach", "note three", "note four", "note five",
            "apple banana", "lemon", "cherry grape", "note six", "note seven", "note eight", "note nine",
            "note ten"]  # fmt: skip
    c_text = "kiwi melon olive pepper radish"
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    rows: list[dict[str, Any]] = [{"messages": t, "user_id": "u", "metadata": {"kind": "talk"}} for t in talk]
    if other == "another_user":
        rows += [{"messages": t, "user_id": "v"} for t in ["note ten", "note eleven", c_text, "note twelve"]]
    elif other == "expired":  # C's window: its own words only (as B's, 5 words)
        rows.insert(12, {**rows[0], "messages": c_text, "expiration_date": "2001-01-01"})
    else:
        rows.insert(12, {**rows[0], "messages": c_text, "metadata": {"kind": "draft"}})
    m.add_batch(rows)
    query = "apple banana cherry grape lemon mango peach " + c_text
    filters = {"kind": "talk"} if other == "metadata" else None
    hits = m.search(query, user_id="u", filters=filters, mode="keyword", explain=True, top_k=50)["results"]
    found = [h["memory"] for h in hits]
    assert c_text not in found
    assert found[:4] == ["apple banana", "cherry grape", "mango peach", "lemon"], found
    best_body = max(h["score_details"]["keyword_body"] for h in hits)
    best_window = max(h["score_details"]["keyword_context"] for h in hits)
    for h in hits:  # every passing match is a hit (top_k): the bests are theirs
        d = h["score_details"]
        assert h["score"] == pytest.approx(
            d["keyword_body"] / best_body + 0.5 * d["keyword_context"] / best_window
        )
    m.close()


def test_many_deletes_reindex_each_window_once_and_a_failed_batch_changes_nothing(location: str) -> None:
    """SQLite deletes many rows with the windows' re-indexing deferred to the end of the statement
    (``ftscontext.delete_rows``): runs of neighbours, single rows and whole scopes at once keep the table
    equal to a rebuild, and a ``batch_delete`` refused for an unknown id leaves neither rows nor the
    deferral behind (a later single delete still re-indexes the windows after it)."""
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    rows = [{"messages": f"note {i} word{i % 7}", "user_id": f"u{i % 3}"} for i in range(90)]
    ids = [r["id"] for r in m.add_batch(rows)["results"]]
    with pytest.raises(MemoryNotFound):
        m.batch_delete([{"memory_id": i} for i in [*ids[:10], "no-such-id"]])
    assert len(m.get_all(user_id="u0")["results"]) == 30
    m.delete(ids[4])
    now, rebuilt = windows(m)
    assert now == rebuilt
    if not isinstance(m._storage, PostgresStorage):
        db = sqlite3.connect(m.location)
        assert (
            db.execute("SELECT count(*) FROM meta WHERE key = ?", (ftscontext.DEFER_KEY,)).fetchone()[0] == 0
        )
        db.close()
    m.batch_delete([{"memory_id": i} for i in ids[20:50] + ids[60:90:4] if i != ids[4]])
    now, rebuilt = windows(m)
    assert now == rebuilt
    m.delete_all(user_id="u1")
    now, rebuilt = windows(m)
    assert now == rebuilt and len(rebuilt) > 10
    m.close()


def test_postgres_deleting_a_scope_walks_its_deleted_rows_once(pg_url: Callable[[], str]) -> None:
    """PostgreSQL: the rows a statement deletes stay in the ``(scope, rid)`` index, invisible,
    until vacuumed; ``hm_ctx_sync`` looked for each deleted row's followers by walking that index
    from the row on, past every later deleted row (a ``delete_all`` of 100,000 memories in one
    scope ran for minutes), and ``hm_window``, planned for a table not yet analysed, read every
    row of the scope up to the row. Counted in index entries read by the deleting transaction
    (not timed): deleting 1,714 of 2,000 rows read ~2 million entries on the old code (fails
    there), 286,000 with only the first fix, ~4,600 now."""
    m = Memory(pg_url(), embedder=HashEmbedder(), keyword_context=True)
    n = 2000
    for first in range(0, n, 1000):
        m.add_batch([{"messages": f"note {i}", "user_id": "u"} for i in range(first, first + 1000)])
    m.add_batch([{"messages": f"kept {i}", "user_id": "v"} for i in range(5)])
    storage = m._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    count = "SELECT pg_stat_get_xact_tuples_returned(%s::regclass)"
    with storage._pool.connection() as conn, conn.transaction():
        before = conn.execute(count, (f"{ns}.memories_scope_rid",)).fetchone()[0]
        conn.execute(f"DELETE FROM {ns}.memories WHERE user_id = 'u' AND rid % 7 != 3")  # runs of 6
        read = conn.execute(count, (f"{ns}.memories_scope_rid",)).fetchone()[0] - before
    assert read < 20 * n, read
    now, rebuilt = windows(m)
    assert now == rebuilt and len(rebuilt) > n // 8
    m.close()


_OTHER_PROCESS = r"""
import sys
from hash_embedder import HashEmbedder
from hivemem import Memory
with Memory(sys.argv[1], embedder=HashEmbedder()) as m:
    rows = [{"messages": f"other note {i} word{i % 4}", "user_id": "a"} for i in range(6)]
    ids = [r["id"] for r in m.add_batch(rows)["results"]]
    m.add("other note word1", user_id="b")
    m.update(ids[0], "other rewritten word2")
    m.delete(ids[2])
"""


@pytest.mark.parametrize("scope_rows_max", [10_000, 8])
def test_postgres_context_row_lists_equal_the_old_statement(
    pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch, scope_rows_max: int
) -> None:
    """PostgreSQL keeps each word's body rows and window rows per process (``Postings``), the
    windows followed by ``memories_ctx.tx``: a window changes when a neighbour is added, changed
    or deleted, in another transaction than the row's own. After each of a random sequence of
    writes by another ``Memory``, after four writers at once in one scope and after another
    process's writes, every search equals the one statement that reads every list from GIN (a
    fresh ``KeywordSearch``, which keeps nothing: the old path), parts and scores to the bit, and
    every kept list equals the rows holding its word now. Inside an older ``snapshot()`` the
    lists (brought past it by another thread) are not used: the search sees the snapshot's rows.
    With a small budget the searches are "large" (row lists), per scope or (``scope_rows_max``
    8) over the whole store."""
    from hivemem.memory import filters as flt

    monkeypatch.setattr(pgkeyword, "RANK_BUDGET", 30)
    monkeypatch.setattr(pgkeyword, "SCOPE_ROWS_MAX", scope_rows_max)
    location = pg_url()
    reader, writer = (Memory(location, embedder=HashEmbedder(), keyword_context=c) for c in (True, False))
    storage = reader._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    wheres = [
        None,
        *(flt.parse(s) for s in ({"user_id": "a"}, {"user_id": "b"}, {"user_id": "a", "run_id": "r1"})),
    ]
    queries = [
        ["note", "word1"],
        ["batch3", "word2", "note"],
        ["rewritten", "word0", "batch"],
        ["foo_bar", "note"],
    ]

    def searches() -> list[Any]:
        storage._keywords._counts.clear()  # word and scope counts: kept within 10% of the size
        return [storage.keyword_search(q, w, 10) for w in wheres for q in queries]

    def check(label: str) -> None:
        new = searches()
        kept = storage._keywords
        storage._keywords = pgkeyword.KeywordSearch(kept.ns, kept.fields)  # nothing kept: all from GIN
        try:
            old = searches()
        finally:
            storage._keywords = kept
        assert new == old, label
        postings = kept.postings
        with storage._pool.connection() as conn:
            postings.refresh(conn)  # as the next search does first
            for table, lists in (("memories", postings._entries), ("memories_ctx", postings._windows)):
                for (_, pairs, lexeme), entry in lists.items():
                    inside = "".join(f" AND m.{f} = %s" for f, _ in pairs)
                    truth = conn.execute(
                        f"SELECT x.rid FROM {ns}.{table} x JOIN {ns}.memories m USING (rid)"
                        f" WHERE x.words @@ %s::tsquery{inside}",
                        [f"'{lexeme}'", *(v for _, v in pairs)],
                    ).fetchall()
                    assert sorted(entry.rids.tolist()) == sorted(r[0] for r in truth), (label, table, lexeme)

    for label in random_writes(writer, seed=31, steps=40):
        check(label)
    postings = storage._keywords.postings
    assert postings._windows and postings._entries  # the searches were served by kept lists

    def burst(w: int) -> None:
        rng = random.Random(w)
        with Memory(location, embedder=HashEmbedder()) as m:
            mine = [m.add(f"burst {w} note word{w}", user_id="a")["results"][0]["id"]]
            for step in range(8):
                op = rng.choice(["add", "batch", "update", "delete"])
                if op == "add" or not mine:
                    mine.append(m.add(f"burst {w} {step} note", user_id="a")["results"][0]["id"])
                elif op == "batch":
                    rows = [{"messages": f"burst {w} {step} {i} word1", "user_id": "a"} for i in range(3)]
                    mine += [r["id"] for r in m.add_batch(rows)["results"]]
                elif op == "update":
                    m.update(rng.choice(mine), f"burst {w} rewritten {step} word2")
                else:
                    m.delete(mine.pop(rng.randrange(len(mine))))

    threads = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check("four writers in one scope")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    done = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS, location], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    check("another process")
    assert postings.dropped == 0  # followed, never thrown away

    with storage.snapshot():
        before = searches()
        writer.add_batch([{"messages": f"late note word1 word2 {i}", "user_id": "a"} for i in range(12)])
        other = threading.Thread(target=searches)  # its own connection: the lists pass the snapshot
        other.start()
        other.join()
        assert searches() == before
    check("after the snapshot")
    reader.close()
    writer.close()


# -- the symmetric window: by hand, and an old (backward) store migrated --------------------------

HAND = ["kilo", "lima", "mike", "oscar", "papa", "tango", "zulu"]  # one word a memory, stemmed alike


def by_hand(m: Memory) -> dict[str, list[str]]:
    """Each memory's window as stored, by its text: SQLite's lines in order; PostgreSQL's lexemes
    (sorted, the scope's ``_…`` lexemes left out)."""
    storage = m._storage
    if isinstance(storage, PostgresStorage):
        ns = f'"{storage.schema}"'
        with storage._pool.connection() as conn:
            rows = conn.execute(
                f"SELECT m.memory, tsvector_to_array(c.words) FROM {ns}.memories m"
                f" JOIN {ns}.memories_ctx c USING (rid)"
            ).fetchall()
        return {text: sorted(w for w in lexemes if not w.startswith("_")) for text, lexemes in rows}
    db = sqlite3.connect(m.location)
    rows = db.execute("SELECT m.memory, c.context FROM memories m JOIN memories_ctx c ON c.rowid = m.rid")
    out = {text: context.split("\n") for text, context in rows}
    db.close()
    return out


def test_windows_by_hand_hold_two_memories_on_each_side(location: str) -> None:
    """The windows written out by hand, not rebuilt by any code (``around_windows`` is itself
    code): each memory, the 2 before it and the 2 after it in its scope, in insertion order; after
    a delete and a change of text in the middle, the same by hand. On PostgreSQL the lexemes
    (sorted: the words here sort in insertion order). Fails on the backward window."""
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    added = m.add_batch([{"messages": w, "user_id": "u"} for w in HAND])["results"]
    m.add("victor", user_id="v")  # another scope: in no window of u's
    assert by_hand(m) == {
        "kilo": ["kilo", "lima", "mike"],
        "lima": ["kilo", "lima", "mike", "oscar"],
        "mike": ["kilo", "lima", "mike", "oscar", "papa"],
        "oscar": ["lima", "mike", "oscar", "papa", "tango"],
        "papa": ["mike", "oscar", "papa", "tango", "zulu"],
        "tango": ["oscar", "papa", "tango", "zulu"],
        "zulu": ["papa", "tango", "zulu"],
        "victor": ["victor"],
    }
    # a word two memories later finds the memory (keyword mode: the body's and the window's scores)
    assert sorted(words(m, "zulu", user_id="u")) == ["papa", "tango", "zulu"]
    assert sorted(words(m, "kilo", user_id="u")) == ["kilo", "lima", "mike"]
    m.delete(added[3]["id"])  # oscar
    m.update(added[1]["id"], "quebec")  # lima
    after = {  # in insertion order; PostgreSQL's lexemes are compared sorted
        "kilo": ["kilo", "quebec", "mike"],
        "quebec": ["kilo", "quebec", "mike", "papa"],
        "mike": ["kilo", "quebec", "mike", "papa", "tango"],
        "papa": ["quebec", "mike", "papa", "tango", "zulu"],
        "tango": ["mike", "papa", "tango", "zulu"],
        "zulu": ["papa", "tango", "zulu"],
        "victor": ["victor"],
    }
    pg = isinstance(m._storage, PostgresStorage)
    assert by_hand(m) == {text: sorted(window) if pg else window for text, window in after.items()}
    m.close()


# The code before the symmetric window (73744e7, ``fts.context_schema(False)``), written out: its
# layout mark, its table, triggers and fill, to make a store of the old layout (``old_store``).
_OLD_LAYOUT = f"3 {fts.TOKENIZER} 2"
_OLD_SCOPE = "coalesce('u' || hex({p}.user_id), '') || ' ' || coalesce('a' || hex({p}.agent_id), '') || ' '" \
    " || coalesce('r' || hex({p}.run_id), '')"  # fmt: skip
_OLD_WINDOW = "(SELECT group_concat(memory, char(10)) FROM (SELECT w.memory FROM memories w" \
    " WHERE w.scope = {p}.scope AND w.rid <= {p}.rid ORDER BY w.rid DESC LIMIT 3))"  # fmt: skip
_OLD_AFTER = "SELECT rid FROM memories WHERE scope = {p}.scope AND rid {op} {p}.rid ORDER BY rid LIMIT {n}"
_OLD_DEFER = "(SELECT CASE WHEN EXISTS (SELECT 1 FROM meta WHERE key = 'fts_ctx_defer') THEN 0 ELSE 2 END)"


def _old_reindex(rows: str) -> str:
    return (
        f" DELETE FROM memories_ctx WHERE rowid IN ({rows}); INSERT INTO memories_ctx (rowid, context, scope)"
        f" SELECT m.rid, {_OLD_WINDOW.format(p='m')}, {_OLD_SCOPE.format(p='m')} FROM memories m"
        f" WHERE m.rid IN ({rows});"
    )


_OLD_SCHEMA = (
    f"CREATE VIRTUAL TABLE memories_ctx USING fts5(context, scope, tokenize='{fts.TOKENIZER}')",
    "CREATE TRIGGER memories_ctx_insert AFTER INSERT ON memories BEGIN INSERT INTO memories_ctx"
    f" (rowid, context, scope) VALUES (new.rid, {_OLD_WINDOW.format(p='new')}, {_OLD_SCOPE.format(p='new')});"
    " END",
    "CREATE TRIGGER memories_ctx_delete AFTER DELETE ON memories BEGIN DELETE FROM memories_ctx WHERE"
    f" rowid = old.rid;{_old_reindex(_OLD_AFTER.format(p='old', op='>', n=_OLD_DEFER))} END",
    "CREATE TRIGGER memories_ctx_update AFTER UPDATE OF memory, scope, user_id, agent_id, run_id ON memories"
    " BEGIN DELETE FROM memories_ctx WHERE rowid = old.rid;"
    f"{_old_reindex(_OLD_AFTER.format(p='old', op='>', n=2))}"
    f"{_old_reindex(_OLD_AFTER.format(p='new', op='>=', n=3))} END",
)


def old_store(path: Path) -> None:
    """Give the store at ``path`` the keyword context as the code before the symmetric window
    made it: its backward windows (the memory and the 2 before it, newest first), its triggers,
    its mark."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    for sql in ("insert", "delete", "update"):
        db.execute(f"DROP TRIGGER IF EXISTS memories_ctx_{sql}")
    db.execute("DROP TABLE IF EXISTS memories_ctx")
    for sql in _OLD_SCHEMA:
        db.execute(sql)
    db.execute(_old_reindex("SELECT rid FROM memories").split(";")[1])
    high = db.execute("SELECT coalesce(max(rid), 0) FROM memories").fetchone()[0]
    db.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("fts_ctx", _OLD_LAYOUT), ("fts_ctx_done", -1), ("fts_ctx_high", high)],
    )
    db.execute("COMMIT")
    db.close()


def backward(path: Path) -> dict[int, str]:
    """The old layout's windows rebuilt in Python: the memory and the 2 before it, newest first."""
    db = sqlite3.connect(path)
    by_scope: dict[str, list[str]] = {}
    out = {}
    for rid, scope, text in db.execute("SELECT rid, scope, memory FROM memories ORDER BY rid"):
        mine = by_scope.setdefault(scope, [])
        mine.append(text)
        out[rid] = "\n".join(reversed(mine[-3:]))
    db.close()
    return out


def test_an_old_stores_backward_windows_become_symmetric_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, a store whose windows the old code made (backward): the next open with the option
    fills ± 2 windows beside them in steps and swaps them in at the last one. Killed after two
    steps: the old windows are whole (and still what searches read: a process that has the store
    open meanwhile gets the results it got before, and its writes keep both tables exact), the new
    ones filled are exact, and the next open, without the option, finishes the job."""
    path = tmp_path / "old.sqlite"
    reader = Memory(path, embedder=HashEmbedder(), keyword_context=True)  # open all along
    for user in ("a", "b"):
        reader.add_batch([{"messages": f"{user} turn {i} w{i}", "user_id": user} for i in range(25)])
    old_store(path)
    assert stored(path) == backward(path) != expected(path)

    def searches() -> list[Any]:
        return [[(h["memory"], h["score"]) for h in reader.search(q, user_id="b", mode="keyword")["results"]]
                for q in ("w3", "w7 w20", "turn w11")]  # fmt: skip

    before = searches()
    assert [h for h, _ in before[0]] == ["b turn 3 w3", "b turn 4 w4", "b turn 5 w5"]  # backward windows
    monkeypatch.setattr(ftscontext, "CONTEXT_BATCH", 7)
    opening = functools.partial(Memory, path, embedder=HashEmbedder(), keyword_context=True)
    open_killed_at_step(monkeypatch, ftscontext, "backfill_context", 3, opening)
    assert stored(path) == backward(path)  # whole
    assert searches() == before
    reader.add("a turn 25 w25", user_id="a")
    reader.delete(reader.get_all(user_id="b", top_k=100)["results"][0]["id"])
    assert stored(path) == backward(path)
    db = sqlite3.connect(path)
    filled = dict(db.execute(f"SELECT rowid, context FROM {ftscontext.NEXT_TABLE}"))
    assert db.execute("SELECT value FROM meta WHERE key = 'fts_ctx'").fetchone()[0] == _OLD_LAYOUT
    db.close()
    now = expected(path)
    assert len(filled) >= 14 and all(now[r] == c for r, c in filled.items())
    assert max(filled) == max(now)  # the add meanwhile: its window and those before it, by its triggers
    with Memory(path, embedder=HashEmbedder()):  # without the option: resumes, then swaps
        assert stored(path) == expected(path)
    db = sqlite3.connect(path)
    assert (
        db.execute("SELECT value FROM meta WHERE key = 'fts_ctx'").fetchone()[0] == ftscontext.CONTEXT_LAYOUT
    )
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name LIKE 'memories_ctx_next%'").fetchone() is None
    db.close()
    # the process open all along now searches the ± 2 windows: a word 2 memories later finds it
    assert words(reader, "w5", user_id="b")[:3] == ["b turn 5 w5", "b turn 3 w3", "b turn 4 w4"]
    reader.add("b turn 25 w25", user_id="b")
    assert stored(path) == expected(path)
    reader.close()


def test_postgres_backward_windows_become_symmetric_at_the_next_open(
    pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, a store whose windows are of the old version (backward: made here by this
    code with ``CONTEXT_AFTER`` 0, the old code's windows and re-indexing, under the old
    ``VERSION``): opened without the option it keeps them (exact, by their triggers); opened
    with it, they become ± 2 windows in one transaction (interrupted: the old ones whole), and
    a process open all along searches the new ones."""
    from hivemem.memory.storage import pgcontext

    location = pg_url()
    monkeypatch.setattr(pgcontext, "CONTEXT_AFTER", 0)
    monkeypatch.setattr(pgcontext, "VERSION", f"4 2 {pgcontext.WORDS_VERSION}")
    reader = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    reader.add_batch([{"messages": f"turn {i} w{i}", "user_id": f"u{i % 2}"} for i in range(30)])
    monkeypatch.undo()

    def backward_sets() -> tuple[dict[int, frozenset[str]], dict[int, frozenset[str]]]:
        now, _ = pg_windows(reader)
        storage = reader._storage
        assert isinstance(storage, PostgresStorage)
        with storage._pool.connection() as conn:
            rows = conn.execute(
                f'SELECT rid, scope, tsvector_to_array(words) FROM "{storage.schema}".memories ORDER BY rid'
            ).fetchall()
        by_scope: dict[str, list[frozenset[str]]] = {}
        old = {}
        for rid, scope, lexemes in rows:
            mine = by_scope.setdefault(scope, [])
            mine.append(frozenset(lexemes))
            old[rid] = frozenset().union(*mine[-3:])
        return now, old

    now, old = backward_sets()
    assert now == old and now != pg_windows(reader)[1]
    before = words(reader, "w5", user_id="u1")
    with Memory(location, embedder=HashEmbedder()) as m:  # without the option: kept, and exact
        m.add("turn 30 w30", user_id="u0")
    now, old = backward_sets()
    assert now == old
    _open_killed_after_install(location, monkeypatch)
    now, old = backward_sets()
    assert now == old and words(reader, "w5", user_id="u1") == before
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        now, rebuilt = pg_windows(m)
        assert now == rebuilt and len(now) == 31
        fresh = words(m, "w5", user_id="u1")
    assert words(reader, "w5", user_id="u1") == fresh != before
    assert fresh[:3] == ["turn 5 w5", "turn 1 w1", "turn 3 w3"]
    reader.close()


def old_delete_rows(db: sqlite3.Connection, removed: list[tuple[str, int]]) -> None:
    """The old code's batch delete (``fts.delete_rows`` before the symmetric window), written out:
    ``fts_ctx_defer`` set, the rows deleted, the key removed, then the backward windows of the 2
    rows after each deleted one written by itself."""
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fts_ctx_defer', 1)")
    db.executemany("DELETE FROM memories WHERE rid = ?", [(rid,) for _, rid in removed])
    db.execute("DELETE FROM meta WHERE key = 'fts_ctx_defer'")
    after = {r for s, rid in removed for (r,) in db.execute(_OLD_AFTER.format(p="g", op=">", n=2)
             .replace("g.scope", "?").replace("g.rid", "?"), (s, rid))}  # fmt: skip
    for sql in _old_reindex(f"SELECT value FROM json_each('{json.dumps(sorted(after))}')").split(";")[:-1]:
        db.execute(sql)


def test_an_older_process_cannot_write_its_windows_into_a_migrated_store(tmp_path: Path) -> None:
    """SQLite, a process of the version before the symmetric window still running once a new one
    has migrated the store: its batch delete (``old_delete_rows``) set ``fts_ctx_defer``, which
    the new triggers followed (skipping the neighbours), then wrote backward windows itself:
    windows wrong for good. The new layout's triggers refuse a write while that key is set (its
    own batches use ``DEFER_KEY``): the old process's statement fails, naming the upgrade, its
    transaction rolls back and the windows stay exact; so does a write of round 6's batch insert,
    which set the same key."""
    path = tmp_path / "m.sqlite"
    with Memory(path, embedder=HashEmbedder(), keyword_context=True) as m:
        m.add_batch([{"messages": f"t{i}", "user_id": "u"} for i in range(10)])
    db = sqlite3.connect(path, isolation_level=None)
    removed = db.execute("SELECT scope, rid FROM memories WHERE rid IN (4, 5)").fetchall()

    def old_insert() -> None:  # round 6's batch insert: the key set, then its rows inserted
        db.execute("INSERT INTO meta (key, value) VALUES ('fts_ctx_defer', 1)")
        db.execute(
            "INSERT INTO memories (id, scope, hash, memory, user_id, created_at, updated_at, vec)"
            " SELECT 'x', scope, 'x', 'extra', user_id, created_at, updated_at, vec FROM memories"
            " WHERE rid = 10"
        )

    refused: list[sqlite3.Error] = []
    for write in (lambda: old_delete_rows(db, removed), old_insert):
        db.execute("BEGIN IMMEDIATE")
        try:
            write()
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            refused.append(exc)
            db.execute("ROLLBACK")
    db.close()
    assert stored(path) == expected(path) and len(expected(path)) == 10
    assert len(refused) == 2 and all("upgrade every process" in str(e) for e in refused)


def test_batches_keep_a_store_an_older_process_remade_in_its_layout(tmp_path: Path) -> None:
    """SQLite: a process of an older version opened the store after it was migrated and re-made
    its own (backward) windows, triggers and mark, while a process of this version has it open:
    this one's batches (``defer``) leave the windows to those triggers, since the mark is not
    this layout's, and write no ± 2 window into that table: it stays equal to the backward
    rebuild; the next open of this version migrates it."""
    path = tmp_path / "m.sqlite"
    m = Memory(path, embedder=HashEmbedder(), keyword_context=True)
    m.add_batch([{"messages": f"turn {i}", "user_id": f"u{i % 2}"} for i in range(12)])
    old_store(path)
    added = m.add_batch([{"messages": f"more {i}", "user_id": f"u{i % 2}"} for i in range(6)])["results"]
    m.batch_delete([{"memory_id": r["id"]} for r in added[1:4]])
    m.batch_delete([{"memory_id": h["id"]} for h in m.get_all(user_id="u0", top_k=100)["results"][2:5]])
    assert stored(path) == backward(path)
    with Memory(path, embedder=HashEmbedder()):
        assert stored(path) == expected(path)
    m.close()


def test_an_old_store_opened_with_dates_is_migrated_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, a store with the old (backward, undated) windows opened for the first time with
    ``keyword_dates=True``: its windows are re-made once, straight to the dated layout (the dates
    are applied while opening, before the context), not first to the undated one and then again."""
    path = tmp_path / "old.sqlite"
    with Memory(path, embedder=HashEmbedder()) as m:
        m.add_batch([{"messages": f"turn {i}", "user_id": "u"} for i in range(20)])
    old_store(path)
    made: list[tuple[str, str]] = []
    real = ftscontext._make

    def counted(db: sqlite3.Connection, table: str, layout: str, key: str) -> None:
        made.append((table, layout))
        real(db, table, layout, key)

    monkeypatch.setattr(ftscontext, "_make", counted)
    with Memory(path, embedder=HashEmbedder(), keyword_context=True, keyword_dates=True):
        pass
    assert made == [(ftscontext.NEXT_TABLE, ftscontext.CONTEXT_LAYOUT_DATED)]
    db = sqlite3.connect(path)
    assert (
        db.execute("SELECT value FROM meta WHERE key = 'fts_ctx'").fetchone()[0]
        == ftscontext.CONTEXT_LAYOUT_DATED
    )
    db.close()


def test_postgres_readers_search_the_old_windows_while_the_migration_runs(
    pg_dsn: str, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, a store whose windows are of the old version (backward, ``VERSION`` 4: made by
    this code with ``CONTEXT_AFTER`` 0): while another connection's migration (``install``) is
    held open, uncommitted, it holds no lock that stops a reader; a process open all along
    searches, unblocked, and gets the old windows' results, also in a snapshot that stays open
    across the commit; after it, the new ones. The reader's connections give up on a lock after
    ``lock_timeout`` (a guard, so that the old code's drop-and-recreate, which held every reader
    off until the commit, fails here instead of hanging)."""
    import psycopg

    from hivemem.memory.storage import pgcontext

    location = pg_url()
    monkeypatch.setattr(pgcontext, "CONTEXT_AFTER", 0)
    monkeypatch.setattr(pgcontext, "VERSION", f"4 2 {pgcontext.WORDS_VERSION}")
    reader = Memory(f"{location}&options=-clock_timeout%3D20s", embedder=HashEmbedder(), keyword_context=True)
    reader.add_batch([{"messages": f"turn {i} w{i}", "user_id": f"u{i % 2}"} for i in range(30)])
    monkeypatch.undo()
    before = words(reader, "w5", user_id="u1")
    assert before == ["turn 5 w5", "turn 7 w7", "turn 9 w9"]  # backward windows: w5 in 7's and 9's
    storage = reader._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    with psycopg.connect(pg_dsn, autocommit=True) as migration:
        migration.execute("BEGIN")
        pgcontext.install(migration, ns, storage.schema)  # not committed yet
        held = migration.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND c.relname IN ('memories', 'memories_ctx')"
        ).fetchall()
        assert held and all(mode != "AccessExclusiveLock" for _, mode in held), held
        assert words(reader, "w5", user_id="u1") == before
        with storage.snapshot():
            assert words(reader, "w5", user_id="u1") == before
            migration.execute("COMMIT")
            assert words(reader, "w5", user_id="u1") == before  # the snapshot's: the old windows
    after = words(reader, "w5", user_id="u1")
    assert after[:3] == ["turn 5 w5", "turn 1 w1", "turn 3 w3"]  # ± 2: w5 in 1's and 3's too
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        assert words(m, "w5", user_id="u1") == after
        with storage._pool.connection() as conn:
            assert pgcontext.ready(conn, ns)
    reader.close()


def test_postgres_a_context_table_of_another_shape_is_made_again(pg_url: Callable[[], str]) -> None:
    """PostgreSQL: a context table without this version's columns (``pgcontext.COLUMNS``; here one
    from before ``tx``) is not rewritten in place but dropped and made again at the next open with
    the option: the columns are this version's and every window equals a rebuild."""
    from hivemem.memory.storage import pgcontext

    location = pg_url()
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        m.add_batch([{"messages": f"turn {i} w{i}", "user_id": f"u{i % 2}"} for i in range(12)])
        storage = m._storage
        assert isinstance(storage, PostgresStorage)
        ns = f'"{storage.schema}"'
        with storage._pool.connection() as conn:
            conn.execute(f"ALTER TABLE {ns}.memories_ctx DROP COLUMN tx")
            conn.execute(f"UPDATE {ns}.meta SET value = 'an older version' WHERE key = 'keyword_ctx'")
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        now, rebuilt = pg_windows(m)
        assert now == rebuilt and len(now) == 12
        fresh = m._storage
        assert isinstance(fresh, PostgresStorage)
        with fresh._pool.connection() as conn:
            columns = conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum",
                (f"{ns}.memories_ctx",),
            ).fetchall()
        assert [c for (c,) in columns] == [name for name, _ in pgcontext.COLUMNS]
        m.add("turn 12 w12", user_id="u0")
        now, rebuilt = pg_windows(m)
        assert now == rebuilt


def test_an_old_stores_migration_on_a_full_disk_keeps_the_old_windows(
    small_tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while an old store's backward windows are re-made ± 2: a DiskFull naming the
    file, the old windows whole (what searches read), and the next open with room finishes."""
    path, filler = _open_with_the_disk_filling(small_tmpfs, monkeypatch, before=old_store)
    assert stored(path) == backward(path)
    db = sqlite3.connect(path)
    filled = dict(db.execute(f"SELECT rowid, context FROM {ftscontext.NEXT_TABLE}"))
    db.close()
    assert 0 < len(filled) < 3000 and all(expected(path)[r] == c for r, c in filled.items())
    filler.unlink()
    with Memory(path, embedder=HashEmbedder()):
        assert stored(path) == expected(path)


def test_a_batch_of_adds_indexes_each_window_once_and_a_refused_one_changes_nothing(location: str) -> None:
    """SQLite defers the windows of an ``add_batch`` to the end of its insert (``ftscontext.defer``:
    each window written once, not 3 times): batches interleaving scopes, appended to scopes that
    already have rows, keep the table equal to a rebuild (both backends, for the same writes); a
    batch refused for an id another memory holds leaves neither rows nor the deferral behind, and
    a later single add still re-indexes the windows before it."""
    m = Memory(location, embedder=HashEmbedder(), keyword_context=True)
    m.add_batch([{"messages": f"first {i} w{i}", "user_id": f"u{i % 2}"} for i in range(9)])
    holder = {"messages": "taken id holder", "user_id": "u9", "id": "taken-1"}
    taken = m.add_batch([holder])["results"][0]["id"]
    before = windows(m)[0]
    with pytest.raises(ValueError, match="taken"):
        m.add_batch([{"messages": f"lost {i}", "user_id": "u0"} for i in range(5)]
                    + [{"messages": "clash", "user_id": "u9", "id": taken}])  # fmt: skip
    assert windows(m)[0] == before
    if not isinstance(m._storage, PostgresStorage):
        db = sqlite3.connect(m.location)
        assert (
            db.execute("SELECT count(*) FROM meta WHERE key = ?", (ftscontext.DEFER_KEY,)).fetchone()[0] == 0
        )
        db.close()
    m.add("single after w99", user_id="u0")
    now, rebuilt = windows(m)
    assert now == rebuilt
    m.add_batch([{"messages": f"second {i} x{i}", "user_id": f"u{i % 3}", "run_id": "r" if i % 4 else None}
                 for i in range(40)])  # fmt: skip
    now, rebuilt = windows(m)
    assert now == rebuilt and len(rebuilt) == 9 + 1 + 1 + 40
    m.close()
