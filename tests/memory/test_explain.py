"""``search(..., explain=True)``: each hit's ``score_details`` — the fusion by hand, then with the real
model on both backends (``location``): the details add up, the ranks are the positions in each
side's own list, vector and keyword mode give their parts, the default response is unchanged, the
reranker's score is added, and SQLite and PostgreSQL give the same details for the same rows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from memory_helpers import new_location

from hivemem import AsyncMemory, Embedder, Memory
from hivemem.memory import hybrid

W = hybrid.KEYWORD_WEIGHT


def _hit(mid: str, score: float) -> dict[str, Any]:
    return {"id": mid, "memory": mid, "score": score}


@pytest.mark.fast
def test_fuse_explains_by_hand() -> None:
    vector = [_hit("a", 0.8), _hit("b", 0.6)]
    keyword = [_hit("b", 10.0), _hit("c", 5.0)]
    plain = hybrid.fuse(vector, keyword, {"c": 0.5}, 10, None, W)
    got = hybrid.fuse(vector, keyword, {"c": 0.5}, 10, None, W, explain=True)
    assert all("score_details" not in h for h in plain)
    assert [(h["id"], h["score"]) for h in got] == [(h["id"], h["score"]) for h in plain]
    details = {h["id"]: h["score_details"] for h in got}
    common = {"keyword_weight": W}
    assert details["a"] == {
        "cosine": 0.8,
        "vector_rank": 1,
        "keyword_score": None,
        "keyword_normalized": 0.0,
        "keyword_rank": None,
        "fused": 0.8 / 1.4,
        **common,
    }
    assert details["b"] == {
        "cosine": 0.6,
        "vector_rank": 2,
        "keyword_score": 10.0,
        "keyword_normalized": 1.0,
        "keyword_rank": 1,
        "fused": (0.6 + W) / 1.4,
        **common,
    }
    assert details["c"] == {
        "cosine": 0.5,
        "vector_rank": None,
        "keyword_score": 5.0,
        "keyword_normalized": 0.5,
        "keyword_rank": 2,
        "fused": (0.5 + W * 0.5) / 1.4,
        **common,
    }
    # no keyword hit at all: the fusion applied no keyword weight, the score is the cosine
    alone = hybrid.fuse(vector, [], {}, 10, None, W, explain=True)
    assert [(h["score_details"]["keyword_weight"], h["score_details"]["fused"]) for h in alone] == [
        (0.0, 0.8),
        (0.0, 0.6),
    ]
    assert hybrid.explain([_hit("k", 4.0), _hit("l", 1.0)], "keyword")[1]["score_details"] == {
        "keyword_score": 1.0,
        "keyword_normalized": 0.25,
        "keyword_rank": 2,
    }
    assert hybrid.explain([_hit("v", 0.3)], "vector")[0]["score_details"] == {"cosine": 0.3, "vector_rank": 1}


CORPUS = [
    "I adopted a golden retriever puppy last spring.",
    "My dog Biscuit loves running on the beach.",
    "I went to a pottery class in Lisbon on Tuesday.",
    "My sister Maria is visiting from Porto next week.",
    "I have been learning to play the cello.",
    "The weather in Lisbon has been terrible lately.",
    "I started reading a novel by Haruki Murakami.",
    "My favourite food is ramen with extra egg.",
    "Biscuit chewed my new running shoes.",
    "We walked the dog along the river in Porto.",
    "The cello teacher said to practise scales daily.",
    "Murakami's book is about a well and a cat.",
    "The parcel with tracking code QX7741 finally arrived.",
    "Grandpa's boat is called Zephyr.",
] + [f"Note {i}: groceries, bills and other errands." for i in range(40)]
OTHER = ["Bob: Biscuit is also the name of my cat.", "Bob: I learned the cello in Lisbon."]
# "Biscuit errands": one of its top 10 is a keyword candidate only (checked below)
QUERIES = [
    "What is the name of the dog?",
    "cello lessons in Lisbon",
    "Murakami novel",
    "Biscuit errands",
    "zzqx wibble",
]


def _fill(m: Memory) -> None:
    m.add_batch(
        [{"messages": t, "user_id": "alice"} for t in CORPUS]
        + [{"messages": t, "user_id": "bob"} for t in OTHER]
    )


def _check_hybrid(m: Memory, query: str, k: int) -> list[dict[str, Any]]:
    """The explained hits of ``query`` checked against the vector and keyword lists of the scope."""
    plain = m.search(query, user_id="alice", top_k=k)["results"]
    got = m.search(query, user_id="alice", top_k=k, explain=True)["results"]
    assert all("score_details" not in h for h in plain)  # the default response is unchanged
    assert [{k: v for k, v in h.items() if k != "score_details"} for h in got] == plain
    depth = hybrid.candidates(k)
    vector = m.search(query, user_id="alice", top_k=depth, mode="vector")["results"]
    keyword = m.search(query, user_id="alice", top_k=depth, mode="keyword")["results"]
    v_rank = {h["id"]: i for i, h in enumerate(vector, 1)}
    k_hit = {h["id"]: (i, h["score"]) for i, h in enumerate(keyword, 1)}
    for h in got:
        d = h["score_details"]
        assert d["vector_rank"] == v_rank.get(h["id"])
        if d["vector_rank"] is not None:
            assert d["cosine"] == vector[d["vector_rank"] - 1]["score"]
        rank, raw = k_hit.get(h["id"], (None, None))
        assert (d["keyword_rank"], d["keyword_score"]) == (rank, raw)
        assert d["keyword_normalized"] == pytest.approx(raw / keyword[0]["score"] if raw else 0.0)
        assert d["keyword_weight"] == (W if keyword else 0.0)
        fused = (d["cosine"] + d["keyword_weight"] * d["keyword_normalized"]) / (1 + d["keyword_weight"])
        assert d["fused"] == h["score"] == pytest.approx(fused, abs=1e-12)
    return got


def test_details_add_up_and_ranks_match_the_side_lists(location: str, embedder: Embedder) -> None:
    with Memory(location, embedder=embedder) as m:
        _fill(m)
        missed = set()
        for query in QUERIES:
            got = _check_hybrid(m, query, k=10)
            assert {h["user_id"] for h in got} == {"alice"}
            missed |= {
                n for h in got for n in ("vector_rank", "keyword_rank") if h["score_details"][n] is None
            }
        assert missed == {"vector_rank", "keyword_rank"}  # both "not a candidate there" cases were seen
        # a cosine from the keyword side is the model's own cosine too
        dog = m.search("Biscuit", user_id="alice", top_k=3, explain=True)["results"]
        q = embedder.embed_one("Biscuit")
        for h in dog:
            assert h["score_details"]["cosine"] == pytest.approx(
                float(q @ embedder.embed_one(h["memory"])), abs=1e-3
            )
        # vector and keyword mode: the parts they have
        vec = m.search("cello", user_id="alice", top_k=4, mode="vector", explain=True)["results"]
        assert [h["score_details"] for h in vec] == [
            {"cosine": h["score"], "vector_rank": i} for i, h in enumerate(vec, 1)
        ]
        kw = m.search("cello Lisbon", user_id="alice", top_k=4, mode="keyword", explain=True)["results"]
        best = kw[0]["score"]
        assert [h["score_details"] for h in kw] == [
            {"keyword_score": h["score"], "keyword_normalized": h["score"] / best, "keyword_rank": i}
            for i, h in enumerate(kw, 1)
        ]
        assert "score_details" not in m.search("cello", user_id="alice", mode="keyword")["results"][0]
        # threshold: a cut, not a boost (the details of what is left are as without it)
        cut = m.search("cello", user_id="alice", top_k=5, threshold=0.3, explain=True)["results"]
        assert all(h["score_details"]["cosine"] >= 0.3 for h in cut)
        with pytest.raises(TypeError, match="explain must be True or False"):
            m.search("cello", user_id="alice", explain="yes")  # type: ignore[arg-type]


class Scored:
    """A reranker that scores by length and tampers with what it was given."""

    def rerank(self, query: str, memories: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
        for h in memories:
            if "score_details" in h:
                h["score_details"].clear()
        order = sorted(memories, key=lambda h: len(h["memory"]))
        return [{**h, "rerank_score": 1 / len(h["memory"])} for h in order[:top_k]]


def test_rerank_adds_its_score(location: str, embedder: Embedder) -> None:
    with Memory(location, embedder=embedder, reranker=Scored()) as m:
        _fill(m)
        fused = m.search("dog", user_id="alice", top_k=20, explain=True)["results"]
        got = m.search("dog", user_id="alice", top_k=3, rerank=True, explain=True)["results"]
        before = {h["id"]: (i, h["score_details"]) for i, h in enumerate(fused, 1)}
        for h in got:
            rank, details = before[h["id"]]
            assert h["score_details"] == {
                **details,
                "rerank_score": 1 / len(h["memory"]),
                "rank_before_rerank": rank,
            }
        assert "score_details" not in m.search("dog", user_id="alice", top_k=3, rerank=True)["results"][0]


def test_async_memory_explains(tmp_path: Path, embedder: Embedder) -> None:
    async def main() -> list[dict[str, Any]]:
        async with AsyncMemory(tmp_path / "a.sqlite", embedder=embedder) as m:
            await m.add("I have been learning to play the cello.", user_id="u")
            out = await m.search("cello", user_id="u", explain=True)
            return list(out["results"])

    (hit,) = asyncio.run(main())
    assert hit["score_details"]["keyword_rank"] == hit["score_details"]["vector_rank"] == 1


def test_both_backends_explain_alike(
    tmp_path: Path, pg_url: Any, embedder: Embedder, request: pytest.FixtureRequest
) -> None:
    stores = [Memory(new_location(b, tmp_path, request), embedder=embedder) for b in ("sqlite", "postgres")]
    try:
        for m in stores:
            _fill(m)
        for query in QUERIES:
            sq, pg = (m.search(query, user_id="alice", top_k=8, explain=True)["results"] for m in stores)
            assert [h["memory"] for h in sq] == [h["memory"] for h in pg]
            for a, b in zip(sq, pg, strict=True):
                da, db = a["score_details"], b["score_details"]
                assert da.keys() == db.keys()
                assert {n: v for n, v in da.items() if isinstance(v, int) or v is None} == {
                    n: v for n, v in db.items() if isinstance(v, int) or v is None
                }  # ranks, and which side missed it
                for n in ("cosine", "keyword_score", "keyword_normalized", "keyword_weight", "fused"):
                    assert da[n] == pytest.approx(db[n], abs=1e-5), n
    finally:
        for m in stores:
            m.close()
