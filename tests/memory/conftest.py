"""Shared fixtures: one hivemem home (with the prepared model) and one real embedder per session."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from hivemem import Embedder, Memory


@pytest.fixture(scope="session")
def hm_home(hivemem_home: Path) -> Iterator[Path]:
    """The session's private home (tests/conftest.py), with no service socket configured."""
    patch = pytest.MonkeyPatch()
    patch.delenv("HIVEMEM_SOCKET", raising=False)
    yield hivemem_home
    patch.undo()


@pytest.fixture(scope="session")
def embedder(hm_home: Path) -> Iterator[Embedder]:
    emb = Embedder()
    yield emb
    emb.close()


@pytest.fixture
def mem(tmp_path: Path, embedder: Embedder) -> Iterator[Memory]:
    m = Memory(tmp_path / "memory.sqlite", embedder=embedder)
    yield m
    m.close()


class HashEmbedder:
    """NOT a model: unit vectors derived from a hash of the text. For tests of filters and
    storage logic, where semantic quality is irrelevant and the real model would only add time."""

    model_id = "test/hash-embedder"
    dim = 16

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


@pytest.fixture(scope="session")
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
