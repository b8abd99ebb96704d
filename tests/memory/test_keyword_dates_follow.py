"""``keyword_dates`` turned on and off while other processes have the store open (review 5: S1, M1,
M2, m1, m4), and the times an import or the CLI store (m2, m3). These tests measure storage and
caches, not ranking quality: the hash embedder (NOT a model; ``tests/hash_embedder.py``), fast set.

Every open ``Memory`` must search as one opened afresh would, after each toggle by another: the
column PostgreSQL searches (and its kept row lists), SQLite's per-process word counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from memory_helpers import add_dated_talk

from hivemem import Memory
from hivemem.memory import records
from hivemem.memory.storage import fts, pgkeyword, pgpostings
from hivemem.memory.storage.postgres import PostgresStorage
from hivemem.memory.transfer import import_lines

pytestmark = pytest.mark.fast

SEARCHES: list[dict[str, str]] = [
    {"query": "lake May", "user_id": "u"},
    {"query": "support group 2023", "user_id": "u"},
    {"query": "painted 2023"},
    {"query": "class in October", "user_id": "u", "run_id": "r1"},
]


def results(m: Memory) -> list[Any]:
    """Every search of ``SEARCHES``, keyword and hybrid, with ids and scores."""
    out = []
    for args in SEARCHES:
        for mode in ("keyword", "hybrid"):
            hits = m.search(**args, mode=mode)["results"]
            out.append([(h["memory"], round(h["score"], 9)) for h in hits])
    return out


def fill(place: str) -> None:
    with Memory(place, embedder=HashEmbedder()) as m:
        add_dated_talk(m)
        m.add("Caroline went to the support group", user_id="u", timestamp="2023-05-08")


def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scopes count as large: statistics of the store, rarest words, PostgreSQL's kept lists."""
    for module in (fts, pgkeyword):
        monkeypatch.setattr(module, "RANK_BUDGET", 8)
        monkeypatch.setattr(module, "SCOPE_ROWS_MAX", 4)


@pytest.mark.parametrize("limits", ["default", "small"])
def test_open_processes_follow_the_option_turned_on_and_off(
    location: str, monkeypatch: pytest.MonkeyPatch, limits: str
) -> None:
    """Handles opened with the option, without it, and with the keyword context stay open while
    others turn it off, on, off, on (with writes between): each search of each equals that of a
    handle opened afresh with the same settings. Before the fix PostgreSQL's open handles failed
    (``UndefinedColumn: dated``) or kept searching ``words``, and SQLite's kept stale counts."""
    if limits == "small":
        small_limits(monkeypatch)
    fill(location)
    kinds: list[dict[str, Any]] = [{"keyword_dates": True}, {}, {"keyword_context": True}]
    open_ = [Memory(location, embedder=HashEmbedder(), **kind) for kind in kinds]
    try:
        for m in open_:
            results(m)  # each has searched (and cached) before the first toggle
        for step, on in enumerate((False, True, False, True)):
            Memory(location, embedder=HashEmbedder(), keyword_dates=on).close()  # another process
            for kind, m in zip(kinds, open_, strict=True):
                with Memory(location, embedder=HashEmbedder(), **{**kind, "keyword_dates": None}) as fresh:
                    assert results(m) == results(fresh), (step, on, kind)
            found = [h["memory"] for h in open_[1].search("May 8", user_id="u", mode="keyword")["results"]]
            assert ("Caroline went to the support group" in found) == on, (step, found)
            open_[step % 3].add(f"Melanie swam {step}", user_id="u", run_id="r1", timestamp="2023-05-03")
    finally:
        for m in open_:
            m.close()


def test_postgres_turning_the_option_off_keeps_the_column(pg_url: Callable[[], str]) -> None:
    """Off keeps ``dated`` (and on again does not rewrite the table): no dropped attribute piles up
    toward PostgreSQL's 1600-column limit, the table keeps its relfilenode, the state is meta's."""
    place = pg_url()
    fill(place)

    def catalog(m: Memory) -> tuple[int, int, bool, Any]:
        storage = m._storage
        assert isinstance(storage, PostgresStorage)
        with storage._pool.connection() as conn:
            dropped, dated = conn.execute(
                "SELECT count(*) FILTER (WHERE attisdropped), bool_or(attname = 'dated' AND NOT attisdropped)"
                " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                (f'"{storage.schema}".memories',),
            ).fetchone()
            table = f'"{storage.schema}".memories'
            node = conn.execute("SELECT pg_relation_filenode(%s::regclass)", (table,))
            state = conn.execute(f"SELECT value FROM \"{storage.schema}\".meta WHERE key = 'keyword_dates'")
            return dropped, node.fetchone()[0], dated, state.fetchone()

    with Memory(place, embedder=HashEmbedder(), keyword_dates=True) as m:
        _, node, dated, state = catalog(m)
        assert dated and state is not None
    for on in (False, True, False, True, False):
        with Memory(place, embedder=HashEmbedder(), keyword_dates=on) as m:
            dropped, now, dated, state = catalog(m)
            assert (dropped, now, dated) == (0, node, True), on
            assert (state is not None) == on
            assert m._storage._keywords.column == ("dated" if on else "words")


def test_postgres_small_context_searches_take_no_list_lock(
    pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyword-context search of a small scope does not bring the kept lists up to date
    (``Postings.refresh`` holds a per-process lock across a round trip); a large one does."""
    place = pg_url()
    fill(place)
    calls: list[int] = []
    refresh = pgpostings.Postings.refresh

    def counted(self: pgpostings.Postings, conn: Any) -> tuple[int, int, str | None]:
        calls.append(1)
        return refresh(self, conn)

    monkeypatch.setattr(pgpostings.Postings, "refresh", counted)
    with Memory(place, embedder=HashEmbedder(), keyword_context=True, keyword_dates=True) as m:
        for _ in range(2):
            assert m.search("lake May", user_id="u", mode="keyword")["results"]
        assert calls == []
        small_limits(monkeypatch)
        assert m.search("lake May", user_id="u", mode="keyword")["results"]
        assert calls


def test_import_stores_created_at_in_utc(location: str) -> None:
    """A JSONL import converts times with an offset to UTC (the date words are the UTC date's, as
    for ``timestamp``), keeps UTC times as written (an export imports unchanged) and free text."""
    lines = [
        {"id": "a", "memory": "picnic by the river", "user_id": "u",
         "created_at": "2023-05-08T23:30:00-07:00"},
        {"id": "b", "memory": "exported as is", "user_id": "u", "created_at": "2023-05-01T10:00:00+00:00",
         "updated_at": "2023-05-02T10:00:00.123456+00:00"},
        {"id": "c", "memory": "a date only", "user_id": "u", "created_at": "2023-05-10"},
        {"id": "d", "memory": "free text", "user_id": "u", "created_at": "sometime in spring"},
    ]  # fmt: skip
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:
        assert import_lines(m, [json.dumps(line) for line in lines]) == {"added": 4, "skipped": 0}
        got = {r["id"]: (r["created_at"], r["updated_at"]) for r in m.get_all(user_id="u")["results"]}
        assert got == {
            "a": ("2023-05-09T06:30:00.000000+00:00",) * 2,
            "b": ("2023-05-01T10:00:00+00:00", "2023-05-02T10:00:00.123456+00:00"),
            "c": ("2023-05-10T00:00:00.000000+00:00",) * 2,
            "d": ("sometime in spring",) * 2,
        }
        nine = m.search("river 9 May", user_id="u", mode="keyword")["results"]
        eight = m.search("river 8 May", user_id="u", mode="keyword")["results"]
        assert nine[0]["id"] == "a" and nine[0]["score"] > eight[0]["score"]


def test_a_timestamp_of_digits_means_one_thing() -> None:
    """A string of exactly 8 digits is the ISO basic date; other digits are Unix seconds; numbers
    are seconds. (The CLI passes its text to this one parser: tests/memory/test_memory_cli.py.)"""
    assert records.created("20230508") == "2023-05-08T00:00:00.000000+00:00"
    assert records.created("1683554160") == records.created(1683554160) == "2023-05-08T13:56:00.000000+00:00"
    assert records.created(" 99999999.0") == records.created(99999999)
    assert records.created("-1.5") == records.created(-1.5)
    with pytest.raises(ValueError, match=r"12345678\.0"):
        records.created("12345678")  # no month 34: not read as seconds
    with pytest.raises(ValueError, match="out of range"):
        records.created("9" * 40)
    with pytest.raises(ValueError, match="not an ISO 8601"):
        records.moment("1683554160", "expiration_date")  # seconds: for timestamp only


def test_sqlite_counts_follow_a_reindex_by_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a handle that counted words before another turned the option on uses the new
    counts at once (its cache is keyed by the index's layout mark), as a fresh one."""
    small_limits(monkeypatch)
    place = str(tmp_path / "c.sqlite")
    fill(place)
    with Memory(place, embedder=HashEmbedder()) as a:
        before = results(a)
        Memory(place, embedder=HashEmbedder(), keyword_dates=True).close()
        with Memory(place, embedder=HashEmbedder()) as fresh:
            assert results(a) == results(fresh) != before


def test_the_query_date_boost_follows_the_option_too(location: str) -> None:
    """A handle opened before another turns ``keyword_dates`` on (then off) boosts a date its
    query names as a fresh handle does (``Storage.dates`` is the store's state, not the state at
    open): ``explain``'s ``date_boost`` of the memory of that day. Fails with the flag read once."""
    fill(location)
    ask = {"query": "what did Caroline do on 8 May, 2023?", "user_id": "u", "explain": True}

    def boost(m: Memory) -> float | None:
        for hit in m.search(**ask)["results"]:
            if hit["memory"] == "Caroline went to the support group":
                return hit["score_details"].get("date_boost")
        raise AssertionError("the memory of that day is not found")

    with Memory(location, embedder=HashEmbedder()) as old:
        assert boost(old) is None  # the store does not boost dates yet
        for on in (True, False, True):
            Memory(location, embedder=HashEmbedder(), keyword_dates=on).close()  # another process
            old.search("warm up", user_id="u")  # a process follows from its next search
            assert boost(old) == (0.5 if on else None), on
