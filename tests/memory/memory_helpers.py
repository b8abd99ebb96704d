"""What the memory tests share besides fixtures: the backends, a fresh store of one, and the hash
embedder. A module of its own (not ``conftest``): ``from conftest import …`` finds whichever
conftest.py pytest imported last, which differs between a full run and a chosen file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder  # tests/hash_embedder.py

BACKENDS = ["sqlite", "postgres"]


def new_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty store of ``backend``: a file path or a ``postgresql://`` URL."""
    if backend == "sqlite":
        return str(tmp_path / f"memory-{len(list(tmp_path.iterdir()))}.sqlite")
    pg_url: Callable[[], str] = request.getfixturevalue("pg_url")
    return pg_url()


__all__ = ["BACKENDS", "HashEmbedder", "new_location"]
