"""The vector side with expired-but-unpurged memories (issue 23 item 3): exact, and as fast as with
nothing expired, on both backends' int8 paths.

The embedder is ``HashEmbedder``, NOT a model: these tests measure storage (which rows a vector
search returns, and how PostgreSQL reads them); a text's vector is a pure function of the text,
so the exact top-k is computed here by brute force over the same vectors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import pytest
from memory_helpers import HashEmbedder

from hivemem import Memory
from hivemem.memory import store as store_module
from hivemem.memory.storage import postgres, vectorindex

pytestmark = pytest.mark.fast  # no model or torch; PostgreSQL only where `location` is postgres

ROWS = 600
SOON = datetime(2030, 1, 1, tzinfo=UTC)  # when the second group expires


class _Clock(datetime):
    """``datetime`` whose ``now`` is ``_Clock.at``: ``Memory`` reads the time through it."""

    at = datetime(2029, 12, 31, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return cls.at


def _small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few hundred rows take the int8 path on both backends (as 5,000+ would)."""
    monkeypatch.setattr(postgres, "INDEX_MIN", 100)
    monkeypatch.setattr(vectorindex, "SMALL_SUBSET", 50)
    monkeypatch.setattr(store_module, "datetime", _Clock)


def test_vector_search_leaves_out_what_expired_by_then(
    location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vector side's top-k equals a brute-force top-k over the memories not expired at the
    store's clock: some expired long ago, some expire between two searches (the clock moves past
    ``SOON``), one expiry is set and one cleared between searches."""
    _small_thresholds(monkeypatch)
    monkeypatch.setattr(_Clock, "at", datetime(2029, 12, 31, tzinfo=UTC))
    emb = HashEmbedder()
    texts = [f"note {i} about the harbour" for i in range(ROWS)]
    expiry = [None if i % 5 else "2000-01-01" for i in range(ROWS)]  # every 5th: long expired
    for i in range(1, ROWS, 3):  # every 3rd of the rest expires at SOON
        expiry[i] = expiry[i] or SOON.isoformat()
    vectors = emb.embed(texts)
    queries = [f"question {j}" for j in range(12)]
    with Memory(location, embedder=emb) as m:
        ids = [
            str(r["id"])
            for r in m.add_batch(
                [
                    {"messages": t, "user_id": "u", "expiration_date": e}
                    for t, e in zip(texts, expiry, strict=True)
                ]
            )["results"]
        ]

        def check(expired: set[int]) -> None:
            for q in queries:
                scores = vectors @ emb.embed_one(q)
                scores[sorted(expired)] = -np.inf
                want = [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
                got = m.search(q, user_id="u", top_k=10, mode="vector")["results"]
                assert [r["id"] for r in got] == want, q

        gone = {i for i, e in enumerate(expiry) if e == "2000-01-01"}
        check(gone)
        check(gone)  # the second time from the copy as it was
        monkeypatch.setattr(_Clock, "at", datetime(2030, 1, 2, tzinfo=UTC))  # time passes SOON
        gone |= {i for i, e in enumerate(expiry) if e == SOON.isoformat()}
        check(gone)
        best = int(
            np.argmax(
                np.where([i in gone for i in range(ROWS)], -np.inf, vectors @ emb.embed_one(queries[0]))
            )
        )
        m.update(ids[best], expiration_date="2001-01-01")  # an expiry set between two searches
        back = min(gone)
        m.update(ids[back], expiration_date=None)  # and one cleared
        check((gone | {best}) - {back})


def test_postgres_rescore_fetches_candidates_by_rid(pg_url: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement that re-scores the int8 copy's candidates reads ``memories`` only through
    its primary key, whatever the filter: with the "not expired" test in the filter, the planner
    of a table not yet analysed read every row the filter's indexes matched and hash-joined the
    candidates to them (16 ms per statement at 30k memories instead of 1.4, pg_rescore.py)."""
    _small_thresholds(monkeypatch)
    monkeypatch.setattr(_Clock, "at", datetime(2029, 12, 31, tzinfo=UTC))
    seen: list[tuple[str, Any]] = []
    execute = psycopg.Connection.execute

    def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        if isinstance(query, str) and "bigint[]" in query:
            seen.append((query, params))
        return execute(self, query, params, **kw)

    emb = HashEmbedder()
    with Memory(pg_url(), embedder=emb) as m:
        m.add_batch(
            [
                {
                    "messages": f"note {i}",
                    "user_id": "u",
                    "expiration_date": "2000-01-01" if i % 50 == 0 else None,
                }
                for i in range(ROWS)
            ]
        )
        monkeypatch.setattr(psycopg.Connection, "execute", spy)
        assert m.search("note 7", user_id="u", top_k=10, mode="vector")["results"]
        monkeypatch.setattr(psycopg.Connection, "execute", execute)
        assert seen, "the int8 copy was not used"
        storage = m._storage
        with storage._read() as conn:  # type: ignore[attr-defined]
            for sql, params in seen:
                assert "expires_at" in sql  # the filter held the expiry test
                plan = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()[0]
                reads = list(_reads(plan[0]["Plan"]))
                assert reads and all(r == ("Index Scan", "memories_pkey") for r in reads), reads


def _reads(node: dict[str, Any]) -> Any:
    """``(node type, index name)`` of each plan node that reads the ``memories`` table."""
    if node.get("Relation Name") == "memories" or str(node.get("Index Name", "")).startswith("memories"):
        yield node["Node Type"], node.get("Index Name")
    for child in node.get("Plans", []):
        yield from _reads(child)
