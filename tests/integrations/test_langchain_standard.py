"""LangChain's own standard test suites (PyPI ``langchain-tests``) against the hivemem adapters.

Embeddings: the real model through a real service process (and the unit suite's construction
checks). Vector store: ``hivemem.Memory`` in a fresh SQLite file per test, embedding with the
suite's own deterministic fake embeddings through ``LangChainEmbedder`` (the suite prescribes them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests, VectorStoreIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from hivemem.integrations.langchain import HivememEmbeddings, HivememVectorStore


class TestHivememEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return HivememEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"local": True}  # the model loads on first use, not here

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"HIVEMEM_SOCKET": "/tmp/hm-env-test.sock"}, {}, {"socket_path": "/tmp/hm-env-test.sock"}


class TestHivememEmbeddingsService(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return HivememEmbeddings

    @pytest.fixture
    def model(self, hm_service: dict) -> Iterator[Embeddings]:
        emb = HivememEmbeddings(socket_path=hm_service["socket"])
        yield emb
        emb.close()


class TestHivememVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:
        store = HivememVectorStore(embedding=self.get_embeddings(), path=str(tmp_path / "lc.sqlite"))
        try:
            yield store
        finally:
            store.close()
