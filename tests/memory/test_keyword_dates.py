"""Date words in the keyword text (``keyword_dates``, issue 23; ``storage/datewords.py``, SQLite
``fts.py``, PostgreSQL ``pgdates.py``). These tests measure storage, not ranking quality, so they
use the hash embedder (NOT a model; ``tests/hash_embedder.py``) and run in the fast set; the recall
the option buys is measured by ``benchmarks/retrieval.py --dates`` on LoCoMo with the real model.

The keyword index must always equal one rebuilt from scratch with the Python rendering
(``datewords.date_words``): after random writes, after the option is turned on or off for an old
store, after a re-index is interrupted or its process killed. The memory's text, hash, history and
search results never hold the date words.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from memory_helpers import (
    TALK,
    add_dated_talk,
    around_windows,
    kill_after,
    open_killed_at_step,
    writes_keep_equal,
)

from hivemem import Memory
from hivemem.memory import records
from hivemem.memory.storage import datewords, fts, ftscontext, pgdates
from hivemem.memory.storage.postgres import PostgresStorage

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[2]


def stamps(n: int, seed: int) -> list[str]:
    """``n`` ``created_at`` texts: instants across the years 1 to 9999 (every month and day
    shape, UTC as hivemem writes them), and texts an import may have stored that are no date."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        moment = datetime(1, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(315_537_897_599))
        out.append(records.instant(moment))
    return [
        *out,
        "2023-05-08", "2023-5-8T00:00:00", "2023-00-10T00", "2023-13-01", "2023-02-00", "2023-02-32",
        "", "yesterday", "２０２３-05-08", "0000-01-01T00:00:00+00:00", "2023-05-08T23:30:00-05:00",
    ]  # fmt: skip


# -- the rendering: one Python function, its SQL twins -------------------------------------------


def test_the_rendering_of_python_and_sql_agree_on_both_backends(location: str) -> None:
    """``date_words`` and its SQL twin (the store's own: SQLite's triggers' expression, PostgreSQL's
    ``hm_dates`` function) render every created_at alike, malformed ones as nothing."""
    texts = stamps(3000, 1)
    want = [datewords.date_words(t) for t in texts]
    assert want[:1] != [""] and "8 May 2023" in [datewords.date_words("2023-05-08T13:56:00+00:00")]
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:
        storage = m._storage
        if isinstance(storage, PostgresStorage):
            with storage._pool.connection() as conn:
                got = conn.execute(
                    f"SELECT coalesce(\"{storage.schema}\".hm_dates(t), '') FROM unnest(%s::text[])"
                    " WITH ORDINALITY AS x(t, i) ORDER BY i",
                    (texts,),
                ).fetchall()
        else:
            db = sqlite3.connect(":memory:")
            got = db.execute(
                f"SELECT coalesce({datewords.sql('x.value', 'sqlite')}, '')"
                " FROM json_each(?) x ORDER BY x.key",
                (json.dumps(texts),),
            ).fetchall()
    assert [g[0] for g in got] == want


# -- the index equals a rebuild ------------------------------------------------------------------


def sqlite_terms(db: sqlite3.Connection, table: str) -> set[tuple[str, int, str]]:
    """``(term, rowid, column)`` of every token of an FTS5 table (``fts5vocab``, 'instance')."""
    db.execute(f"CREATE VIRTUAL TABLE temp.v_{table} USING fts5vocab(main, {table}, 'instance')")
    got = set(db.execute(f"SELECT term, doc, col FROM temp.v_{table}"))
    db.execute(f"DROP TABLE temp.v_{table}")
    return got


def sqlite_index(path: str) -> tuple[set[Any], set[Any]]:
    """SQLite: ``(stored, rebuilt)``: the tokens of ``memories_fts`` (after FTS5's integrity
    check), and those of a table rebuilt from the rows with the Python rendering (``dated``: the
    store's mark says the body holds the date words)."""
    db = sqlite3.connect(path)
    db.execute("INSERT INTO memories_fts (memories_fts) VALUES ('integrity-check')")
    stored = sqlite_terms(db, "memories_fts")
    dated = fts.dated(db)
    rows = db.execute("SELECT rid, memory, created_at, user_id, agent_id, run_id FROM memories").fetchall()
    db.execute("CREATE TABLE rebuilt_src (rid INTEGER PRIMARY KEY, body TEXT, scope TEXT)")
    for rid, memory, created, *ids in rows:
        body = memory + (
            "\n" + datewords.date_words(created) if dated and datewords.date_words(created) else ""
        )
        # as fts.SCOPE: SQLite's hex(NULL) is '', so a missing id leaves its prefix alone
        scope = " ".join(p + (i.encode().hex().upper() if i else "") for p, i in zip("uar", ids, strict=True))
        db.execute("INSERT INTO rebuilt_src VALUES (?, ?, ?)", (rid, body, scope))
    db.execute(
        f"CREATE VIRTUAL TABLE rebuilt USING fts5(body, scope, content='', tokenize='{fts.TOKENIZER}')"
    )
    db.execute("INSERT INTO rebuilt (rowid, body, scope) SELECT rid, body, scope FROM rebuilt_src")
    rebuilt = sqlite_terms(db, "rebuilt")
    db.rollback()
    db.close()
    return stored, rebuilt


def pg_index(m: Memory) -> tuple[dict[int, frozenset[str]], dict[int, frozenset[str]]]:
    """PostgreSQL: ``(stored, rebuilt)`` per row, as lexeme sets: the column searched (``dated``
    when the store has it, else ``words``), and ``words`` plus the lexemes of the Python rendering."""
    storage = m._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    with storage._pool.connection() as conn:
        dated = pgdates.dates_ready(conn, ns)
        column = "dated" if dated else "words"
        rows = conn.execute(
            f"SELECT rid, created_at, tsvector_to_array({column}), tsvector_to_array(words)"
            f" FROM {ns}.memories"
        ).fetchall()
        words = [datewords.date_words(c) for _, c, _, _ in rows]
        lexemes = conn.execute(
            f"SELECT tsvector_to_array(to_tsvector('{ns}.hm_english'::regconfig, t))"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, i) ORDER BY i",
            (words,),
        ).fetchall()
    stored = {rid: frozenset(lex) for rid, _, lex, _ in rows}
    rebuilt = {
        rid: frozenset(base) | (frozenset(extra) if dated else frozenset())
        for (rid, _, _, base), (extra,) in zip(rows, lexemes, strict=True)
    }
    assert storage._keywords.column == column
    return stored, rebuilt


def has_context(m: Memory) -> bool:
    """Whether the store has the keyword context's table (made by a ``keyword_context=True`` open)."""
    storage = m._storage
    if isinstance(storage, PostgresStorage):
        from hivemem.memory.storage import pgcontext

        with storage._pool.connection() as conn:
            return pgcontext.exists(conn, f'"{storage.schema}"')
    db = sqlite3.connect(m.location)
    found = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_ctx'").fetchone()
    db.close()
    return found is not None


def windows(m: Memory) -> tuple[dict[int, Any], dict[int, Any]]:
    """The keyword context's windows ``(stored, rebuilt)``: each memory, the 2 before it and the 2
    after it in its scope (``around_windows``), each member with its date words when the store has
    them (SQLite: the window's text after FTS5's integrity check; PostgreSQL: lexeme sets, from the
    column searched)."""
    storage = m._storage
    if isinstance(storage, PostgresStorage):
        ns = f'"{storage.schema}"'
        with storage._pool.connection() as conn:
            column = "dated" if pgdates.dates_ready(conn, ns) else "words"
            rows = conn.execute(
                f"SELECT rid, scope, tsvector_to_array({column}) FROM {ns}.memories ORDER BY rid"
            ).fetchall()
            stored = {
                r: frozenset(x)
                for r, x in conn.execute(f"SELECT rid, tsvector_to_array(words) FROM {ns}.memories_ctx")
            }
        members = [(rid, scope, frozenset(lexemes)) for rid, scope, lexemes in rows]
        return stored, {rid: frozenset().union(*sets) for rid, sets in around_windows(members).items()}
    db = sqlite3.connect(m.location)
    db.execute("INSERT INTO memories_ctx (memories_ctx) VALUES ('integrity-check')")
    stored = dict(db.execute("SELECT rowid, context FROM memories_ctx"))
    dated = fts.dated(db)
    texts = []
    for rid, scope, text, created in db.execute(
        "SELECT rid, scope, memory, created_at FROM memories ORDER BY rid"
    ):
        words = datewords.date_words(created) if dated else ""
        texts.append((rid, scope, text + ("\n" + words if words else "")))
    db.close()
    return stored, {rid: "\n".join(window) for rid, window in around_windows(texts).items()}


def index(m: Memory) -> tuple[Any, Any]:
    if isinstance(m._storage, PostgresStorage):
        return pg_index(m)
    return sqlite_index(str(m.location))


@pytest.fixture
def dated_now(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every memory added without ``timestamp`` gets a random created_at (another date each)."""
    rng = random.Random(7)
    texts = stamps(400, 2)[:400]
    monkeypatch.setattr(records, "now", lambda: rng.choice(texts))
    yield


@pytest.mark.parametrize("seed", [31, 32])
def test_random_writes_keep_the_dated_index_equal_to_a_rebuild(
    location: str, seed: int, dated_now: None
) -> None:
    """Adds (each on another date), batches, updates, deletes, batch updates and deletes and
    delete_all in three scopes with the option on: after every step the keyword index equals a
    rebuild from scratch with the Python rendering (both backends)."""
    m = Memory(location, embedder=HashEmbedder(), keyword_dates=True)
    assert writes_keep_equal(m, seed, 80, index) > 10  # the sequence left a store to compare


@pytest.mark.parametrize("seed", [33])
def test_random_writes_keep_the_dated_windows_equal_to_a_rebuild(
    location: str, seed: int, dated_now: None
) -> None:
    """The same with the keyword context: each window holds its members' date words (as the ideas
    measurements placed them: body and window), equal to a rebuild after every step."""
    m = Memory(location, embedder=HashEmbedder(), keyword_dates=True, keyword_context=True)
    assert writes_keep_equal(m, seed, 60, index, windows) > 10


def search_words(m: Memory, query: str) -> list[str]:
    return [h["memory"] for h in m.search(query, mode="keyword", user_id="u", top_k=100)["results"]]


def test_turning_the_option_on_and_off_reindexes_an_old_store(location: str) -> None:
    """An old store (made without the option) gets the date words when opened with it, keeps them
    when opened without saying (and with HIVEMEM_KEYWORD_DATES unset), and loses them with
    ``keyword_dates=False``; the index equals a rebuild each time, and the texts, hashes, history
    and results never hold the date words."""
    items = [{"messages": t, "user_id": "u", "timestamp": f"2023-0{1 + i % 5}-0{1 + i}T10:00:00"}
             for i, (_, _, t) in enumerate(TALK[:8])]  # fmt: skip
    with Memory(location, embedder=HashEmbedder()) as m:
        m.add_batch(items)
        assert search_words(m, "May") == [] and index(m)[0] == index(m)[1]
        before = m.get_all(user_id="u")["results"]
    for option, found in ((True, 1), (None, 5), (False, 0), (None, 0), (True, 1), (False, 0)):
        context = option is None  # its windows (May: the turn and 2 on each side) follow each change
        with Memory(location, embedder=HashEmbedder(), keyword_dates=option, keyword_context=context) as m:
            now, rebuilt = index(m)
            assert now == rebuilt, option
            if has_context(m):
                assert windows(m)[0] == windows(m)[1], option
            may = search_words(m, "May")
            assert len(may) == found, option
            assert set(may) <= {t for _, _, t in TALK}
            assert m.get_all(user_id="u")["results"] == before
            for r in before:
                assert [e["new_memory"] for e in m.history(r["id"])] == [r["memory"]]
                assert r["hash"] == records.content_hash(r["memory"])
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:  # a write after: still exact
        m.add("Melanie ran a charity race", user_id="u", timestamp=datetime(2023, 5, 20, tzinfo=UTC))
        assert search_words(m, "May 20")[:1] == ["Melanie ran a charity race"]
        assert index(m)[0] == index(m)[1] and windows(m)[0] == windows(m)[1]


def test_the_option_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="keyword_dates must be True or False"):
        Memory(tmp_path / "a.sqlite", embedder=HashEmbedder(), keyword_dates="yes")  # type: ignore[arg-type]
    monkeypatch.setenv("HIVEMEM_KEYWORD_DATES", "sometimes")
    with pytest.raises(ValueError, match="HIVEMEM_KEYWORD_DATES must be 1 or 0"):
        Memory(tmp_path / "b.sqlite", embedder=HashEmbedder())
    monkeypatch.setenv("HIVEMEM_KEYWORD_DATES", "1")
    with Memory(tmp_path / "c.sqlite", embedder=HashEmbedder()) as m:
        m.add("a walk", user_id="u", timestamp="2023-05-08")
        assert search_words(m, "may") == ["a walk"]
    with Memory.from_config({"path": str(tmp_path / "c.sqlite"), "keyword_dates": False}) as m:
        assert search_words(m, "may") == []


# -- interrupted re-index ------------------------------------------------------------------------


def test_an_interrupted_reindex_leaves_the_old_index_and_the_next_open_redoes_it(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-index is one transaction on both backends: interrupted at its very end (as a killed
    process), it leaves the old index and mark (searches and writes go on without date words),
    and the next open with the option makes it whole."""
    with Memory(location, embedder=HashEmbedder()) as m:
        m.add_batch([{"messages": f"old turn {i}", "user_id": "u", "timestamp": 1683554160 + 86400 * i}
                     for i in range(40)])  # fmt: skip
    module: Any = pgdates if location.startswith("postgresql") else fts
    name = "install_dates" if module is pgdates else "ensure_schema"
    real = getattr(module, name)

    def interrupted(*args: Any) -> Any:
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, name, interrupted)
    with pytest.raises(KeyboardInterrupt):
        Memory(location, embedder=HashEmbedder(), keyword_dates=True)
    monkeypatch.setattr(module, name, real)
    with Memory(location, embedder=HashEmbedder()) as m:
        assert search_words(m, "may") == []
        m.add("old turn 40", user_id="u", timestamp="2023-05-09")
        assert index(m)[0] == index(m)[1]
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:
        assert index(m)[0] == index(m)[1]
        assert len(search_words(m, "may")) == 25  # 8 May + 24 days of May, and turn 40 on 9 May


def test_the_windows_refill_after_a_toggle_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite, a store with the keyword context: turning the dates on re-indexes the body in one
    transaction and fills the new (dated) windows in steps beside the old ones, which stay whole
    and searched; killed after two steps, the old windows are whole, the new ones filled are
    exact, and the next open (with or without the option) finishes and swaps them in."""
    path = tmp_path / "m.sqlite"
    with Memory(path, embedder=HashEmbedder(), keyword_context=True) as m:
        for user in ("a", "b"):
            days = [1683554160 + 86400 * i for i in range(25)]
            m.add_batch([{"messages": f"{user} turn {i}", "user_id": user, "timestamp": day}
                         for i, day in enumerate(days)])  # fmt: skip
        old = windows(m)[0]
    monkeypatch.setattr(ftscontext, "CONTEXT_BATCH", 7)
    # killed mid-refill at the third step: the two before it are committed
    opening = functools.partial(Memory, path, embedder=HashEmbedder(), keyword_dates=True)
    open_killed_at_step(monkeypatch, ftscontext, "backfill_context", 3, opening)
    db = sqlite3.connect(path)
    assert dict(db.execute("SELECT rowid, context FROM memories_ctx")) == old  # whole, undated
    done = dict(db.execute(f"SELECT rowid, context FROM {ftscontext.NEXT_TABLE}"))
    assert fts.dated(db) and ftscontext.context_pending(db)
    db.close()
    with Memory(path, embedder=HashEmbedder()) as m:  # no option: the store stays dated, the refill ends
        now, rebuilt = windows(m)
        assert len(done) == 14 and all(rebuilt[r] == c for r, c in done.items())
        assert now == rebuilt and "May 2023" in now[1]
        assert index(m)[0] == index(m)[1]
    db = sqlite3.connect(path)
    assert not ftscontext.context_pending(db)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name LIKE 'memories_ctx_next%'").fetchone() is None
    db.close()


_OPENER = r"""
import sys
sys.path[:0] = [sys.argv[2]]
from hash_embedder import HashEmbedder  # NOT a model: this test measures storage atomicity
from hivemem import Memory
print("ready", flush=True)
Memory(sys.argv[1], embedder=HashEmbedder(), keyword_dates=sys.argv[3] == "1").close()
print("done", flush=True)
"""


def test_sigkill_during_the_reindex_leaves_a_whole_index(tmp_path: Path) -> None:
    """SQLite, a real process killed (SIGKILL) while it re-indexes 20,000 memories: the file holds
    the old index or the new one, each equal to its rebuild, and the next open finishes the job."""
    path = tmp_path / "m.sqlite"
    with Memory(path, embedder=HashEmbedder()) as m:
        for lo in range(0, 20_000, 2000):
            m.add_batch([{"messages": f"turn {i} of the talk", "user_id": f"u{i % 3}",
                          "timestamp": 1.6e9 + 3600 * i} for i in range(lo, lo + 2000)])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay, on in ((0.05, "1"), (0.3, "1"), (0.6, "1"), (0.3, "0")):
        child = subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(path), str(ROOT / "tests"), on],
            env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        kill_after(child, delay)
        stored, rebuilt = sqlite_index(str(path))
        assert stored == rebuilt
    with Memory(path, embedder=HashEmbedder(), keyword_dates=True) as m:
        assert index(m)[0] == index(m)[1]
        first = m.search("13 September 2020", mode="keyword", top_k=1)["results"]  # 1.6e9 s: 13 Sep 2020
        assert first[0]["memory"] == "turn 0 of the talk"


# -- both backends rank alike ---------------------------------------------------------------------


@pytest.mark.parametrize("limits", ["default", "small"])
def test_both_backends_rank_alike_with_the_option(
    tmp_path: Path, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch, limits: str
) -> None:
    """The same rows (each with its own timestamp) on SQLite and PostgreSQL, the option on (also
    with the keyword context): date words and text words in the query give the same memories in the
    same order with the same scores, in keyword and hybrid mode, before and after more writes;
    explain's keyword_score covers them. With ``small`` limits, scopes are "large" (statistics of
    the store, PostgreSQL's kept row lists of the ``dated`` column) and the rarest words are kept."""
    from hivemem.memory.storage import pgkeyword

    if limits == "small":
        for module in (fts, pgkeyword):
            monkeypatch.setattr(module, "RANK_BUDGET", 8)
            monkeypatch.setattr(module, "SCOPE_ROWS_MAX", 4)
    places = [str(tmp_path / "m.sqlite"), pg_url()]
    for place in places:
        with Memory(place, embedder=HashEmbedder()) as m:
            add_dated_talk(m)
    searches: list[dict[str, str]] = [
        {"query": "lake May"},
        {"query": "painted 2023", "user_id": "u"},
        {"query": "class in October", "user_id": "u", "run_id": "r1"},
        {"query": "March 3"},
        {"query": "2023 lake", "user_id": "u"},
    ]
    for context in (False, True):
        stores = [
            Memory(p, embedder=HashEmbedder(), keyword_dates=True, keyword_context=context) for p in places
        ]
        for step in range(2):
            for args in searches:
                found = []
                for m in stores:
                    hits = m.search(**args, mode="keyword", explain=True)["results"]
                    found.append([(h["memory"], round(h["score_details"]["keyword_score"], 9)) for h in hits])
                assert found[0] == found[1] and found[0], (args, step, context)
                hybrid = [[h["memory"] for h in m.search(**args)["results"]] for m in stores]
                assert hybrid[0] == hybrid[1], (args, step, context)
            for m in stores:  # more rows between the rounds, dated as the queries: the kept lists follow
                day = f"2023-05-0{3 + step}"
                m.add(f"Melanie swam {step} {context}", user_id="u", run_id="r1", timestamp=day)
        for m in stores:
            m.close()


# -- timestamp (Mem0's: when the memory was created) ----------------------------------------------


def test_timestamp_shapes_set_created_at(location: str) -> None:
    """Unix seconds (int, float), ISO dates (their start, UTC) and datetimes (naive: UTC; aware:
    converted), ``date``/``datetime`` objects: each becomes created_at and updated_at, and the ADD
    event's time; the row order (insertion order) is unchanged by it."""
    from datetime import date, timezone

    shapes = [
        (1683554160, "2023-05-08T13:56:00.000000+00:00"),
        (1683554160.25, "2023-05-08T13:56:00.250000+00:00"),
        (0, "1970-01-01T00:00:00.000000+00:00"),
        ("2023-05-08", "2023-05-08T00:00:00.000000+00:00"),
        ("20230508", "2023-05-08T00:00:00.000000+00:00"),
        ("2023-05-08 13:56", "2023-05-08T13:56:00.000000+00:00"),
        ("2023-05-08T15:56:00+02:00", "2023-05-08T13:56:00.000000+00:00"),
        ("2023-05-08T13:56:00Z", "2023-05-08T13:56:00.000000+00:00"),
        (date(1999, 12, 31), "1999-12-31T00:00:00.000000+00:00"),
        (datetime(2023, 5, 8, 13, 56), "2023-05-08T13:56:00.000000+00:00"),
        (
            datetime(2023, 5, 8, 8, 56, tzinfo=timezone(timedelta(hours=-5))),
            "2023-05-08T13:56:00.000000+00:00",
        ),
    ]
    with Memory(location, embedder=HashEmbedder()) as m:
        ids = [
            m.add(f"turn {i}", user_id="u", timestamp=s)["results"][0]["id"]
            for i, (s, _) in enumerate(shapes)
        ]
        batch = m.add_batch(
            [{"messages": "batched", "user_id": "u", "timestamp": 1e9}, {"messages": "now", "user_id": "u"}]
        )
        listed = m.get_all(user_id="u")["results"]
        assert [r["id"] for r in listed] == [*ids, *(r["id"] for r in batch["results"])]  # insertion order
        for memory_id, (_, created) in zip(ids, shapes, strict=True):
            record = m.get(memory_id)
            assert record is not None and record["created_at"] == record["updated_at"] == created
            assert [e["created_at"] for e in m.history(memory_id)] == [created]
        assert listed[-2]["created_at"] == "2001-09-09T01:46:40.000000+00:00"
        assert listed[-1]["created_at"] > "2026"  # no timestamp: now
        m.update(ids[0], "turn 0, rewritten")
        record = m.get(ids[0])
        assert record is not None and record["created_at"] == shapes[0][1] < record["updated_at"]


def test_malformed_timestamps_are_refused_before_anything_happens(tmp_path: Path) -> None:
    """A malformed ``timestamp`` anywhere in a call is refused naming the field (and the item),
    before anything is embedded or stored."""
    from hivemem.errors import LimitExceeded

    calls: list[int] = []

    class Counting(HashEmbedder):
        def embed(self, texts: Any) -> Any:
            calls.append(len(texts))
            return super().embed(texts)

    bad: list[tuple[Any, type[Exception], str]] = [
        ("last spring", ValueError, "is not an ISO 8601 date"),
        ("2023-02-30", ValueError, "is not an ISO 8601 date"),
        ("x" * (records.MAX_DATE_CHARS + 1), LimitExceeded, "MAX_DATE_CHARS"),
        (1e20, ValueError, "out of range"),
        (float("nan"), ValueError, "out of range"),
        (-1e12, ValueError, "out of range"),
        ("9999-12-31T23:00:00-05:00", ValueError, "out of range"),
        (True, TypeError, "must be an ISO 8601 string"),
        ([2023], TypeError, "must be an ISO 8601 string"),
    ]
    with Memory(tmp_path / "m.sqlite", embedder=Counting()) as m:
        for value, error, message in bad:
            with pytest.raises(error, match=message) as caught:
                m.add("never stored", user_id="u", timestamp=value)
            assert "timestamp" in str(caught.value)
            with pytest.raises(error, match=message) as caught:
                m.add_batch(
                    [
                        {"messages": "fine", "user_id": "u"},
                        {"messages": "x", "user_id": "u", "timestamp": value},
                    ]
                )
            assert str(caught.value).startswith("items[1]: timestamp")
        assert m.count() == 0 and calls == []


def test_async_memory_takes_timestamp_and_keyword_dates(tmp_path: Path) -> None:
    import asyncio

    from hivemem import AsyncMemory

    async def main() -> list[dict[str, Any]]:
        am = AsyncMemory(tmp_path / "m.sqlite", embedder=HashEmbedder(), keyword_dates=True)
        await am.add("a picnic", user_id="u", timestamp="2023-05-08")
        await am.add_batch([{"messages": "a concert", "user_id": "u", "timestamp": 1686000000}])
        found = (await am.search("May 2023", user_id="u", mode="keyword"))["results"]
        am.sync.close()
        return found

    assert [h["memory"] for h in asyncio.run(main())] == ["a picnic", "a concert"]
