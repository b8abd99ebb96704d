"""Hybrid search: the fusion rule by hand, a small hand-checked corpus with the real model, the
keyword side kept in the same transactions as the rows, filters before ranking, hostile queries,
modes and the reranker interface."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem import Embedder, Memory
from hivemem.memory import hybrid
from hivemem.memory.records import prepare
from hivemem.memory.rerank import Reranker
from hivemem.memory.storage.sqlite import SQLiteStorage


def _hit(mid: str, score: float) -> dict[str, Any]:
    return {"id": mid, "memory": mid, "score": score}


def test_fusion_rule_by_hand() -> None:
    vector = [_hit("a", 0.8), _hit("b", 0.6)]
    keyword = [_hit("b", 10.0), _hit("c", 5.0)]
    got = hybrid.fuse(vector, keyword, {"c": 0.5}, top_k=10, threshold=None, weight=0.4)
    # a: (0.8 + 0) / 1.4;  b: (0.6 + 0.4 * 10/10) / 1.4;  c: (0.5 + 0.4 * 5/10) / 1.4
    assert [(h["id"], round(h["score"], 6)) for h in got] == [
        ("b", round(1.0 / 1.4, 6)),
        ("a", round(0.8 / 1.4, 6)),
        ("c", round(0.7 / 1.4, 6)),
    ]
    # threshold gates the cosine, whatever the keyword score (Mem0's meaning)
    assert [h["id"] for h in hybrid.fuse(vector, keyword, {"c": 0.5}, 10, 0.55, 0.4)] == ["b", "a"]
    assert [h["id"] for h in hybrid.fuse(vector, keyword, {"c": 0.5}, 2, None, 0.4)] == ["b", "a"]
    # a keyword hit whose cosine is unknown (deleted meanwhile) drops out; ties: higher cosine, then id
    tie = hybrid.fuse([_hit("y", 0.5), _hit("x", 0.5)], [], {}, 10, None, 0.4)
    assert [h["id"] for h in tie] == ["x", "y"]
    assert [h["id"] for h in hybrid.fuse([], [_hit("z", 1.0)], {}, 10, None)] == []
    # no keyword hit at all: the score is the cosine itself (the divisor counts the signals present)
    assert [h["score"] for h in hybrid.fuse(vector, [], {}, 10, None, 0.4)] == [0.8, 0.6]


def test_query_terms() -> None:
    assert hybrid.query_terms("When did Caroline go to the LGBTQ support group?") == [
        "caroline", "go", "lgbtq", "support", "group",
    ]  # fmt: skip
    assert hybrid.query_terms("What is it?") == ["what", "is", "it"]  # only stop words: keep them
    assert hybrid.query_terms("tea TEA Tea") == ["tea"]
    assert hybrid.query_terms('"; DROP TABLE x; -- NEAR(a b) body:c *') == [
        "drop",
        "table",
        "x",
        "near",
        "b",
        "body",
        "c",
    ]
    assert len(hybrid.query_terms(" ".join(f"w{i}" for i in range(100)))) == hybrid.MAX_TERMS
    assert hybrid.query_terms("x" * 65 + " ok") == ["ok"]


CORPUS = [
    "Alice: My dog Biscuit loves running on the beach.",
    "Alice: I adopted a golden retriever puppy last spring.",
    "Alice: I went to a pottery class in Lisbon on Tuesday.",
    "Alice: My sister Maria is visiting from Porto next week.",
    "Alice: I have been learning to play the cello.",
    "Alice: The weather has been terrible lately.",
    "Alice: I started reading a novel by Haruki Murakami.",
    "Alice: My favourite food is ramen with extra egg.",
    "Bob: Biscuit is also the name of my cat.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Memory:
    m = Memory(tmp_path_factory.mktemp("hybrid") / "h.sqlite", embedder=embedder)
    m.add_batch([{"messages": t, "user_id": t.split(":")[0].lower()} for t in CORPUS])
    return m


def _top(m: Memory, query: str, mode: str = "hybrid", k: int = 3, **kw: Any) -> list[str]:
    return [h["memory"] for h in m.search(query, user_id="alice", top_k=k, mode=mode, **kw)["results"]]


def test_hand_checked_ranking(corpus: Memory) -> None:
    # the dog's name is only in the Biscuit memory; the retriever puppy is the dense model's pick
    assert _top(corpus, "What is the name of Alice's dog?", mode="vector")[0] == CORPUS[1]
    assert _top(corpus, "What is the name of Alice's dog?")[0] == CORPUS[0]
    assert _top(corpus, "Which book author is Alice reading?")[0] == CORPUS[6]
    assert _top(corpus, "Murakami")[0] == CORPUS[6]  # a name: keyword evidence carries it
    assert _top(corpus, "Where did Alice take a pottery class?")[0] == CORPUS[2]
    assert _top(corpus, "Which instrument is she learning?")[0] == CORPUS[4]
    assert _top(corpus, "Biscuit", mode="keyword", k=5) == [CORPUS[0]]  # Bob's cat is another scope
    hits = corpus.search("Murakami", user_id="alice", top_k=3)["results"]
    assert hits[0]["score"] > hits[1]["score"] and all(h["score"] <= 1 for h in hits)
    vector = corpus.search("Murakami", user_id="alice", top_k=9, mode="vector")["results"]
    assert [h["score"] for h in vector] == sorted((h["score"] for h in vector), reverse=True)
    # threshold keeps Mem0's meaning: a cosine cut-off, also for memories the keywords found
    cut = max(h["score"] for h in vector) - 1e-6
    assert _top(corpus, "Murakami", k=9, threshold=cut) == [vector[0]["memory"]]
    assert _top(corpus, "Murakami", k=9, threshold=0.99) == []


def test_modes_and_their_errors(corpus: Memory) -> None:
    with pytest.raises(ValueError, match="mode must be one of 'hybrid', 'vector', 'keyword'"):
        corpus.search("x", user_id="alice", mode="bm25")
    with pytest.raises(ValueError, match="keyword mode computes no cosine"):
        corpus.search("x", user_id="alice", mode="keyword", threshold=0.1)
    with pytest.raises(ValueError, match="rerank=True needs a reranker"):
        corpus.search("x", user_id="alice", rerank=True)
    assert corpus.search("zzzunknownword", user_id="alice", mode="keyword")["results"] == []


def test_keyword_mode_loads_no_model(tmp_path: Path, hash_embedder: Any) -> None:
    path = tmp_path / "k.sqlite"
    with Memory(path, embedder=hash_embedder) as m:
        m.add("the cello lesson is on Friday", user_id="u")
    m = Memory(path)
    assert [h["memory"] for h in m.search("cello", user_id="u", mode="keyword")["results"]] == [
        "the cello lesson is on Friday"
    ]
    assert m._embedder is None
    m.close()


class Reverse:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def rerank(self, query: str, memories: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
        self.seen.append(len(memories))
        return list(reversed(memories))[:top_k]


def test_reranker_interface(tmp_path: Path, hash_embedder: Any) -> None:
    rev = Reverse()
    assert isinstance(rev, Reranker)
    m = Memory(tmp_path / "r.sqlite", embedder=hash_embedder, reranker=rev)
    m.add_batch([{"messages": f"note {i}", "user_id": "u"} for i in range(30)])
    plain = [h["id"] for h in m.search("note 3", user_id="u", top_k=25)["results"]]
    got = [h["id"] for h in m.search("note 3", user_id="u", top_k=3, rerank=True)["results"]]
    assert rev.seen == [20] and got == plain[:20][::-1][:3]  # it saw the best max(4 × 3, 20)

    class Liar:
        def rerank(self, query: str, memories: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
            return [{"id": "made-up"}]

    with pytest.raises(ValueError, match="must return memories it was given"):
        Memory(tmp_path / "r.sqlite", embedder=hash_embedder, reranker=Liar()).search(
            "note", user_id="u", rerank=True
        )
    with pytest.raises(TypeError, match="reranker must have a rerank"):
        Memory(tmp_path / "r.sqlite", embedder=hash_embedder, reranker=object())  # type: ignore[arg-type]
    m.close()


def test_keyword_filters_apply_before_ranking(tmp_path: Path, hash_embedder: Any) -> None:
    m = Memory(tmp_path / "f.sqlite", embedder=hash_embedder)
    items: list[dict[str, Any]] = [
        {"messages": f"green tea number {i}", "user_id": "many"} for i in range(40)
    ]
    items += [{"messages": f"tea {i} with a long tail of other words here", "user_id": "many",
               "metadata": {"topic": "drinks"}} for i in range(2)]  # fmt: skip
    items += [{"messages": f"oolong tea {i}", "user_id": "bob"} for i in range(2)]
    m.add_batch(items)
    for mode in ("keyword", "hybrid"):
        bob = m.search("tea", user_id="bob", top_k=2, mode=mode)["results"]
        assert sorted(h["memory"] for h in bob) == ["oolong tea 0", "oolong tea 1"]
        # the two best "tea" rows of the scope fail this filter: still the best two that pass
        drinks = m.search("green tea", user_id="many", filters={"topic": "drinks"}, top_k=2, mode=mode)
        assert sorted(h["metadata"]["topic"] for h in drinks["results"]) == ["drinks", "drinks"]
    m.close()


def test_keyword_index_follows_the_transactions(tmp_path: Path, hash_embedder: Any) -> None:
    path = tmp_path / "t.sqlite"
    m = Memory(path, embedder=hash_embedder)
    mid = m.add("my passport expires in March", user_id="u")["results"][0]["id"]

    def kw(q: str) -> list[str]:
        return [h["memory"] for h in m.search(q, user_id="u", mode="keyword")["results"]]

    assert kw("passport") == ["my passport expires in March"]
    m.update(mid, text="my visa expires in May")
    assert kw("passport") == [] and kw("visa") == ["my visa expires in May"]
    # a batch that fails half-way leaves neither rows nor keyword entries behind
    storage = m._storage
    ok = prepare("quokka sightings are rare", user_id="u")
    clash = prepare("another quokka", user_id="u")[0]
    clash = type(clash)(**{**clash.__dict__, "id": mid})  # the id is taken: the 2nd INSERT fails
    with pytest.raises(ValueError, match="already taken"):
        storage.insert([*ok, clash], np.ones((2, hash_embedder.dim), dtype=np.float32))
    assert kw("quokka") == []
    m.delete(mid)
    assert kw("visa") == []
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM memories_fts").fetchone()[0] == 0
    db.close()
    m.close()


def test_existing_store_gets_its_keyword_index(tmp_path: Path, hash_embedder: Any) -> None:
    path = tmp_path / "old.sqlite"
    with Memory(path, embedder=hash_embedder) as m:
        m.add_batch([{"messages": t, "user_id": "u"} for t in ("red kite", "blue whale")])
    db = sqlite3.connect(path)  # as a store made before the keyword index existed
    for name in ("memories_fts_insert", "memories_fts_delete", "memories_fts_update"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE memories_fts")
    db.execute("DELETE FROM meta WHERE key = 'fts'")
    db.commit()
    db.close()
    with Memory(path, embedder=hash_embedder) as m:
        assert [h["memory"] for h in m.search("whale", user_id="u", mode="keyword")["results"]] == [
            "blue whale"
        ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(min_size=1, max_size=80))
def test_hostile_queries_are_words_never_syntax(tmp_path_factory: pytest.TempPathFactory, hash_embedder: Any,
                                                query: str) -> None:  # fmt: skip
    path = tmp_path_factory.getbasetemp() / "hostile.sqlite"
    m = Memory(path, embedder=hash_embedder)
    if not m.count():
        m.add_batch(
            [{"messages": t, "user_id": "alice"} for t in ('say "NEAR" AND OR NOT', "body: scope: *")]
        )
    try:
        for mode in ("keyword", "hybrid"):
            hits = m.search(query, user_id="alice", mode=mode)["results"]
            assert all(h["user_id"] == "alice" for h in hits)
    except ValueError as exc:  # only the documented refusals
        assert "query" in str(exc)
    finally:
        m.close()


@pytest.mark.parametrize(
    "query", ['"', '""', "NEAR(say body)", "say AND", "OR", "* ^say", "body : say", "scope:*", "a\x00b"]
)
def test_fts_syntax_in_a_query_is_literal(tmp_path: Path, hash_embedder: Any, query: str) -> None:
    m = Memory(tmp_path / "s.sqlite", embedder=hash_embedder)
    m.add_batch(
        [{"messages": "say hello", "user_id": "alice"}, {"messages": "near the body", "user_id": "bob"}]
    )
    hits = m.search(query, user_id="alice", mode="keyword")["results"]
    assert all(h["user_id"] == "alice" for h in hits)
    # the scope column is never reachable from user text
    token = "u" + b"alice".hex().upper()
    assert m.search(token, mode="keyword")["results"] == []
    m.close()


def test_storage_contract_primitives(tmp_path: Path, hash_embedder: Any) -> None:
    """What hybrid.search needs from any backend, on SQLite."""
    s = SQLiteStorage(tmp_path / "c.sqlite")
    s.bind_model(hash_embedder.model_id, hash_embedder.dim)
    texts = ["apple pie recipe", "apple orchard visit", "banana bread"]
    mems = [m for t in texts for m in prepare(t, user_id="u")]
    s.insert(mems, hash_embedder.embed(texts))
    q = hash_embedder.embed_one("apple")
    with s.snapshot(), s.snapshot():  # re-entrant
        kw = s.keyword_search(["apple"], None, 10)
        cos = s.cosines([m.id for m in mems] + ["unknown"], q)
    assert {h["memory"] for h in kw} == {"apple pie recipe", "apple orchard visit"}
    assert all(h["score"] > 0 for h in kw)
    assert set(cos) == {m.id for m in mems}
    vec = hash_embedder.embed(texts)
    assert all(abs(cos[m.id] - float(v @ q)) < 1e-6 for m, v in zip(mems, vec, strict=True))
    s.close()
