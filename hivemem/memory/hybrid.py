"""Hybrid retrieval: keyword relevance (BM25) fused with vector similarity, the same on every backend.

Why: on long real conversations (LoCoMo, development half; ``benchmarks/retrieval.py``) agents ask
about names, places, dates and objects. all-MiniLM-L6-v2 alone (int8 or the exact fp32 reference)
finds fewer of the evidence turns in its top 10 than keyword BM25 alone, and the rule below finds
more than either, at least as many as the better of the two on every question category. The rule
and its parameters were chosen on that development data only (``benchmarks/retrieval.py --sweep``;
all figures in docs/memory.md#hybrid-retrieval-the-shared-index-scale-2026-11-26):

* **Query terms** (``query_terms``): the query's words (Unicode ``\\w+``, lower-cased), English
  stop words dropped (unless nothing else is left), duplicates dropped, at most ``MAX_TERMS``.
  They are plain words: a backend quotes each one, so user text is never read as query syntax.
  Stemming is the backend's (SQLite FTS5: the ``porter`` tokenizer; PostgreSQL: Snowball
  English, see ``storage/pgkeyword.py``). Keeping stop words lowers recall.
* **Candidates**: each side contributes its best ``candidates(top_k)`` memories among those that
  pass the filters (the filters apply to both sides *before* ranking).
* **Fusion** (``fuse``): for every candidate, ``cos`` is its exact cosine similarity and ``kw`` its
  keyword score divided by the best keyword score of this query (0 when it matched no term)::

      score = (cos + KEYWORD_WEIGHT * kw) / (1 + KEYWORD_WEIGHT)

  higher is better, at most 1; when no memory holds any query word, the divisor is 1 and the score
  is the cosine (Mem0 2.x also divides by the signals present). ``threshold`` keeps Mem0's
  meaning: a memory whose cosine is below it is dropped before fusing, whatever its keyword score
  (as Mem0 2.x gates its semantic score). Ties go to the higher cosine, then to the smaller id.
  Of the alternatives in the sweep (other weights and depths, reciprocal rank fusion, min-max
  normalised convex combination, Mem0 2.x's sigmoid BM25 boost over semantic candidates only), none
  did better; reciprocal rank fusion is as good only with a small k, and its score is a rank, not a
  similarity (so ``score`` and ``threshold`` would lose their meaning).

The storage primitives this needs are the search contract of ``storage.base.Storage``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hivemem.memory.filters import Node
    from hivemem.memory.storage.base import Storage

MODES = ("hybrid", "vector", "keyword")
KEYWORD_WEIGHT = 0.4
MAX_TERMS = 32  # words of a query used for the keyword side (bounds the cost of a hostile query)
MAX_TERM_CHARS = 64  # longer "words" are not words: skipped

# The usual English stop-word list (as NLTK's), apostrophe-free since \w+ splits "don't" into
# "don" + "t". Question words are in it: "when did X go to Y" must match on X and Y.
STOP_WORDS = frozenset(
    """a about above after again against ain all am an and any are aren as at be because been before
    being below between both but by can couldn d did didn do does doesn doing don down during each few
    for from further had hadn has hasn have haven having he her here hers herself him himself his how i
    if in into is isn it its itself just ll m ma me mightn more most mustn my myself needn no nor not now
    o of off on once only or other our ours ourselves out over own re s same shan she should shouldn so
    some such t than that the their theirs them themselves then there these they this those through to
    too under until up ve very was wasn we were weren what when where which while who whom why will with
    won wouldn y you your yours yourself yourselves""".split()  # noqa: SIM905
)
_WORD = re.compile(r"\w+")


def query_terms(text: str) -> list[str]:
    """The words of ``text`` the keyword side searches for (see the module docstring)."""
    words = [w for w in _WORD.findall(text.lower()) if len(w) <= MAX_TERM_CHARS]
    kept = [w for w in words if w not in STOP_WORDS] or words
    return list(dict.fromkeys(kept))[:MAX_TERMS]


def candidates(top_k: int) -> int:
    """How many memories each side contributes to the fusion (recall plateaus from 20: docs/memory.md)."""
    return max(20, 2 * top_k)


def fuse(
    vector_hits: list[dict[str, Any]],
    keyword_hits: list[dict[str, Any]],
    cosines: dict[str, float],
    top_k: int,
    threshold: float | None,
    weight: float = KEYWORD_WEIGHT,
) -> list[dict[str, Any]]:
    """The fusion rule of the module docstring, as a pure function.

    ``vector_hits`` carry their exact cosine as ``score``; ``keyword_hits`` their keyword score
    (> 0, higher is better, any scale); ``cosines`` holds the exact cosine of every keyword hit
    that is not a vector hit. Returns at most ``top_k`` records (copies) with the fused ``score``.
    """
    cos: dict[str, float] = {h["id"]: float(h["score"]) for h in vector_hits}
    records: dict[str, dict[str, Any]] = {h["id"]: h for h in vector_hits}
    best = max((float(h["score"]) for h in keyword_hits), default=0.0)
    kw: dict[str, float] = {}
    for h in keyword_hits:
        kw[h["id"]] = float(h["score"]) / best if best > 0 else 0.0
        records.setdefault(h["id"], h)
        if h["id"] not in cos and h["id"] in cosines:
            cos[h["id"]] = float(cosines[h["id"]])
    divisor = 1 + weight if kw else 1.0  # no keyword hit at all: the score is the cosine (as Mem0)
    scored = []
    for mid, c in cos.items():  # a keyword hit without a cosine (deleted meanwhile) drops out
        if threshold is not None and c < threshold:
            continue
        scored.append(((c + weight * kw.get(mid, 0.0)) / divisor, c, mid))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [{**records[mid], "score": s} for s, _, mid in scored[:top_k]]


def has_keywords(storage: Any) -> bool:
    """Whether ``storage`` has the keyword side of the search contract (SQLite and PostgreSQL have)."""
    return all(callable(getattr(storage, name, None)) for name in ("keyword_search", "cosines", "snapshot"))


def search(
    storage: Storage,
    mode: str,
    vector: np.ndarray | None,
    terms: list[str],
    where: Node | None,
    top_k: int,
    threshold: float | None,
) -> list[dict[str, Any]]:
    """One search through the storage primitives; every backend gets the same semantics.

    A backend without the keyword side is searched in vector mode when ``mode`` is hybrid."""
    if mode == "hybrid" and not has_keywords(storage):
        mode = "vector"
    if mode == "vector":
        assert vector is not None
        return storage.search(vector, where, top_k, threshold)
    if mode == "keyword":
        return storage.keyword_search(terms, where, top_k) if terms else []
    assert vector is not None
    depth = candidates(top_k)
    with storage.snapshot():
        vector_hits = storage.search(vector, where, depth, threshold)
        keyword_hits = storage.keyword_search(terms, where, depth) if terms else []
        seen = {h["id"] for h in vector_hits}
        missing = [h["id"] for h in keyword_hits if h["id"] not in seen]
        cosines = storage.cosines(missing, vector) if missing else {}
    return fuse(vector_hits, keyword_hits, cosines, top_k, threshold)
