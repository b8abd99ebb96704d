"""Shared fixtures: one hivemem home (with the prepared model), one real embedder per session, and
the storage backends: tests that take ``location`` (or ``mem``) run once on a SQLite file and once
on a PostgreSQL schema of the session's server (``pg_url`` in tests/conftest.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
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


BACKENDS = ["sqlite", "postgres"]


def new_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty store of ``backend``: a file path or a ``postgresql://`` URL."""
    if backend == "sqlite":
        return str(tmp_path / f"memory-{len(list(tmp_path.iterdir()))}.sqlite")
    pg_url: Callable[[], str] = request.getfixturevalue("pg_url")
    return pg_url()


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on each backend in turn."""
    return new_location(request.param, tmp_path, request)


@pytest.fixture
def mem(location: str, embedder: Embedder) -> Iterator[Memory]:
    m = Memory(location, embedder=embedder)
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
