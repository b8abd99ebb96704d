"""The keyword tables merge their FTS5 segments eagerly (``fts.AUTOMERGE``): fewer segments for a
search to look each word up in, the same rows and so the same results. Storage only: the
HashEmbedder (NOT a model) gives the vectors; what is measured is the keyword index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder

from hivemem import Memory
from hivemem.embed.corpus import sentences
from hivemem.memory.storage import fts

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _automerge(path: Path, table: str) -> int | None:
    with sqlite3.connect(path) as db:
        row = db.execute(f"SELECT v FROM {table}_config WHERE k = 'automerge'").fetchone()
    return None if row is None else int(row[0])


def _segments(memory: Memory) -> int:
    db = memory._storage._db()  # type: ignore[attr-defined]
    return int(db.execute("SELECT count(DISTINCT segid) FROM memories_fts_idx").fetchone()[0])


def _fill(memory: Memory, texts: list[str]) -> None:
    """One small commit at a time, as a store that serves adds grows (a segment each)."""
    for i in range(0, len(texts), 5):
        memory.add_batch(
            [{"messages": t, "user_id": f"u{j % 3}"} for j, t in enumerate(texts[i : i + 5])], infer=False
        )


def test_new_and_older_stores_merge_eagerly(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    Memory(path, embedder=HashEmbedder(), keyword_context=True).close()
    assert _automerge(path, "memories_fts") == _automerge(path, "memories_ctx") == fts.AUTOMERGE == 2
    with sqlite3.connect(path) as db:  # as FTS5's default left a store made before
        db.execute("INSERT INTO memories_fts (memories_fts, rank) VALUES ('automerge', 4)")
        db.execute("INSERT INTO memories_ctx (memories_ctx, rank) VALUES ('automerge', 4)")
    assert _automerge(path, "memories_fts") == 4
    Memory(path, embedder=HashEmbedder()).close()  # opened again: set (the context table too)
    assert _automerge(path, "memories_fts") == _automerge(path, "memories_ctx") == 2


def _results(memory: Memory, mode: str) -> list[list[tuple[str, float]]]:
    return [
        [(h["memory"], h["score"]) for h in memory.search(q, user_id="u1", mode=mode, top_k=10)["results"]]
        for q in sentences(30, seed=5)
    ]


def test_fewer_segments_and_the_same_keyword_results(tmp_path: Path) -> None:
    texts = sentences(600, seed=4)
    eager = Memory(tmp_path / "eager.sqlite", embedder=HashEmbedder())
    lazy = Memory(tmp_path / "lazy.sqlite", embedder=HashEmbedder())
    lazy._storage._db().execute(  # type: ignore[attr-defined]
        "INSERT INTO memories_fts (memories_fts, rank) VALUES ('automerge', 4)"
    )  # FTS5's default, as before
    _fill(eager, texts)
    _fill(lazy, texts)
    assert _segments(eager) < _segments(lazy)
    got = _results(eager, "keyword")
    assert got == _results(lazy, "keyword") and all(got)
    eager.close()
    lazy.close()


def test_merging_segments_changes_no_result(tmp_path: Path) -> None:
    """The same store before and after FTS5 merges all its segments into one: bit-identical
    results, scores included (hybrid: the other side is untouched)."""
    memory = Memory(tmp_path / "m.sqlite", embedder=HashEmbedder())
    _fill(memory, sentences(600, seed=4))
    assert _segments(memory) > 1
    before = {mode: _results(memory, mode) for mode in ("keyword", "hybrid")}
    memory._storage._db().execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")  # type: ignore[attr-defined]
    assert _segments(memory) == 1
    assert {mode: _results(memory, mode) for mode in ("keyword", "hybrid")} == before
    memory.close()
