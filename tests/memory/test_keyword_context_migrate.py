"""Keyword context (issue 23): an old store's windows brought to the current layout while other
processes use it (``ftscontext.py``, ``pgcontext.py``; docs/memory.md, docs/postgres.md). Storage
only: the hash embedder (NOT a model; ``tests/hash_embedder.py``), in the fast set.

PostgreSQL: a reader is never blocked by the migration, and reads the old windows until it
commits (in place, not a dropped table).
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from hash_embedder import HashEmbedder

from hivemem import Memory
from hivemem.memory.storage import pgcontext
from hivemem.memory.storage.postgres import PostgresStorage

pytestmark = pytest.mark.fast


def keyword(m: Memory, query: str, **scope: str) -> list[str]:
    return [h["memory"] for h in m.search(query, mode="keyword", **scope)["results"]]


def test_postgres_readers_search_the_old_windows_while_the_migration_runs(
    pg_dsn: str, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, a store whose windows are of the old version (backward, ``VERSION`` 4: made by
    this code with ``CONTEXT_AFTER`` 0): while another connection's migration (``install``) is
    held open, uncommitted, it holds no lock that stops a reader; a process open all along
    searches, unblocked, and gets the old windows' results, also in a snapshot that stays open
    across the commit; after it, the new ones. The reader's connections give up on a lock after
    ``lock_timeout`` (a guard, so that the old code's drop-and-recreate, which held every reader
    off until the commit, fails here instead of hanging)."""
    location = pg_url()
    monkeypatch.setattr(pgcontext, "CONTEXT_AFTER", 0)
    monkeypatch.setattr(pgcontext, "VERSION", f"4 2 {pgcontext.WORDS_VERSION}")
    reader = Memory(f"{location}&options=-clock_timeout%3D20s", embedder=HashEmbedder(), keyword_context=True)
    reader.add_batch([{"messages": f"turn {i} w{i}", "user_id": f"u{i % 2}"} for i in range(30)])
    monkeypatch.undo()
    before = keyword(reader, "w5", user_id="u1")
    assert before == ["turn 5 w5", "turn 7 w7", "turn 9 w9"]  # backward windows: w5 in 7's and 9's
    storage = reader._storage
    assert isinstance(storage, PostgresStorage)
    ns = f'"{storage.schema}"'
    with psycopg.connect(pg_dsn, autocommit=True) as migration:
        migration.execute("BEGIN")
        pgcontext.install(migration, ns, storage.schema)  # not committed yet
        held = migration.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
            " WHERE l.pid = pg_backend_pid() AND c.relname IN ('memories', 'memories_ctx')"
        ).fetchall()
        assert held and all(mode != "AccessExclusiveLock" for _, mode in held), held
        assert keyword(reader, "w5", user_id="u1") == before
        with storage.snapshot():
            assert keyword(reader, "w5", user_id="u1") == before
            migration.execute("COMMIT")
            assert keyword(reader, "w5", user_id="u1") == before  # the snapshot's: the old windows
    after = keyword(reader, "w5", user_id="u1")
    assert after[:3] == ["turn 5 w5", "turn 1 w1", "turn 3 w3"]  # ± 2: w5 in 1's and 3's too
    with Memory(location, embedder=HashEmbedder(), keyword_context=True) as m:
        assert keyword(m, "w5", user_id="u1") == after
        with storage._pool.connection() as conn:
            assert pgcontext.ready(conn, ns)
    reader.close()
