"""Many threads searching one store at once, while another adds: each search sees one snapshot
(every batch committed before it began, none half), and its results are those of a search of
that snapshot alone; searches queued meanwhile run as one group, and the next group waits for
the callers of the last one — under a GIL; without one (a free-threaded 3.13t, here simulated
by patching ``searching.gil_enabled`` so that both paths run on every interpreter) they run side
by side. Also: the cost of a search in statements does not grow with its words. Storage only:
the hash embedder, no model (tests/hash_embedder.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from memory_helpers import HashEmbedder, hold_first_fail_one, search_while_held

from hivemem import Memory
from hivemem.embed.corpus import sentences
from hivemem.infra import grouping
from hivemem.infra.grouping import Member
from hivemem.memory import hybrid, searching
from hivemem.memory.searching import SEARCH_WAIT_MS

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

BATCHES, PER_BATCH, THREADS = 6, 25, 8


@pytest.fixture
def with_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The searches' path under a GIL (grouped), whatever this interpreter is."""
    monkeypatch.setattr(searching, "gil_enabled", lambda: True, raising=False)  # (absent before)


def _items(texts: list[str], user: str) -> list[dict[str, Any]]:
    return [{"messages": t, "user_id": user} for t in texts]


def _answer(m: Memory, query: str) -> list[tuple[str, float]]:
    return [(h["memory"], h["score"]) for h in m.search(query, user_id="w", top_k=5)["results"]]


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    return [t for t, _ in got] == [t for t, _ in want] and all(
        abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("gil", [True, False], ids=["gil", "no-gil"])
def test_threads_searching_while_another_adds_each_see_one_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gil: bool
) -> None:
    monkeypatch.setattr(searching, "gil_enabled", lambda: gil, raising=False)
    texts = sentences(300 + BATCHES * PER_BATCH + 12, seed=77)
    base, new, queries = texts[:300], texts[300:-12], texts[-12:]
    batches = [new[i * PER_BATCH : (i + 1) * PER_BATCH] for i in range(BATCHES)]
    # the answers of every snapshot the searches may see, one thread, a store of its own
    with Memory(tmp_path / "ref.sqlite", embedder=HashEmbedder()) as ref:
        ref.add_batch(_items(base[:150], "w") + _items(base[150:], "x"))
        expected = [[_answer(ref, q) for q in queries]]
        for batch in batches:
            ref.add_batch(_items(batch, "w"))
            expected.append([_answer(ref, q) for q in queries])
    assert all(expected[j] != expected[j + 1] for j in range(BATCHES)), "each batch must change an answer"

    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    m.add_batch(_items(base[:150], "w") + _items(base[150:], "x"))
    started = done = 0  # batches whose add_batch began / returned
    wrong: list[str] = []
    seen: set[int] = set()

    def writer() -> None:
        nonlocal started, done
        for batch in batches:
            started += 1
            m.add_batch(_items(batch, "w"))
            done += 1

    def searcher(k: int) -> None:
        rounds = 0
        while done < BATCHES or rounds < 3:
            rounds += 1
            for i in range(k, len(queries), 2):
                low = done  # committed before this search began: it must see them
                got = _answer(m, queries[i])
                high = started  # begun before it ended: it may see them
                fits = [j for j in range(low, high + 1) if _same(got, expected[j][i])]
                if not fits:
                    wrong.append(f"query {i} between batches {low} and {high}: {got}")
                seen.update(fits)

    threads = [threading.Thread(target=searcher, args=(k % 2,)) for k in range(THREADS)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m.close()
    assert not wrong, wrong[:3]
    assert BATCHES in seen  # the last snapshot was seen (read-your-writes after the writer ended)


def test_a_search_costs_the_same_statements_whatever_its_words(tmp_path: Path) -> None:
    """Each statement (and each result row) lets the GIL go, a hand-off when threads search at
    once: the keyword side looks all words up in one statement, not one per word."""
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    texts = sentences(200, seed=5)
    m.add_batch(_items(texts, "w"))
    words = hybrid.query_terms(" ".join(texts[:6]))[:12]  # words the store holds
    assert len(words) == 12
    one_word, many_words = words[0], " ".join(words)
    db = m._storage._db()
    counts = []
    for query in (one_word, many_words, one_word):
        m.search(query, user_id="w")  # warm: the scope's row count is then known for this version
        seen: list[str] = []
        db.set_trace_callback(lambda sql, seen=seen: seen.append(sql) if not sql.startswith("--") else None)
        hits = m.search(query, user_id="w")["results"]
        db.set_trace_callback(None)
        assert hits
        counts.append(len(seen))
    assert counts[0] == counts[1] == counts[2], counts
    m.close()


def _searches(m: Memory, queries: list[str]) -> list[Any]:
    """One search of user ``w`` per query, for ``search_while_held``."""
    return [lambda q=q: m.search(q, user_id="w")["results"] for q in queries]


@pytest.mark.usefixtures("with_gil")
def test_searches_queued_meanwhile_run_as_one_group_each_with_its_own_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one thread runs a search, the searches of seven others queue and are then run by one
    of them, in one group; each caller gets its own answer, and the one whose search fails gets
    its error, the others their answers."""
    emb = HashEmbedder()
    m = Memory(tmp_path / "m.sqlite", embedder=emb)
    m.add_batch(_items(sentences(60, seed=8), "w"))
    queries = sentences(8, seed=9)
    want = [m.search(q, user_id="w")["results"] for q in queries]
    search, first, go = hold_first_fail_one(hybrid.rank, emb.embed_one(queries[5]))
    monkeypatch.setattr(hybrid, "rank", search)
    combiner = m._searches._combiner
    assert combiner is not None
    groups, calls = combiner.groups, combiner.calls

    got = search_while_held(m, _searches(m, queries), first, go)
    assert (combiner.groups - groups, combiner.calls - calls) == (2, len(queries))
    assert isinstance(got[5], RuntimeError) and "fails" in str(got[5])
    assert [g for i, g in enumerate(got) if i != 5] == [w for i, w in enumerate(want) if i != 5]
    m.close()


@pytest.mark.usefixtures("with_gil")
def test_searches_of_an_interrupted_group_run_again_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread running a group of searches is interrupted (as by Ctrl-C) at its first search:
    it gets the interrupt, and every other search of its group is run again, alone, and answers
    (it only reads), instead of failing with an error about a call that "may or may not have
    taken effect"."""

    class Interrupted(BaseException):
        pass

    emb = HashEmbedder()
    m = Memory(tmp_path / "m.sqlite", embedder=emb)
    m.add_batch(_items(sentences(60, seed=8), "w"))
    queries = sentences(8, seed=9)
    want = [m.search(q, user_id="w")["results"] for q in queries]
    real, first, go = hybrid.rank, threading.Event(), threading.Event()
    count, count_lock = [0], threading.Lock()

    def search(storage: Any, mode: str, vector: Any, *args: Any) -> Any:
        with count_lock:
            count[0] += 1
            n = count[0]
        if n == 1:  # the first search holds its group until the others have queued
            first.set()
            assert go.wait(60)
        if n == 2:  # the first search of the next group: its leader's own, interrupted
            raise Interrupted()
        return real(storage, mode, vector, *args)

    monkeypatch.setattr(hybrid, "rank", search)
    got = search_while_held(m, _searches(m, queries), first, go)
    interrupted = [i for i, g in enumerate(got) if isinstance(g, Interrupted)]
    assert len(interrupted) == 1, got
    assert [g for i, g in enumerate(got) if i not in interrupted] == [
        w for i, w in enumerate(want) if i not in interrupted
    ]
    assert m.search(queries[0], user_id="w")["results"] == want[0]  # and searches go on grouped
    m.close()


@pytest.mark.usefixtures("with_gil")
def test_the_next_group_waits_for_the_callers_of_the_last_one_and_a_lone_caller_never_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a group of several searches, the next group waits (up to ``SEARCH_WAIT_MS``) until as
    many searches are queued as the last group served: its callers come back with their next
    search, and their Python runs between groups instead of between the leader's SQLite steps. A
    lone sequential caller's last group was of one: its next search never waits. (The clock is
    frozen for the look at the line, so that no timing enters the test.)"""
    emb = HashEmbedder()
    m = Memory(tmp_path / "m.sqlite", embedder=emb)
    m.add_batch(_items(sentences(60, seed=8), "w"))
    combiner = m._searches._combiner
    assert combiner is not None
    line = combiner._line

    def wait_for_one_more() -> float:
        """Seconds a search queued now would wait, the clock stopped when the last group left."""
        with monkeypatch.context() as frozen:
            frozen.setattr(grouping.time, "monotonic", lambda: line._free_since)
            probe: Member[Any] = Member("probe")
            line.put([probe])
            try:
                return line.wait_for()
            finally:
                assert line.remove(probe)

    queries = sentences(8, seed=9)
    m.search(queries[0], user_id="w")  # a lone caller: a group of one
    assert wait_for_one_more() <= 0
    search, first, go = hold_first_fail_one(hybrid.rank, None)
    monkeypatch.setattr(hybrid, "rank", search)
    got = search_while_held(m, _searches(m, queries), first, go)  # a group of one, then one of seven
    assert all(isinstance(g, list) for g in got), got
    assert line._expect == len(queries) - 1
    waits = wait_for_one_more()
    assert waits > 0 and waits == pytest.approx(SEARCH_WAIT_MS / 1000)
    m.close()


def test_without_a_gil_searches_run_side_by_side_in_their_callers_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a GIL there is no hand-off to save: eight threads' searches are all inside the
    ranking at once (a barrier of eight in it is passed; grouped, one thread ran them one after
    the other and the barrier broke), each in its caller's thread, and each gets the answer it
    gets alone. No group is formed."""
    monkeypatch.setattr(searching, "gil_enabled", lambda: False, raising=False)
    m = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    m.add_batch(_items(sentences(60, seed=8), "w"))
    queries = sentences(THREADS, seed=9)
    want = [m.search(q, user_id="w")["results"] for q in queries]
    real, inside = hybrid.rank, threading.Barrier(THREADS, timeout=30)
    ran_in: dict[int, int] = {}

    def search(storage: Any, mode: str, vector: Any, *args: Any) -> Any:
        inside.wait()  # all eight searches are running now
        ran_in[threading.get_ident()] = ran_in.get(threading.get_ident(), 0) + 1
        return real(storage, mode, vector, *args)

    monkeypatch.setattr(hybrid, "rank", search)
    combiner = m._searches._combiner
    assert combiner is not None
    groups = combiner.groups
    got: list[Any] = [None] * THREADS

    def run(i: int) -> None:
        try:
            got[i] = m.search(queries[i], user_id="w")["results"]
        except BaseException as exc:  # returned to the test
            got[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    m.close()
    assert got == want
    assert sorted(ran_in.values()) == [1] * THREADS  # each search in its own caller's thread
    assert combiner.groups == groups
