"""What the memory tests share besides fixtures: the backends, a fresh store of one, and the hash
embedder. A module of its own (not ``conftest``): ``from conftest import …`` finds whichever
conftest.py pytest imported last, which differs between a full run and a chosen file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

BACKENDS = ["sqlite", "postgres"]


def new_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty store of ``backend``: a file path or a ``postgresql://`` URL."""
    if backend == "sqlite":
        return str(tmp_path / f"memory-{len(list(tmp_path.iterdir()))}.sqlite")
    pg_url: Callable[[], str] = request.getfixturevalue("pg_url")
    return pg_url()


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
