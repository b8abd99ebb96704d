"""LlamaIndex adapter (``pip install 'hivemem[llamaindex]'``): hivemem's model as a ``BaseEmbedding``.

By default it embeds through the machine's shared service (``hivemem.connect()``), so every
LlamaIndex process on the machine shares one model, one queue and one cache; ``local=True`` loads
an in-process ``hivemem.Embedder``; ``embedder=`` takes any ``hivemem.EmbedderLike``.

    >>> from llama_index.core import VectorStoreIndex
    >>> from llama_index.core.schema import TextNode
    >>> index = VectorStoreIndex([TextNode(text="Alice is allergic to peanuts.")],
    ...                          embed_model=HivememEmbedding(local=True))  # without local: the service
    >>> index.as_retriever(similarity_top_k=1).retrieve("food allergies")[0].text
    'Alice is allergic to peanuts.'

``embed_batch_size`` defaults to 256 (LlamaIndex's default is 10): hivemem batches across callers
itself, and larger calls let its engine sort texts by length and pad less.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

import hivemem


class HivememEmbedding(BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` on hivemem's model (see the module docstring)."""

    model_name: str = Field(default="all-MiniLM-L6-v2", description="The model hivemem serves.")
    embed_batch_size: int = Field(default=256, gt=0, description="Texts per call to hivemem.")
    local: bool = Field(default=False, description="Embed in this process instead of the service.")
    socket_path: str | None = Field(default=None, description="The service socket (default: hivemem's).")
    _embedder: Any = PrivateAttr(default=None)
    _owned: bool = PrivateAttr(default=True)

    def __init__(
        self, embedder: Any = None, *, local: bool = False, socket_path: str | None = None, **kwargs: Any
    ) -> None:
        if sum((embedder is not None, local, socket_path is not None)) > 1:
            raise ValueError("pass either embedder=, or local=True, or socket_path=, not several")
        if embedder is not None and not isinstance(embedder, hivemem.EmbedderLike):
            raise TypeError(f"embedder must be a hivemem.EmbedderLike, got {type(embedder).__name__}")
        socket_path = socket_path or (None if local else hivemem.Settings.from_env().socket)
        super().__init__(local=local, socket_path=socket_path, **kwargs)
        self._embedder = embedder
        self._owned = embedder is None

    @classmethod
    def class_name(cls) -> str:
        return "HivememEmbedding"

    @property
    def embedder(self) -> hivemem.EmbedderLike:
        """The ``hivemem.EmbedderLike`` behind this object (connects on first use)."""
        if self._embedder is None:
            self._embedder = hivemem.Embedder() if self.local else hivemem.connect(self.socket_path)
        embedder: hivemem.EmbedderLike = self._embedder
        return embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return _as_row(self.embedder.embed_one(query))

    def _get_text_embedding(self, text: str) -> list[float]:
        return _as_row(self.embedder.embed_one(text))

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return _as_rows(self.embedder.embed(texts))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return _as_row((await self.embedder.aembed([query]))[0])

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return _as_row((await self.embedder.aembed([text]))[0])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return _as_rows(await self.embedder.aembed(texts))

    def close(self) -> None:
        """Release the embedder if this object created it."""
        if self._owned and self._embedder is not None:
            self._embedder.close()
            self._embedder = None


def _as_row(vector: np.ndarray) -> list[float]:
    """A vector as the float list the framework takes (numpy's ``tolist`` is typed ``Any``)."""
    row: list[float] = vector.tolist()
    return row


def _as_rows(matrix: np.ndarray) -> list[list[float]]:
    rows: list[list[float]] = matrix.tolist()
    return rows
