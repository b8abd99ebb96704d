"""Records only for what a search returns (issue 25): a search ranks stubs (``hybrid.rank``),
the fusion keeps ``top_k`` of them, and only those are read as records (``Storage.records``), once
for a whole group of concurrent searches on SQLite (``searching.SearchGroups``). The answers must
be those of the former path, which read a record for every candidate of both sides: a property
test compares them over random stores, queries and options on both backends. Storage only: the
hash embedder, no model (tests/hash_embedder.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memory_helpers import BACKENDS, HashEmbedder, hold_first_fail_one, new_location, search_while_held

from hivemem import Memory
from hivemem.memory import hybrid, searching
from hivemem.memory.storage.base import ROW, Storage
from hivemem.memory.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.fast  # no model or torch; the PostgreSQL cases are marked pg (tests/conftest.py)

WORDS = ["lake", "pottery", "class", "hiking", "rain", "painted", "sunrise", "kite", "garden"]
WORDS += ["piano", "river", "market"]
USERS = ("a", "b", "c")
# the statement that reads records (rows.FIELDS, as ONE result row): one per search, or per group
READS_RECORDS = "json_group_array(json_array(rid, id, memory, hash"


def _texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 5)))) + f" note {i % 23}" for i in range(n)]


def _fill(m: Memory, seed: int) -> None:
    """Three users; the same texts in several of them (equal cosines: the tie-break by id), one
    date per memory, some memories expired."""
    texts = _texts(seed, 60)
    items = []
    for i, text in enumerate(texts):
        for user in USERS[: 1 + i % 3]:
            item: dict[str, Any] = {
                "messages": text,
                "user_id": user,
                "timestamp": f"2023-{1 + i % 12:02d}-1{i % 9}",
            }
            if i % 7 == 3:
                item["expiration_date"] = "2024-01-01"
            items.append(item)
    m.add_batch(items)


def _former(
    storage: Storage, mode: str, vector: Any, terms: list[str], where: Any, top_k: int,
    threshold: float | None, explain: bool, span: tuple[str, str] | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The former path (before issue 25): both sides as records, the cosines of the keyword hits
    that are not vector hits by id (``Storage.identify`` of records), then the same fusion."""
    if mode != "hybrid":
        if mode == "vector":
            hits = storage.search(vector, where, top_k, threshold)
        else:
            hits = storage.keyword_search(terms, where, top_k) if terms else []
        hits = hybrid.explain(hits, mode) if explain else hits
        for h in hits:
            h.pop("_keyword_parts", None)
        return hits
    depth = hybrid.candidates(top_k)
    vector_hits = storage.search(vector, where, depth, threshold)
    keyword_hits = storage.keyword_search(terms, where, depth) if terms else []
    vector_hits, keyword_hits, cosines = Storage.identify(storage, vector_hits, keyword_hits, vector)
    context = None
    if storage.vector_context:
        seen = {h["id"] for h in vector_hits}
        missing = [h["id"] for h in keyword_hits if h["id"] not in seen]
        context = hybrid.context_cosines(storage.window_scores([*seen, *missing], vector))
    dates = storage.dates
    return hybrid.fuse(
        vector_hits, keyword_hits, cosines, top_k, threshold, explain=explain, context=context,
        context_weight=storage.vector_context, span=span if dates else None, summed=storage.context > 0,
        dates=dates,
    )  # fmt: skip


OPTIONS = [
    {},
    {"keyword_context": True, "keyword_dates": True},
    {"vector_context": True},
    {"keyword_context": True, "vector_context": True, "keyword_dates": True},
]


@pytest.fixture(scope="module", params=[
    pytest.param((b, i), id=f"{b}-{i}", marks=[pytest.mark.pg] if b == "postgres" else [])
    for b in BACKENDS for i in range(len(OPTIONS))
])  # fmt: skip
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memory]:
    backend, option = request.param
    tmp = tmp_path_factory.mktemp("records")
    m = Memory(new_location(backend, tmp, request), embedder=HashEmbedder(), **OPTIONS[option])
    _fill(m, seed=option)
    yield m
    m.close()


@given(
    words=st.lists(st.sampled_from([*WORDS, "note", "7", "zebra"]), min_size=0, max_size=4),
    date=st.sampled_from(["", " in March 2023", " on May 15, 2023", " in June"]),
    mode=st.sampled_from(hybrid.MODES),
    top_k=st.integers(1, 30),
    threshold=st.one_of(st.none(), st.floats(-0.5, 0.8)),
    explain=st.booleans(),
    user=st.sampled_from([None, *USERS]),
    show_expired=st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_search_answers_as_the_former_path_that_read_every_candidate(
    store: Memory, words: list[str], date: str, mode: str, top_k: int, threshold: float | None,
    explain: bool, user: str | None, show_expired: bool,
) -> None:  # fmt: skip
    """Records, scores, order, ``score_details``: equal, in every mode, with the threshold, the
    expired left out or not, the contexts and the query's dates."""
    m = store
    query = (" ".join(words) or "x") + date
    threshold = None if mode == "keyword" else threshold
    terms = hybrid.query_terms(query) if mode != "vector" else []
    vector = None if mode == "keyword" else m.embedder.embed_one(query)
    span = hybrid.query_dates(m._storage, query) if mode == "hybrid" else None
    where = m._where(None, user, None, None)
    with m._storage.snapshot():
        live = m._live(where, show_expired)
        want = _former(m._storage, mode, vector, terms, live, top_k, threshold, explain, span)
        got = hybrid.search(m._storage, mode, vector, terms, live, top_k, threshold, explain, span)
    assert got == want
    assert [list(h) for h in got] == [list(h) for h in want]  # the keys in the same order too
    search = {"user_id": user, "top_k": top_k, "threshold": threshold, "mode": mode, "explain": explain}
    assert m.search(query, show_expired=show_expired, **search)["results"] == want


def _traced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Every statement of every SQLite connection opened from now on, with its thread."""
    seen: list[tuple[int, str]] = []
    real = SQLiteStorage._connect

    def connect(self: SQLiteStorage) -> sqlite3.Connection:
        db = real(self)
        db.set_trace_callback(lambda sql: seen.append((threading.get_ident(), sql)))
        return db

    monkeypatch.setattr(SQLiteStorage, "_connect", connect)
    return seen


@pytest.mark.parametrize("mode", hybrid.MODES)
def test_a_search_reads_records_once_and_only_those_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """One statement reads records, and it reads ``top_k`` of them (before: one per side, for
    every candidate: 2 × 20 for a hybrid search of 3)."""
    seen = _traced(monkeypatch)
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(m, seed=1)
    read: list[int] = []
    real = SQLiteStorage.records

    def records(self: SQLiteStorage, handles: list[Any]) -> dict[Any, dict[str, Any]]:
        read.append(len(set(handles)))
        return real(self, handles)

    monkeypatch.setattr(SQLiteStorage, "records", records)
    m.search("lake pottery note", user_id="a", top_k=3, mode=mode)  # warm: the scope's counts
    del seen[:], read[:]
    hits = m.search("lake pottery note", user_id="a", top_k=3, mode=mode)["results"]
    assert len(hits) == 3
    assert sum(READS_RECORDS in sql for _, sql in seen) == 1
    assert read == [3]
    m.close()


def test_a_group_of_searches_reads_the_records_of_all_its_answers_in_one_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight searches (hybrid, vector, keyword; explained or not) queued while one runs: the group
    of the seven others reads their records in ONE statement, and each caller gets its own answer,
    as it gets alone; a search that fails gets its error, the others their answers."""
    monkeypatch.setattr(searching, "gil_enabled", lambda: True, raising=False)
    seen = _traced(monkeypatch)
    emb = HashEmbedder()
    m = Memory(tmp_path / "m.sqlite", embedder=emb)
    _fill(m, seed=2)
    queries = [" ".join(WORDS[i : i + 2]) for i in range(8)]
    options: list[dict[str, Any]] = [
        {"mode": ("hybrid", "vector", "keyword")[i % 3], "explain": i % 2 == 1, "top_k": 2 + i}
        for i in range(8)
    ]
    want = [m.search(q, user_id="a", **o)["results"] for q, o in zip(queries, options, strict=True)]
    search, first, go = hold_first_fail_one(hybrid.rank, emb.embed_one(queries[4]))
    monkeypatch.setattr(hybrid, "rank", search)
    del seen[:]
    calls = [lambda i=i: m.search(queries[i], user_id="a", **options[i])["results"] for i in range(8)]
    got = search_while_held(m, calls, first, go)
    assert isinstance(got[4], RuntimeError) and "fails" in str(got[4])
    assert [g for i, g in enumerate(got) if i != 4] == [w for i, w in enumerate(want) if i != 4]
    assert sum(READS_RECORDS in sql for _, sql in seen) == 2  # the first search's group, then the others'
    m.close()


def test_a_failed_read_of_the_groups_records_lands_on_each_search_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the group's one read of records fails, each search reads its own: the one whose read
    fails gets that error, the others their answers."""
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(m, seed=3)
    groups = searching.SearchGroups(m._storage, grouped=True)
    storage = m._storage
    where = m._live(m._where(None, "a", None, None), False)

    def ranking(query: str) -> Any:
        vector = m.embedder.embed_one(query)
        return lambda: hybrid.rank(storage, "hybrid", vector, hybrid.query_terms(query), where, 3, None)

    alone = [hybrid.search(storage, "hybrid", m.embedder.embed_one(q), hybrid.query_terms(q), where, 3, None)
             for q in ("lake", "kite", "river")]  # fmt: skip
    bad: set[Any] = set()
    real = SQLiteStorage.records

    def records(self: SQLiteStorage, handles: list[Any]) -> dict[Any, dict[str, Any]]:
        if bad & set(handles):
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, handles)

    with storage.snapshot():
        bad.add(hybrid.pending(ranking("kite")())[0])
    monkeypatch.setattr(SQLiteStorage, "records", records)
    out = groups._run([ranking(q) for q in ("lake", "kite", "river")], release=lambda: None)
    assert out[0] == alone[0] and out[2] == alone[2]
    assert isinstance(out[1], sqlite3.OperationalError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_records_reads_the_given_rows_by_handle(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``Storage.records``, the same contract on both backends: each row's record (as ``get``),
    by handle, repeats allowed, rows that are gone left out. A PostgreSQL search never calls it
    (its ranking statements return whole rows): its hits are never stubs."""
    m = Memory(new_location(backend, tmp_path, request), embedder=HashEmbedder())
    m.add_batch([{"messages": t, "user_id": "a"} for t in ("one lake", "two kites", "three rivers")])
    rids = {r[1]: r[0] for r in m._storage._fetch(f"SELECT rid, id FROM {m._storage._memories}", [])}
    ids = list(rids)
    found = m._storage.records([rids[ids[0]], rids[ids[2]], rids[ids[0]], 10**9])
    assert found == {rids[i]: m.get(i) for i in (ids[0], ids[2])}
    assert m._storage.records([]) == {}
    hits = m._storage.search(m.embedder.embed_one("one lake"), None, 3, None, with_records=False)
    assert (ROW in hits[0]) == (backend == "sqlite")
    m.close()


def test_records_of_a_search_are_read_in_the_snapshot_that_ranked_it(tmp_path: Path) -> None:
    """A memory deleted after the ranking of a search but before its records are read is still
    in its answer: both in one snapshot (``hybrid.search``)."""
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(m, seed=4)
    storage = m._storage
    vector = m.embedder.embed_one("lake")
    other = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    with storage.snapshot():
        ranked = hybrid.rank(storage, "hybrid", vector, ["lake"], None, 3, None)
        other.delete(ranked[0]["id"])  # another process's commit, after the ranking
        done = hybrid.finish(storage, ranked)
    assert [h["id"] for h in done] == [h["id"] for h in ranked]
    assert m.get(ranked[0]["id"]) is None  # gone now
    other.close()
    m.close()


@pytest.mark.parametrize("gil", [True, False], ids=["group", "alone"])
def test_memory_search_reads_its_records_in_the_snapshot_that_ranked_it(
    gil: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through ``Memory.search``, on both of ``SearchGroups``' paths (a group, and each search
    alone as without a GIL): a memory another process deletes after the ranking is still in the
    answer, whose records were read in the ranking's snapshot."""
    monkeypatch.setattr(searching, "gil_enabled", lambda: gil)
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(m, seed=6)
    other = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    want = m.search("lake kite", user_id="a", top_k=3)["results"]
    real = hybrid.rank

    def rank(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        ranked = real(*args, **kwargs)
        other.delete(want[0]["id"])  # another process's commit, between the ranking and the records
        return ranked

    monkeypatch.setattr(hybrid, "rank", rank)
    assert m.search("lake kite", user_id="a", top_k=3)["results"] == want
    assert m.get(want[0]["id"]) is None  # gone now
    other.close()
    m.close()


def test_answers_of_one_group_share_no_record(tmp_path: Path) -> None:
    """Two searches of one group that return the same memory each get a record of their own: a
    caller that changes its result (its metadata) does not change another caller's."""
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    m.add_batch(
        [{"messages": f"lake walk {i}", "user_id": "a", "metadata": {"tags": ["x"]}} for i in range(4)]
    )
    groups = searching.SearchGroups(m._storage, grouped=True)
    vector = m.embedder.embed_one("lake walk")

    def ranking() -> list[dict[str, Any]]:
        return hybrid.rank(m._storage, "hybrid", vector, ["lake", "walk"], None, 4, None)

    first, second = groups._run([ranking, ranking], release=lambda: None)
    assert isinstance(first, list) and isinstance(second, list)
    assert first == second and len(first) == 4
    first[0]["metadata"]["tags"].append("changed by the first caller")
    assert second[0]["metadata"] == {"tags": ["x"]}
    m.close()


def test_a_snapshot_that_fails_to_end_fails_every_search_of_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the group's snapshot cannot end (its read transaction was lost: an I/O error rolled it
    back), no answer of it is vouched for: every search of the group gets the error."""
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(m, seed=7)
    storage = m._storage
    groups = searching.SearchGroups(storage, grouped=True)
    vector = m.embedder.embed_one("lake")

    def ranking() -> list[dict[str, Any]]:
        return hybrid.rank(storage, "hybrid", vector, ["lake"], None, 3, None)

    def lost() -> list[dict[str, Any]]:
        storage._db().execute("ROLLBACK")  # as SQLite does on some I/O errors: the snapshot is gone
        return []

    out = groups._run([ranking, lost, ranking], release=lambda: None)
    assert len(out) == 3 and all(isinstance(o, sqlite3.OperationalError) for o in out)
    assert m.search("lake", user_id="a", top_k=3)["results"]  # the store serves the next search
    m.close()
