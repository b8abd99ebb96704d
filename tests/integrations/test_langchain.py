"""The LangChain adapters beyond the standard suites: the real model through a real service, ids,
metadata escaping, filters, and the same memories seen through ``hivemem.Memory``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

from hivemem import Memory
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME
from hivemem.integrations.langchain import (
    HivememEmbeddings,
    HivememVectorStore,
    LangChainEmbedder,
    translate_filter,
)

DOCS = [
    ("Alice is allergic to peanuts and carries an epipen.", {"topic": "health", "year": 2021, "id": 7}),
    ("Bob plays chess every Sunday at the community hall.", {"topic": "hobby", "year": 2019}),
    ("The quarterly sales report is due on Friday.", {"topic": "work", "year": 2024, "user_id": "x"}),
    ("Alice adopted a grey cat named Pixel.", {"topic": "pets", "year": 2023}),
]


@pytest.fixture
def emb(hm_service: dict) -> Iterator[HivememEmbeddings]:
    e = HivememEmbeddings(socket_path=hm_service["socket"])
    yield e
    e.close()


@pytest.fixture
def store(tmp_path: Path, emb: HivememEmbeddings) -> Iterator[HivememVectorStore]:
    s = HivememVectorStore(embedding=emb, path=str(tmp_path / "lc.sqlite"), user_id="alice")
    yield s
    s.close()


def test_service_vectors_equal_the_in_process_engine(emb: HivememEmbeddings, local_engine) -> None:
    texts = [t for t, _ in DOCS]
    got = np.asarray(emb.embed_documents(texts), dtype=np.float32)
    ref = local_engine.embed(texts)
    assert got.shape == (4, 384) and emb.model_id == local_engine.model_id
    assert ((got * ref).sum(1)).min() >= SAME
    assert float(np.asarray(emb.embed_query(texts[1])) @ ref[1]) >= SAME


async def test_async_embeddings_match(emb: HivememEmbeddings) -> None:
    a = await emb.aembed_documents(["chess on Sunday", "peanut allergy"])
    b = emb.embed_documents(["chess on Sunday", "peanut allergy"])
    assert np.allclose(a, b, atol=1e-6) and len(await emb.aembed_query("x")) == 384


def test_semantic_search_filters_and_metadata_round_trip(store: HivememVectorStore) -> None:
    ids = store.add_texts([t for t, _ in DOCS], metadatas=[m for _, m in DOCS])
    (doc, score), *_ = store.similarity_search_with_score("food allergy", k=4)
    assert doc.page_content == DOCS[0][0] and doc.id == ids[0]
    assert doc.metadata == DOCS[0][1]  # 'id' is a reserved name in hivemem: escaped and restored
    assert 0.3 < score <= 1.0
    assert store.get_by_ids([ids[2]])[0].metadata == {"topic": "work", "year": 2024, "user_id": "x"}
    # filters: hivemem's own language and the $-spelling, on escaped and plain keys
    assert [d.id for d in store.similarity_search("cats", k=4, filter={"year": {"gte": 2023}})] == [
        ids[3],
        ids[2],
    ]
    pets = store.similarity_search(
        "anything", k=4, filter={"$and": [{"year": {"$gte": 2020}}, {"topic": {"$in": ["pets", "health"]}}]}
    )
    assert sorted(d.id for d in pets) == sorted([ids[0], ids[3]])
    assert [d.id for d in store.similarity_search("x", k=4, filter={"id": 7})] == [ids[0]]
    assert [d.id for d in store.similarity_search("x", k=4, filter={"user_id": {"$exists": True}})] == [
        ids[2]
    ]
    assert len(store.similarity_search("x", k=4, filter={"user_id": {"$exists": False}})) == 3
    rel = store.similarity_search_with_relevance_scores("chess", k=2)
    assert rel[0][0].id == ids[1] and all(0.0 <= s <= 1.0 for _, s in rel)
    assert store.as_retriever(search_kwargs={"k": 1}).invoke("a pet cat")[0].id == ids[3]


def test_same_memories_through_hivemem_memory(tmp_path: Path, store: HivememVectorStore) -> None:
    (doc_id,) = store.add_texts(["Alice is allergic to peanuts."], metadatas=[{"id": 1, "lc_x": 2}])
    m = Memory(tmp_path / "lc.sqlite", embedder=store.memory.embedder)
    rec = m.search("peanuts", user_id="alice")["results"][0]
    assert rec["id"] == doc_id and rec["metadata"] == {"lc_id": 1, "lc_lc_x": 2}
    m.add("Alice lives in Lisbon.", user_id="alice")
    assert store.similarity_search("where does she live", k=1)[0].page_content == "Alice lives in Lisbon."
    m.close()


def test_same_text_twice_returns_the_stored_id(store: HivememVectorStore) -> None:
    a, b = store.add_texts(["Likes jazz.", "Likes jazz."])
    assert a == b and store.add_texts(["Likes jazz."]) == [a]
    assert store.add_texts(["Likes jazz."], ids=[a]) == [a]  # the same document again: a no-op
    assert store.memory.count() == 1


def test_upsert_by_id_updates_and_records_history(store: HivememVectorStore) -> None:
    store.add_texts(["Lives in Porto."], metadatas=[{"v": 1}], ids=["home"])
    assert store.add_texts(["Lives in Lisbon."], metadatas=[{"v": 2}], ids=["home"]) == ["home"]
    (doc,) = store.get_by_ids(["home"])
    assert doc == Document(id="home", page_content="Lives in Lisbon.", metadata={"v": 2})
    assert [h["event"] for h in store.memory.history("home")] == ["ADD", "UPDATE"]
    assert store.similarity_search("Lisbon", k=1)[0].id == "home"


def test_conflicting_ids_are_refused_and_nothing_is_written(
    tmp_path: Path, store: HivememVectorStore
) -> None:
    store.add_texts(["Plays the cello."], ids=["a"])
    with pytest.raises(ValueError, match="already stored in this scope as memory 'a'"):
        store.add_texts(["Reads novels.", "Plays the cello."], ids=["n", "b"])
    with pytest.raises(ValueError, match="already stored in this scope as memory 'n'"):
        store.add_texts(["Reads novels.", "Reads novels."], ids=["n", "m"])
    with pytest.raises(ValueError, match="unique within one call"):
        store.add_texts(["x", "y"], ids=["z", "z"])
    other = HivememVectorStore(store.memory, user_id="bob")
    with pytest.raises(ValueError, match="'a' is already taken"):
        other.add_texts(["Something else entirely."], ids=["a"])
    assert store.memory.count() == 1 and other.get_by_ids(["a"]) == []  # scopes do not leak
    other.delete(["a"])  # not in bob's scope: ignored
    assert store.get_by_ids(["a"])[0].page_content == "Plays the cello."


async def test_async_store_round_trip(store: HivememVectorStore) -> None:
    ids = await store.aadd_texts(["Drinks green tea.", "Runs marathons."], ids=["t", None])
    assert ids[0] == "t" and ids[1] != "t"
    assert (await store.asimilarity_search("tea", k=1))[0].id == "t"
    assert [d.id for d in await store.aget_by_ids(["t", "missing"])] == ["t"]
    await store.adelete(["t"])
    assert await store.aget_by_ids(["t"]) == []
    await store.adelete()  # None: everything in the scope
    assert store.memory.count() == 0


def test_langchain_embedder_normalises_and_checks_shapes() -> None:
    class Wrong(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[3.0, 4.0]] * (len(texts) + 1)

        def embed_query(self, text: str) -> list[float]:
            return [3.0, 4.0]

    e = LangChainEmbedder(DeterministicFakeEmbedding(size=6))
    vecs = e.embed(["a", "b"])
    assert vecs.shape == (2, 6) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    assert e.embed([]).shape == (0, 6) and e.model_id.endswith("DeterministicFakeEmbedding/6")
    assert np.allclose(e.embed_one("a"), vecs[0])
    with pytest.raises(ValueError, match=r"returned shape \(3, 2\), expected \(2, 2\)"):
        LangChainEmbedder(Wrong()).embed(["a", "b"])
    with pytest.raises(TypeError, match="LangChain Embeddings"):
        LangChainEmbedder("not embeddings")  # type: ignore[arg-type]


def test_translate_filter() -> None:
    assert translate_filter({"$or": [{"id": {"$eq": 1}}, {"tag": "a"}], "year": {"$lt": 3}}) == {
        "OR": [{"lc_id": {"eq": 1}}, {"tag": "a"}],
        "year": {"lt": 3},
    }
    with pytest.raises(TypeError, match="needs a list"):
        translate_filter({"$and": 3})
