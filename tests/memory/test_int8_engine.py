"""The int8 engine both vector indexes rank with (``storage/int8.py``), against plain numpy:
scores, the choice of the best (masked rows never chosen), the widening of candidates, and
PostgreSQL's in-process copy ranking through it. Random vectors (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from hivemem.memory.storage import int8, pgindex

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _rows(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_scores_are_the_int8_inner_products_times_the_scales() -> None:
    vectors, query = _rows(500), _rows(1, seed=1)[0]
    codes, scales = int8.quantise(vectors)
    q8 = int8.quantise_query(query)
    want = (codes.astype(np.int64) @ q8.astype(np.int64)).astype(np.float32) * scales
    assert np.allclose(int8.scores(q8, codes, scales), want, rtol=1e-6)
    out = np.empty((1, 500), dtype=np.float32)
    assert np.allclose(int8.scores(q8, codes, scales, out), want, rtol=1e-6)
    assert not int8.quantise_query(np.zeros(32, dtype=np.float32)).any()  # a zero query: codes 0


def test_best_is_best_first_and_never_a_masked_row() -> None:
    approx = np.array([0.5, 0.9, -np.inf, 0.7, 0.1, -np.inf], dtype=np.float32)
    assert int8.best(approx.copy(), 2).tolist() == [1, 3]
    assert int8.best(approx.copy(), 10).tolist() == [1, 3, 0, 4]  # more than live: every live row
    assert int8.best(approx.copy(), 0).tolist() == []
    assert int8.best(np.array([0.2, 0.3], dtype=np.float32), 5, masked=False).tolist() == [1, 0]


def test_widening_ends_with_every_live_row() -> None:
    assert list(int8.widening(320, 5000, 4)) == [320, 1280, 5000]
    assert list(int8.widening(320, 100, 4)) == [100]
    assert list(int8.widening(256, 256 * 64, 8)) == [256, 2048, 16384]
    assert int8.rescore_count(10) == int8.RESCORE and int8.rescore_count(100) == 400
    assert int8.rescore_count(10, 64) == 64


def test_the_postgresql_copy_ranks_with_the_engine() -> None:
    vectors, query = _rows(2000), _rows(1, seed=2)[0]
    codes, scales = int8.quantise(vectors)
    alive = np.ones(2000, dtype=bool)
    alive[::7] = False
    rids = np.arange(100, 2100, dtype=np.int64)
    view = pgindex.View(rids, codes, scales, alive, int(alive.sum()))
    approx = int8.scores(int8.quantise_query(query), codes, scales)
    approx[~alive] = -np.inf
    got = pgindex.rank(view, query, 50)
    assert got.tolist() == rids[np.argsort(-approx, kind="stable")[:50]].tolist()
    assert sorted(pgindex.rank(view, query, 5000).tolist()) == rids[alive].tolist()
