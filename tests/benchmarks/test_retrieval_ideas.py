"""benchmarks/retrieval_ideas.py replays the library's fusion on whole conversations: its replay
must rank exactly as ``hivemem.memory.hybrid.fuse`` over the candidates a search hands it, or
every idea it measures is compared against the wrong baseline (no model: random scores)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import retrieval_ideas as ideas  # noqa: E402

from hivemem.memory import hybrid  # noqa: E402

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _library_order(cos: np.ndarray, kw: np.ndarray, depth: int, k: int) -> list[int]:
    """What ``hybrid.search`` does: each side's best ``depth`` (ties to the older row), then fuse."""
    n = len(cos)
    by_cos = sorted(range(n), key=lambda i: (-cos[i], i))[:depth]
    by_kw = sorted((i for i in range(n) if kw[i] > 0), key=lambda i: (-kw[i], i))[:depth]
    vector = [{"id": f"{i:05d}", "score": float(cos[i])} for i in by_cos]
    keyword = [{"id": f"{i:05d}", "score": float(kw[i])} for i in by_kw]
    missing = {f"{i:05d}": float(cos[i]) for i in by_kw if i not in by_cos}
    return [int(h["id"]) for h in hybrid.fuse(vector, keyword, missing, k, None)]


@pytest.mark.parametrize("seed", range(40))
def test_replay_ranks_as_the_library(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    cos = np.round(rng.uniform(-0.2, 0.9, n), 2)  # rounded: ties on the cosine happen
    kw = rng.choice([0.0, 0.0, 0.0, 0.7, 1.4, 2.8, 5.1], n)  # many ties and many rows without a word
    if seed % 5 == 0:
        kw[:] = 0.0  # no keyword hit at all: the score is the cosine
    got = ideas.top(ideas.fuse(cos, kw, depth=20), cos, k=10)
    assert got == _library_order(cos, kw, depth=20, k=10)


@pytest.mark.parametrize("seed", range(40))
def test_replay_of_question_dates_ranks_as_the_library(seed: int) -> None:
    """The question-date boost as measured (``boost`` on the fusion's own candidates,
    ``retrieval_dates.py`` "candidates") is what ``hybrid.fuse`` does with a ``span``: with the
    keyword context's summed scores (added as they are) and with raw BM25 (added to score / best)."""
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(5, 120))
    cos = np.round(rng.uniform(-0.2, 0.9, n), 2)
    kw = rng.choice([0.0, 0.0, 0.0, 0.7, 1.4, 2.8, 5.1], n)
    day = rng.random(n) < 0.2  # created on the query's day
    summed = seed % 2 == 0
    depth, k = 20, 10
    by_cos = sorted(range(n), key=lambda i: (-cos[i], i))[:depth]
    by_kw = sorted((i for i in range(n) if kw[i] > 0), key=lambda i: (-kw[i], i))[:depth]
    stamp = ["2023-05-03T10:00:00+00:00" if d else "2023-05-04T00:00:00+00:00" for d in day]
    vector = [{"id": f"{i:05d}", "score": float(cos[i]), "created_at": stamp[i]} for i in by_cos]
    keyword = [{"id": f"{i:05d}", "score": float(kw[i]), "created_at": stamp[i]} for i in by_kw]
    missing = {f"{i:05d}": float(cos[i]) for i in by_kw if i not in by_cos}
    span = ("2023-05-03", "2023-05-03")
    library = hybrid.fuse(vector, keyword, missing, k, None, span=span, summed=summed)
    parts = kw if summed or not kw.any() else kw / kw.max()  # the replay's keyword side: normalised parts
    boost = hybrid.DATE_SHARE * day.astype(float)
    got = ideas.top(ideas.fuse(cos, parts, depth=depth, boost=boost), cos, k=k)
    assert got == [int(h["id"]) for h in library]
