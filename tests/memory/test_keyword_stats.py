"""The keyword side's BM25 statistics (``N``, ``df``) on both backends, against a by-hand BM25
(``fts.py``'s module docstring): a memory scores the sum of ``ln(1 + (N - df + 0.5) / (df + 0.5))``
over the query words it holds, ``df`` the rows of the scope holding the word, ``N`` the rows of
the scope, or for a search with no user/agent/run (the whole store) the highest row id present.

Storage, not ranking quality: the hash embedder (NOT a model; ``tests/hash_embedder.py``), in the
fast set. The regression: SQLite took the whole store's ``N`` from the AUTOINCREMENT high-water
mark (ids ever given: a duplicate refused inside a batch and a deleted newest row count), the
PostgreSQL backend from ``max(rid)``, so after such writes an unscoped search scored differently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from memory_helpers import TALK

from hivemem import Memory
from hivemem.memory.hybrid import query_terms
from hivemem.memory.storage import datewords

pytestmark = pytest.mark.fast

# each query word has one form in the texts below, so a row holds it iff a token of it is the word
# (both stemmers map those forms alike: no stemming needed by hand)
SEARCHES: list[dict[str, str]] = [
    {"query": "what happened at the lake on 3 May, 2023?"},
    {"query": "lake 2023 rained"},
    {"query": "Melanie swam 4 May", "user_id": "u"},
    {"query": "pottery class 2023 lake", "user_id": "u", "run_id": "r1"},
    {"query": "weekend March 2023", "user_id": "u", "run_id": "r2"},
]


class Model:
    """The store by hand: each row's id, scope, text and date; row ids given in order, one per
    memory of a batch that was not stored before it (a duplicate inside the batch takes one and
    is refused: ``ON CONFLICT DO NOTHING`` on both backends)."""

    def __init__(self, dates: bool) -> None:
        self.dates = dates
        self.rows: dict[int, tuple[str, str, str, str]] = {}  # rid → (user, run, text, created_at)
        self.rid_of: dict[str, int] = {}  # memory id → rid
        self.given = 0

    def added(self, items: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        stored = {(u, r, t) for u, r, t, _ in self.rows.values()}
        for item, result in zip(items, results, strict=True):
            key = (item["user_id"], item["run_id"], item["messages"])
            if key in stored:
                continue
            self.given += 1
            if result["event"] == "ADD":
                self.rows[self.given] = (*key, item["timestamp"])
                self.rid_of[result["id"]] = self.given
            else:  # the batch's duplicate: refused, its id spent
                assert result["event"] == "NONE"

    def scores(self, query: str, user: str | None, run: str | None) -> list[tuple[str, float]]:
        """The by-hand BM25 of the rows holding a query word, best first, ties to the older row."""
        scope = {
            rid: row
            for rid, row in self.rows.items()
            if (user is None or row[0] == user) and (run is None or row[1] == run)
        }
        n = len(scope) if user is not None else max(self.rows, default=0)
        words = {}
        for rid, (_, _, text, created) in scope.items():
            body = text + (" " + datewords.date_words(created) if self.dates else "")
            words[rid] = set(re.findall(r"[a-z0-9]+", body.lower()))
        score: dict[int, float] = {}
        for term in query_terms(query):
            holding = [rid for rid in scope if term in words[rid]]
            df = len(holding)
            for rid in holding:
                score[rid] = score.get(rid, 0.0) + math.log(1 + (n - df + 0.5) / (df + 0.5))
        order = sorted(score, key=lambda rid: (-score[rid], rid))
        return [(self.rows[rid][2], score[rid]) for rid in order]


def batch(step: int) -> list[dict[str, Any]]:
    """A write batch: new rows of three scopes with dates the queries name, and a duplicate."""
    day = f"2023-05-0{3 + step % 3}"
    rows = [
        ("u", "r1", f"Melanie swam {step} at the lake", day),
        ("u", "r1", f"Melanie swam {step} at the lake", "2023-04-10"),  # the batch's duplicate
        ("v", "r1", f"It rained {step} at the lake", "2023-03-03"),
        ("u", "r2", f"A weekend {step} of pottery class", day),
        ("w", "r9", f"Nothing {step} in common", "2022-05-03"),
    ]
    return [{"messages": t, "user_id": u, "run_id": r, "timestamp": d} for u, r, t, d in rows]


@pytest.mark.parametrize("limits", ["default", "small"])
@pytest.mark.parametrize("dates", [False, True])
def test_unscoped_and_scoped_keyword_scores_are_the_by_hand_bm25_on_both_backends(
    tmp_path: Path, pg_url: Callable[[], str], monkeypatch: pytest.MonkeyPatch, dates: bool, limits: str
) -> None:
    """Write batches (with a duplicate refused inside a batch, the newest row deleted, a row
    rewritten) and searches interleaved, the same on SQLite and PostgreSQL: every search, scoped
    or of the whole store, naming date words and text words, gives on both the memories and
    scores of the by-hand BM25 (to 1e-9). Also from fresh handles at the end (no counts kept).
    With ``small`` limits every scope is "large" (the store's statistics, the rarest words kept,
    counts kept per process, PostgreSQL's row lists): both backends equal to 1e-9, the by-hand
    model (which keeps every word) left out."""
    from hivemem.memory.storage import fts, pgkeyword

    if limits == "small":
        for module in (fts, pgkeyword):
            monkeypatch.setattr(module, "RANK_BUDGET", 8)
            monkeypatch.setattr(module, "SCOPE_ROWS_MAX", 4)
    places = [str(tmp_path / "m.sqlite"), pg_url()]
    stores = [Memory(p, embedder=HashEmbedder(), keyword_dates=dates) for p in places]
    model = Model(dates)
    talk = [
        {"messages": t, "user_id": u, "run_id": r, "timestamp": f"2023-{1 + i % 12:02d}-{1 + i:02d}"}
        for i, (u, r, t) in enumerate(TALK)
    ]

    hits_seen: list[int] = []

    def check(memories: list[Memory], when: str) -> None:
        for args in SEARCHES:
            want = model.scores(args["query"], args.get("user_id"), args.get("run_id"))
            assert want, (args, when)
            found = []
            for m in memories:
                hits = m.search(**args, mode="keyword", top_k=100)["results"]
                found.append([(h["memory"], h["score"]) for h in hits])
            if limits == "small":  # the rarest words only (none may fit): the backends against each other
                want = found[1]
                hits_seen.append(len(want))
            for got in found:
                assert [g[0] for g in got] == [w[0] for w in want], (args, when)
                assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-9), (args, when)

    try:
        for m in stores:
            model_results = m.add_batch(talk)["results"]
        model.added(talk, model_results)
        for step in range(4):
            check(stores, f"step {step}")
            items = batch(step)
            ids = []
            for m in stores:
                results = m.add_batch(items)["results"]
                ids.append([r["id"] for r in results])
            model.added(items, results)
            if step % 2 == 0:  # the newest row goes: the highest row id present drops below the given
                newest = max(model.rid_of, key=model.rid_of.__getitem__)
                at = ids[1].index(newest)
                for m, mine in zip(stores, ids, strict=True):
                    m.delete(mine[at])
                del model.rows[model.rid_of.pop(newest)]
            else:  # a row rewritten in place: its words change, its row id stays
                text = f"Caroline rained {step} on the pottery class"
                for m, mine in zip(stores, ids, strict=True):
                    m.update(mine[3], text)
                rid = model.rid_of[ids[1][3]]
                model.rows[rid] = (*model.rows[rid][:2], text, model.rows[rid][3])
        check(stores, "after the writes")
        assert limits == "default" or sum(hits_seen) > 50, hits_seen
        fresh = [Memory(p, embedder=HashEmbedder()) for p in places]
        try:
            check(fresh, "fresh handles")
        finally:
            for m in fresh:
                m.close()
    finally:
        for m in stores:
            m.close()
