"""Vector context (issue 23): in hybrid search each candidate's cosine is fused with that of the
normalised mean of the stored vectors of its window (it and the ``CONTEXT_BEFORE`` memories just
before it in its exact scope; ``hybrid.context_cosines``, ``Storage.window_scores``). These tests
measure storage and the fusion's arithmetic, not ranking quality, so they use the hash embedder
(NOT a model; ``tests/hash_embedder.py``) and run in the fast set; the recall it buys is measured
by ``benchmarks/retrieval.py`` on LoCoMo with the real model.

Nothing derived is stored: each window is read from the rows as they are at search time. So the
tests check that what a search reads equals a rebuild from scratch computed here in Python (from
each memory's text, its scope and its insertion order) after any sequence of writes, that a
window never crosses scopes, and that both backends rank alike.
"""

from __future__ import annotations

import re
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hash_embedder import HashEmbedder
from memory_helpers import TALK, TALK_SEARCHES, random_writes, talk_rewrite

from hivemem import Memory
from hivemem.memory import hybrid
from hivemem.memory.storage import fts

pytestmark = pytest.mark.fast
EMB = HashEmbedder()


def rebuilt(m: Memory, query: np.ndarray) -> dict[str, float]:
    """cos(query, normalised mean of the window) of every memory, from scratch: the memory and the
    ``CONTEXT_BEFORE`` memories before it in its (user, agent, run) scope, in insertion order;
    each vector is the hash embedder's of the stored text."""
    by_scope: dict[tuple[Any, ...], list[np.ndarray]] = {}
    out = {}
    for r in m._storage.list(None, 100_000):  # in insertion order (rid)
        mine = by_scope.setdefault((r.get("user_id"), r.get("agent_id"), r.get("run_id")), [])
        mine.append(EMB.embed_one(r["memory"]).astype(np.float64))
        mean = np.sum(mine[-(fts.CONTEXT_BEFORE + 1) :], axis=0)
        out[r["id"]] = float(mean @ query / np.linalg.norm(mean))
    return out


def read(m: Memory, query: np.ndarray) -> dict[str, float]:
    """What a search reads: ``window_scores`` of every memory, as ``hybrid.context_cosines``."""
    ids = [r["id"] for r in m._storage.list(None, 100_000)]
    with m._storage.snapshot():
        return hybrid.context_cosines(m._storage.window_scores(ids, query))


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


@pytest.mark.parametrize("seed", [23, 24])
def test_random_writes_give_windows_equal_to_a_rebuild(location: str, seed: int, tmp_path: Path) -> None:
    """Adds, batches, updates, deletes, batch updates and deletes, delete_all, an import and a purge
    of expired memories, in three scopes (user a, user b, user a's run r1) in random order: after
    every step each memory's window cosine equals the rebuild's (both backends)."""
    from hivemem.memory.transfer import export_lines, import_lines

    m = Memory(location, embedder=EMB, vector_context=True)
    query = EMB.embed_one("the query")
    for what in random_writes(m, seed, 80):
        assert same(read(m, query), rebuilt(m, query)), what
    source = Memory(tmp_path / "source.sqlite", embedder=EMB)
    source.add_batch([{"messages": f"imported {i}", "user_id": "a" if i % 2 else "b"} for i in range(12)])
    source.add_batch([{"messages": f"short lived {i}", "user_id": "a", "expiration_date": "2001-01-01"}
                      for i in range(4)])  # fmt: skip
    import_lines(m, list(export_lines(source)), batch=5)
    assert same(read(m, query), rebuilt(m, query))
    assert m.purge_expired() == 4
    final = rebuilt(m, query)
    assert same(read(m, query), final) and len(final) > 20
    source.close()
    m.close()


def test_a_window_never_crosses_scopes(location: str) -> None:
    """Two users and a run of one of them, interleaved: the query is exactly bob's text, and the
    memory stored right after it is alice's (or alice's run's). Its window holds only its own
    scope's memories, so bob's vector never lifts it: its context cosine is the rebuild's, and
    far from the ~0.6 that bob's vector in its window would give."""
    m = Memory(location, embedder=EMB, vector_context=True)
    for i in range(4):
        m.add(f"alice note {i}", user_id="alice")
        m.add(f"bob secret {i}", user_id="bob")
        m.add(f"alice run note {i}", user_id="alice", run_id="r")
    query = EMB.embed_one("bob secret 2")
    got, want = read(m, query), rebuilt(m, query)
    assert same(got, want)
    after = next(r["id"] for r in m._storage.list(None, 100) if r["memory"] == "alice run note 2")
    assert abs(got[after]) < 0.45  # the hash vectors of other texts are nearly orthogonal to bob's
    bob_next = next(r["id"] for r in m._storage.list(None, 100) if r["memory"] == "bob secret 3")
    assert got[bob_next] > 0.45  # in bob's own scope the window does hold it
    m.close()


def test_the_memory_after_a_match_ranks_up_and_explain_shows_why(location: str) -> None:
    """The query is the text of memory P; Q is stored right after P in the scope. With the option,
    Q's cosine is mixed with its window's (P's vector in it), so Q ranks higher than without, and
    every hit's ``score_details`` gives ``context_cosine`` (the rebuild's) and ``vector_score`` =
    (cosine + 0.5 × context) / 1.5, from which ``fused`` is computed and the order follows.
    Without the option: no such keys. (Fails on the old code: no ``vector_context``.)"""
    texts = (
        [f"filler {i}" for i in range(8)] + ["zebra lamp", "quiet harbor"] + [f"tail {i}" for i in range(8)]
    )
    everything = len(texts)
    with Memory(location, embedder=EMB) as m:
        m.add_batch([{"messages": t, "user_id": "u"} for t in texts])
        plain = m.search("zebra lamp", user_id="u", top_k=everything, explain=True)["results"]
        assert "context_cosine" not in plain[0]["score_details"]
    with Memory(location, embedder=EMB, vector_context=True) as m:
        hits = m.search("zebra lamp", user_id="u", top_k=everything, explain=True)["results"]
        order = [h["memory"] for h in hits]
        assert order[0] == "zebra lamp"
        assert order.index("quiet harbor") < [h["memory"] for h in plain].index("quiet harbor")
        want = rebuilt(m, EMB.embed_one("zebra lamp"))
        for h in hits:
            d = h["score_details"]
            assert d["context_cosine"] == pytest.approx(want[h["id"]], abs=1e-5)
            assert d["vector_score"] == pytest.approx((d["cosine"] + 0.5 * d["context_cosine"]) / 1.5)
            w = d["keyword_weight"]
            assert h["score"] == pytest.approx((d["vector_score"] + w * d["keyword_normalized"]) / (1 + w))
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        q = next(h for h in hits if h["memory"] == "quiet harbor")["score_details"]
        assert q["keyword_normalized"] == 0 and q["context_cosine"] > q["cosine"] + 0.3
        # threshold keeps its meaning: a cut on the memory's own cosine, not on the mix
        cut = m.search("zebra lamp", user_id="u", top_k=5, threshold=0.9)["results"]
        assert [h["memory"] for h in cut] == ["zebra lamp"]
        vector_mode = m.search("zebra lamp", user_id="u", top_k=2, mode="vector", explain=True)["results"]
        assert "context_cosine" not in vector_mode[0]["score_details"]  # hybrid only


def test_the_option_and_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.sqlite"
    monkeypatch.setenv("HIVEMEM_VECTOR_CONTEXT", "1")
    with Memory(path, embedder=EMB) as m:
        assert m._storage.vector_context == hybrid.VECTOR_CONTEXT_SHARE
    with Memory(path, embedder=EMB, vector_context=False) as m:
        assert m._storage.vector_context == 0
    monkeypatch.setenv("HIVEMEM_VECTOR_CONTEXT", "maybe")
    with pytest.raises(ValueError, match="HIVEMEM_VECTOR_CONTEXT must be 1 or 0"):
        Memory(path, embedder=EMB)
    monkeypatch.delenv("HIVEMEM_VECTOR_CONTEXT")
    with pytest.raises(TypeError, match="vector_context must be True or False"):
        Memory(path, embedder=EMB, vector_context="yes")  # type: ignore[arg-type]
    with Memory.from_config({"path": str(path), "vector_context": True}) as m:
        assert m._storage.vector_context == hybrid.VECTOR_CONTEXT_SHARE


def test_sqlite_reads_windows_by_the_scope_index(tmp_path: Path) -> None:
    """The option makes the (scope, rid) index once, and the window read seeks it: its cost does
    not grow with the scope (a read of the whole scope per candidate would)."""
    from hivemem.memory.storage import sqlite as sqlite_storage

    path = tmp_path / "m.sqlite"
    Memory(path, embedder=EMB).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'memories_scope_rid'").fetchone() is None
    Memory(path, embedder=EMB, vector_context=True).close()
    plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN " + sqlite_storage._WINDOWS, ("[]",)))
    # the members by rowid, the window's rids by a seek of the covering index, never a scan
    assert "SEARCH w USING INTEGER PRIMARY KEY" in plan, plan
    assert re.search(r"SEARCH x USING COVERING INDEX memories_scope_rid \(scope=\? AND rid<", plan), plan
    assert "SCAN m" not in plan and "SCAN w" not in plan and "SCAN x" not in plan, plan
    db.close()


def test_both_backends_rank_alike_with_the_option(tmp_path: Path, pg_url: Callable[[], str]) -> None:
    """The same rows on SQLite and PostgreSQL, searched with both contexts on: the same memories in
    the same order, with the same scores and context cosines (words both stemmers stem alike)."""
    places = [str(tmp_path / "m.sqlite"), pg_url()]
    stores = [Memory(place, embedder=EMB, keyword_context=True, vector_context=True) for place in places]
    for m in stores:
        m.add_batch([{"messages": t, "user_id": u, "run_id": r, "metadata": {"n": i}}
                     for i, (u, r, t) in enumerate(TALK)])  # fmt: skip
        talk_rewrite(m)
    searches: list[dict[str, Any]] = [*TALK_SEARCHES, {"query": "Tuesday sunrise"}]
    for args in searches:
        found = []
        for m in stores:
            hits = m.search(**args, explain=True)["results"]
            found.append([(h["memory"], h["score"], h["score_details"]["context_cosine"]) for h in hits])
        assert [h[0] for h in found[0]] == [h[0] for h in found[1]] and len(found[0]) >= 2, args
        for a, b in zip(found[0], found[1], strict=True):
            assert a[1:] == pytest.approx(b[1:], abs=1e-6), (args, a, b)
    for m in stores:
        m.close()


def test_an_expired_memory_counts_in_its_neighbours_windows_until_purged(location: str) -> None:
    """As the keyword context's (materialised) windows, the vector context's hold the scope's
    stored rows: an expired memory, never returned, still counts in the windows of the memories
    after it until ``purge_expired`` deletes it (docs/memory.md, docs/security.md)."""
    with Memory(location, embedder=EMB, vector_context=True) as m:
        m.add("alpha turn", user_id="u", expiration_date="2001-01-01")
        m.add_batch([{"messages": t, "user_id": "u"} for t in ("beta turn", "gamma turn")])
        texts = ["alpha turn", "beta turn", "gamma turn"]
        query = EMB.embed_one("alpha turn")

        def gamma_window(members: list[str]) -> float:
            mean = np.sum([EMB.embed_one(t).astype(np.float64) for t in members], axis=0)
            return float(mean @ query / np.linalg.norm(mean))

        def searched() -> dict[str, float]:
            hits = m.search("alpha turn", user_id="u", explain=True)["results"]
            return {h["memory"]: h["score_details"]["context_cosine"] for h in hits}

        got = searched()
        assert set(got) == {"beta turn", "gamma turn"}  # the expired memory is never returned
        assert got["gamma turn"] == pytest.approx(gamma_window(texts), abs=1e-6)
        assert m.purge_expired() == 1
        assert searched()["gamma turn"] == pytest.approx(gamma_window(texts[1:]), abs=1e-6)
        assert gamma_window(texts) - gamma_window(texts[1:]) > 0.05  # the two cases differ


def test_window_sums_do_not_depend_on_the_rows_order() -> None:
    """``base.window_sums`` sums each memory's rows wherever they are in the read (SQLite keeping a
    subquery's ORDER BY through ``group_concat`` is not guaranteed): rows shuffled give the sums of
    rows grouped. (Failed before: it summed runs of equal names, so a memory whose rows were not
    consecutive kept only its last run's sum.)"""
    from hivemem.memory.storage.base import window_sums

    rng = np.random.default_rng(5)
    names = [f"m{i}" for i in range(6) for _ in range(3)]
    vecs = rng.standard_normal((len(names), 16)).astype(np.float32)
    query = rng.standard_normal(16).astype(np.float32)
    want = {
        name: (float(sum(float(v @ query) for v in vecs[3 * i : 3 * i + 3])),
               float(np.linalg.norm(vecs[3 * i : 3 * i + 3].astype(np.float64).sum(axis=0))))
        for i, name in enumerate(dict.fromkeys(names))
    }  # fmt: skip
    order = rng.permutation(len(names))
    got = window_sums([names[k] for k in order], vecs[order], query)
    assert got.keys() == want.keys()
    for name, (dot, norm) in want.items():
        assert got[name] == pytest.approx((dot, norm), abs=1e-5)
    assert window_sums(names, vecs, query).keys() == want.keys()


def test_context_cosines_stay_within_minus_one_and_one() -> None:
    """A window of equal unit vectors: Σ q·v / ‖Σ v‖ can round just past 1; the cosine reported
    (``hybrid.context_cosines``) is clamped. (Failed before: the raw quotient.)"""
    got = hybrid.context_cosines({"a": (3.0000004, 3.0), "b": (-3.0000004, 3.0), "c": (0.3, 0.0)})
    assert got == {"a": 1.0, "b": -1.0, "c": 0.0}


def test_window_vectors_load_from_every_pgvector_version() -> None:
    """pgvector-python's binary loader gives a ``Vector`` from 0.5 on and a float32 ``np.ndarray``
    in 0.3/0.4 (pyproject allows >= 0.3): ``pgarrays.loaded_vectors`` (what ``window_scores`` reads
    on PostgreSQL) takes both, in one query's rows, and gives the stored float32 values. (Failed
    before: ``window_scores`` called ``.to_numpy()`` on each value, an AttributeError with 0.4.)"""
    pytest.importorskip("psycopg")
    from pgvector import Vector

    from hivemem.memory.storage import pgarrays

    want = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    wire = [struct.pack(">HH", 8, 0) + row.astype(">f4").tobytes() for row in want]  # vector's binary form
    new = Vector.from_binary(wire[0])  # pgvector >= 0.5's loader
    old = [np.frombuffer(w, dtype=">f4", offset=4).astype(np.float32) for w in wire[1:]]  # 0.3/0.4's
    got = pgarrays.loaded_vectors([new, *old])
    assert got.dtype == np.float32 and got.shape == (3, 8)
    assert np.array_equal(got, want)


def test_reset_then_writes_keep_the_windows(location: str) -> None:
    """``reset`` (SQLite: rows deleted; PostgreSQL: tables truncated, the vector column dropped and
    made again) keeps the (scope, rid) index the windows are read by: later searches still work
    and still equal the rebuild."""
    with Memory(location, embedder=EMB, vector_context=True) as m:
        m.add_batch([{"messages": f"before {i}", "user_id": "u"} for i in range(5)])
        m.reset()
        m.add_batch([{"messages": f"after {i}", "user_id": "u"} for i in range(5)])
        query = EMB.embed_one("after 2")
        assert same(read(m, query), rebuilt(m, query)) and len(rebuilt(m, query)) == 5
        assert m.search("after 2", user_id="u", top_k=1)["results"][0]["memory"] == "after 2"


def test_async_memory_takes_both_context_options(tmp_path: Path) -> None:
    """``AsyncMemory`` has ``Memory``'s arguments: both context options reach the storage. (Failed
    before: ``AsyncMemory`` took neither and raised TypeError.)"""
    import asyncio

    from hivemem import AsyncMemory

    async def main() -> tuple[float, float]:
        async with AsyncMemory(tmp_path / "a.sqlite", EMB, keyword_context=True, vector_context=True) as am:
            return am.sync._storage.vector_context, am.sync._storage.context

    share, keyword = asyncio.run(main())
    assert share == hybrid.VECTOR_CONTEXT_SHARE and keyword == hybrid.CONTEXT_SHARE
