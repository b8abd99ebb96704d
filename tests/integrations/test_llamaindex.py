"""The LlamaIndex adapter end to end: LlamaIndex's own in-memory ``VectorStoreIndex`` and retriever
(no LLM involved) on the real model, served by a real hivemem service process."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode

from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME
from hivemem.integrations.llamaindex import HivememEmbedding

NOTES = [
    "Alice is allergic to peanuts and carries an epipen.",
    "Bob plays chess every Sunday at the community hall.",
    "The quarterly sales report is due on Friday.",
    "Alice adopted a grey cat named Pixel.",
    "The office printer on the third floor is out of toner.",
]


@pytest.fixture
def embed_model(hm_service: dict) -> HivememEmbedding:
    model = HivememEmbedding(socket_path=hm_service["socket"])
    yield model
    model.close()


def test_vector_store_index_retrieves_by_meaning(embed_model: HivememEmbedding, local_engine) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(NOTES)]
    index = VectorStoreIndex(nodes, embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=2)
    for query, want in [("food allergy", "n0"), ("board games on weekends", "n1"), ("pets", "n3")]:
        hits = retriever.retrieve(query)
        assert hits[0].node.node_id == want and hits[0].score > hits[1].score
    # the vectors LlamaIndex stored are hivemem's own
    stored = np.array([index.vector_store.get(f"n{i}") for i in range(len(NOTES))], dtype=np.float32)
    assert (stored * local_engine.embed(NOTES)).sum(1).min() >= SAME


async def test_async_retrieval(embed_model: HivememEmbedding) -> None:
    index = VectorStoreIndex(
        [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(NOTES)], embed_model=embed_model
    )
    hits = await index.as_retriever(similarity_top_k=1).aretrieve("who needs printer toner")
    assert hits[0].node.node_id == "n4"
    assert np.allclose(
        await embed_model.aget_query_embedding("x"), embed_model.get_query_embedding("x"), atol=1e-6
    )


def test_construction_is_lazy_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVEMEM_SOCKET", "/tmp/hm-llama-env.sock")
    assert HivememEmbedding().socket_path == "/tmp/hm-llama-env.sock"  # nothing connects yet
    assert HivememEmbedding(local=True).socket_path is None
    with pytest.raises(ValueError, match="not several"):
        HivememEmbedding(local=True, socket_path="/x")
    with pytest.raises(TypeError, match="EmbedderLike"):
        HivememEmbedding(embedder=object())
