"""``fts.rank``, the keyword ranking both backends share, against its definition (issue 23's cost
work): it asks the filter about the best rows only, yet must give exactly what checking every
scored row first gives. Pure numpy on random inputs: no store, no model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hivemem.memory.storage import fts

pytestmark = pytest.mark.fast


def definition(
    body: tuple[np.ndarray, np.ndarray],
    ctx: tuple[np.ndarray, np.ndarray] | None,
    share: float,
    k: int,
    ok: set[int] | None,
) -> tuple[list[tuple[int, float]], dict[int, tuple[float, float]]]:
    """The ranking as docs/memory.md defines it, the plain way: drop the rows that fail the filter
    (``ok``; None: none fails), divide each part by its best among the rest, sort every row."""
    rids, score = body
    parts: dict[int, tuple[float, float]] = {}
    if ctx is not None and share > 0:
        both = np.union1d(rids, ctx[0])
        b, c = np.zeros(len(both)), np.zeros(len(both))
        b[np.searchsorted(both, rids)] = score
        c[np.searchsorted(both, ctx[0])] = ctx[1]
        if ok is not None:
            keep = np.isin(both, np.fromiter(ok, np.int64, len(ok)))
            both, b, c = both[keep], b[keep], c[keep]
        rids = both
        score = b / (b.max(initial=0) or 1) + share * c / (c.max(initial=0) or 1)
        parts = {int(r): (float(x), float(y)) for r, x, y in zip(both, b, c, strict=True)}
    elif ok is not None:
        keep = np.isin(rids, np.fromiter(ok, np.int64, len(ok)))
        rids, score = rids[keep], score[keep]
    order = np.lexsort((rids, -score))
    best = list(zip(rids[order][:k].tolist(), score[order][:k].tolist(), strict=True))
    return best, {r: parts[r] for r, _ in best} if parts else {}


def scored(rng: np.random.Generator, rows: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` distinct rids below ``span``, ascending, with few distinct scores (many ties)."""
    rids = np.sort(rng.choice(span, size=min(rows, span), replace=False)).astype(np.int64)
    return rids, rng.integers(1, 6, len(rids)) * 0.7


@pytest.mark.parametrize("seed", range(40))
def test_rank_equals_its_definition(seed: int) -> None:
    """Random bodies and windows (ties everywhere), filters that keep all, most, few or none of
    the rows, with and without the window: the same hits, in the same order, with the same
    scores and parts, to the last bit."""
    rng, pick = np.random.default_rng(seed), random.Random(seed)
    span = pick.choice([50, 500, 5000])
    body = scored(rng, pick.randrange(0, span), span)
    ctx = scored(rng, pick.randrange(0, span), span)
    everything = np.union1d(body[0], ctx[0]).tolist()
    for keep in (1.0, 0.9, 0.2, 0.01, 0.0):
        ok = {r for r in everything if pick.random() < keep}
        for share, window in ((0.0, None), (0.5, ctx), (0.5, (np.zeros(0, np.int64), np.zeros(0)))):
            for k in (1, 10, 50):
                for filt in (None, ok):
                    asked: list[int] = []

                    def passing(
                        part: list[int], filt: set[int] | None = filt, asked: list[int] = asked
                    ) -> set[int]:
                        asked.extend(part)
                        return {r for r in part if filt is None or r in filt}

                    got = fts.rank(body, window, share, k, None if filt is None else passing)
                    assert got == definition(body, window, share, k, filt)
                    assert len(asked) == len(set(asked)), "a row was checked twice"


def test_the_filter_is_asked_about_the_best_rows_only() -> None:
    """With the window, the bests a score is divided by are those of the rows that pass; they were
    found by checking every scored row (about 20,000 at 100,000 memories in one scope, most of a
    keyword search's time: docs/memory.md#the-keyword-contexts-cost-2026-12-06). When the best
    rows pass, only a few are checked, in one statement. Fails on the old code (every row checked)."""
    rng = np.random.default_rng(7)
    body, ctx = scored(rng, 5_000, 100_000), scored(rng, 15_000, 100_000)
    asked: list[list[int]] = []

    def passing(part: list[int]) -> set[int]:
        asked.append(part)
        return set(part)

    hits, _ = fts.rank(body, ctx, 0.5, 10, passing)
    assert len(hits) == 10
    assert len(asked) == 1  # one statement
    assert len(asked[0]) <= 40 + 2 * 64, len(asked[0])  # the best 4 × k, and the best 64 of each part
