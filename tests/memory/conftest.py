"""Shared fixtures: one hivemem home (with the prepared model), one real embedder per session, and
the storage backends: tests that take ``location`` (or ``mem``) run once on a SQLite file and once
on a PostgreSQL schema of the session's server (``pg_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from memory_helpers import BACKENDS, HashEmbedder, new_location

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


@pytest.fixture(params=BACKENDS)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store on each backend in turn."""
    return new_location(request.param, tmp_path, request)


@pytest.fixture
def mem(location: str, embedder: Embedder) -> Iterator[Memory]:
    m = Memory(location, embedder=embedder)
    yield m
    m.close()


@pytest.fixture(scope="session")
def hash_embedder() -> HashEmbedder:
    return HashEmbedder()
