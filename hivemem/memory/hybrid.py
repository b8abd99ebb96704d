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

**Context** (``Storage.context``, the ``keyword_context`` option of ``Memory``; issue 23): the
keyword side also counts each memory's window, it, the 2 memories before it and the 2 after it in
its scope, with the share ``CONTEXT_SHARE`` (``storage/ftscontext.py``, ``storage/pgcontext.py``):
``kw = body / best + 0.5 × window / best`` before the fusion divides by its best. On the LoCoMo
development half it lifts recall (docs/memory.md#finding-more-on-locomo-what-was-tried-2026-12-06-issue-23).

**Vector context** (``Storage.vector_context``, the ``vector_context`` option; issue 23): in hybrid
mode each candidate's cosine is fused with that of its window's *mean vector*, the normalised mean
of the stored vectors of the memory and the ``CONTEXT_BEFORE`` memories before it in its scope
(backward: the keyword context's window also reaches 2 after), costing no model call and nothing stored::

    cos' = (cos + VECTOR_CONTEXT_SHARE × cos(q, mean)) / (1 + VECTOR_CONTEXT_SHARE)

which then takes ``cos``'s place in the fusion (and in the tie-break); ``threshold`` still cuts on
the memory's own cosine. Only the fusion's candidates get it (``Storage.window_scores``): on the
LoCoMo development half that finds exactly what a second index over every mean would
(benchmarks/retrieval_ideas.py, docs/memory.md).

**Dates named in the query** (part of ``keyword_dates``, the store's ``Storage.dates``; issue 23):
when the query names a date (``datewords.query_span``: "May 3, 2023" is that UTC day, "in December
2023" that month, "in June" that month of every year), each of the fusion's candidates (either side's) whose
``created_at`` falls in it gets ``DATE_SHARE`` added to its keyword score in the normalised-parts
space (``kw = body / best + 0.5 × window / best + 0.5 × [in span]``; without the keyword context
``body / best + 0.5 × [in span]``) before the fusion divides by the best, so a candidate created
that day counts as a keyword match of it. Only candidates: no memory is added, no query is made
(adding the day's other memories as candidates, newest or most similar first, lowered
multi-hop recall@5 on the LoCoMo development half: docs/memory.md). A query without a date is
fused exactly as before.

``explain=True`` gives each hit the parts of its score (``score_details``, see ``explain``); it is
computed only when asked, from the lists the fusion already holds.

The storage primitives this needs are the search contract of ``storage.base.Storage``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemem.infra.settings import Settings
from hivemem.memory.storage import datewords
from hivemem.memory.storage.base import KEYWORD_PARTS, ROW

if TYPE_CHECKING:
    from hivemem.memory.filters import Node
    from hivemem.memory.storage.base import Storage

MODES = ("hybrid", "vector", "keyword")
KEYWORD_WEIGHT = 0.4
CONTEXT_SHARE = 0.5  # the window's share of the keyword score when context is on (docs/memory.md)
VECTOR_CONTEXT_SHARE = 0.5  # the window mean's share of the cosine with vector_context (docs/memory.md)
DATE_SHARE = 0.5  # added to the normalised keyword score of a candidate created on the query's date
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
    explain: bool = False,
    context: dict[str, float] | None = None,
    context_weight: float = VECTOR_CONTEXT_SHARE,
    span: tuple[str, str] | None = None,
    summed: bool = False,
    dates: bool = False,
) -> list[dict[str, Any]]:
    """The fusion rule of the module docstring, as a pure function.

    ``vector_hits`` carry their exact cosine as ``score``; ``keyword_hits`` their keyword score
    (> 0, higher is better, any scale); ``cosines`` holds the exact cosine of every keyword hit
    that is not a vector hit; ``context`` (vector context on) the cosine of each candidate's
    window mean, weighed by ``context_weight``. ``span``: the query's date (``query_dates``); the
    candidates created then get ``DATE_SHARE`` (module docstring), added to the keyword score as
    is when it is ``summed`` (the keyword context's sum of normalised parts), else to score / best;
    ``dates``: the store boosts dates (``explain`` then shows ``date_boost`` and ``date_span``).
    Returns at most ``top_k`` records (copies) with the fused ``score`` (and ``score_details``
    when ``explain``).
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
    dated = _dated(records, cos, span)
    if dated:  # the query's date (module docstring): in the normalised-parts space, then / its best
        base = {h["id"]: float(h["score"]) if summed else float(h["score"]) / best for h in keyword_hits}
        for mid in dated:
            base[mid] = base.get(mid, 0.0) + DATE_SHARE
        top = max(base.values())
        kw = {mid: value / top for mid, value in base.items()}
    divisor = 1 + weight if kw else 1.0  # no keyword hit at all: the score is the cosine (as Mem0)
    scored = []
    vec: dict[str, float] = {}  # the vector side's part: the cosine, with context the mix
    for mid, c in cos.items():  # a keyword hit without a cosine (deleted meanwhile) drops out
        if threshold is not None and c < threshold:
            continue
        v = vec[mid] = (
            c if context is None else (c + context_weight * context.get(mid, c)) / (1 + context_weight)
        )
        scored.append(((v + weight * kw.get(mid, 0.0)) / divisor, v, mid))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    out = [{**records[mid], "score": s} for s, _, mid in scored[:top_k]]
    for r in out:
        r.pop(KEYWORD_PARTS, None)  # only explain shows them
    if explain:
        vector_rank, keyword_rank = _ranks(vector_hits), _ranks(keyword_hits)
        raw = {h["id"]: float(h["score"]) for h in keyword_hits}
        parts = {h["id"]: h[KEYWORD_PARTS] for h in keyword_hits if KEYWORD_PARTS in h}
        windows = bool(parts)
        for r in out:
            mid = r["id"]
            r["score_details"] = {
                "cosine": cos[mid],
                "vector_rank": vector_rank.get(mid),
                "keyword_score": raw.get(mid),
                "keyword_normalized": kw.get(mid, 0.0),
                "keyword_rank": keyword_rank.get(mid),
                "keyword_weight": weight if kw else 0.0,  # the weight this query's fusion applied
                "fused": r["score"],
            }
            if windows:
                r["score_details"].update(_context_details(parts.get(mid)))
            if context is not None:
                r["score_details"]["context_cosine"] = context.get(mid)
                r["score_details"]["vector_score"] = vec[mid]
            if dates:
                r["score_details"]["date_boost"] = DATE_SHARE if mid in dated else 0.0
                r["score_details"]["date_span"] = list(span) if span is not None else None
    return out


def _dated(
    records: dict[str, dict[str, Any]], cos: dict[str, float], span: tuple[str, str] | None
) -> set[str]:
    """The candidates (those with a cosine) created on a day of ``span`` (none without a span)."""
    if span is None:
        return set()
    return {mid for mid in cos if datewords.in_span(str(records[mid].get("created_at") or ""), span)}


def query_dates(storage: Storage, query: str) -> tuple[str, str] | None:
    """The days of the date ``query`` names (``datewords.query_span``) when ``storage`` boosts dates
    (``Storage.dates``: ``keyword_dates``), else None without reading the query."""
    return datewords.query_span(query) if storage.dates else None


def _context_details(parts: tuple[float, float] | None) -> dict[str, float | None]:
    """With context: the raw BM25 of the memory's own text and of its window (None: no keyword hit)."""
    body, window = parts if parts is not None else (None, None)
    return {"keyword_body": body, "keyword_context": window}


def _ranks(hits: list[dict[str, Any]]) -> dict[str, int]:
    """1-based position of each id in one side's list (best first)."""
    return {h["id"]: i for i, h in enumerate(hits, 1)}


def explain(hits: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """``score_details`` for the hits of one side alone (``mode`` vector or keyword), as copies.

    vector: the cosine and its rank; keyword: the raw keyword score, normalised by this query's
    best, and its rank. Hybrid hits get theirs from ``fuse`` (the module
    docstring; every key, ranks None where the memory was not a candidate on that side)."""
    out = []
    best = max((float(h["score"]) for h in hits), default=0.0)
    for rank, h in enumerate(hits, 1):
        score = float(h["score"])
        if mode == "vector":
            details: dict[str, Any] = {"cosine": score, "vector_rank": rank}
        else:
            normalized = score / best if best > 0 else 0.0
            details = {"keyword_score": score, "keyword_normalized": normalized, "keyword_rank": rank}
        hit = dict(h)
        if KEYWORD_PARTS in hit:
            details.update(_context_details(hit.pop(KEYWORD_PARTS)))
        out.append({**hit, "score_details": details})
    return out


def configure_context(
    keyword: bool | None, vector: bool | None, storage: Storage, dates: bool | None = None
) -> None:
    """Set ``storage.context`` and ``storage.vector_context``, the shares of the keyword and the
    vector context, for a ``Memory``: ``keyword`` / ``vector`` (``keyword_context=``,
    ``vector_context=``), or else ``$HIVEMEM_KEYWORD_CONTEXT`` / ``$HIVEMEM_VECTOR_CONTEXT``
    (``1``/``0``), default off: together they lifted the development half of LoCoMo, and stay off
    until they have held on the held-out half (docs/memory.md). ``dates`` (``keyword_dates=``, else
    ``$HIVEMEM_KEYWORD_DATES``): the store's keyword text holds each memory's date words, or not
    (``Storage.keyword_dates``: a re-index when it changes); neither given: as the store has it
    (new stores: off), so that a process opened without the option never undoes it. A refused
    value closes ``storage`` (``Memory()`` fails whole)."""
    try:
        settings = Settings.from_env()
        keyword = _option("keyword_context", keyword, settings.keyword_context)
        vector = _option("vector_context", vector, settings.vector_context)
        wanted = dates_option(dates)
        if wanted is not None:
            storage.keyword_dates(wanted)
        if keyword:
            storage.enable_context()
        if vector:
            storage.enable_vector_context()
    except BaseException:
        storage.close()
        raise
    storage.context = CONTEXT_SHARE if keyword else 0.0
    storage.vector_context = VECTOR_CONTEXT_SHARE if vector else 0.0


def dates_option(dates: bool | None) -> bool | None:
    """``keyword_dates=`` as given, else from ``$HIVEMEM_KEYWORD_DATES``; None: neither (as the store
    has it). Also read before the store opens (``backends.open_storage``: SQLite applies it there)."""
    env = Settings.from_env().keyword_dates
    return None if dates is None and env is None else _option("keyword_dates", dates, env)


def _option(name: str, option: bool | None, env: str | None) -> bool:
    """A context option: given, or else from its environment variable (``HIVEMEM_`` + upper name)."""
    if option is None:
        text = (env or "0").lower()
        if text not in ("0", "1", "true", "false", "on", "off", "yes", "no"):
            raise ValueError(f"HIVEMEM_{name.upper()} must be 1 or 0, got {text[:40]!r}")
        option = text in ("1", "true", "on", "yes")
    if not isinstance(option, bool):
        raise TypeError(f"{name} must be True or False, got {type(option).__name__}")
    return option


def has_keywords(storage: Any) -> bool:
    """Whether ``storage`` has the keyword side of the search contract (SQLite and PostgreSQL have)."""
    return all(callable(getattr(storage, name, None)) for name in ("keyword_search", "cosines", "snapshot"))


def rank(
    storage: Storage,
    mode: str,
    vector: np.ndarray | None,
    terms: list[str],
    where: Node | None,
    top_k: int,
    threshold: float | None,
    explain_scores: bool = False,
    span: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One search's answer through the storage primitives, best first (every backend gets the same
    semantics), before its records are read: a hit may be a stub (``storage.base.ROW``) that
    ``finish`` completes, in the same snapshot. Only the kept hits' records are read, so a hybrid
    search no longer reads those of the candidates the fusion drops (issue 25).

    A backend without the keyword side is searched in vector mode when ``mode`` is hybrid.
    ``explain_scores``: each hit also gets its ``score_details`` (``fuse``, ``explain``);
    ``span``: the days of the date the query names (``query_dates``; hybrid mode)."""
    if mode == "hybrid" and not has_keywords(storage):
        mode = "vector"
    if mode != "hybrid":
        if mode == "vector":
            assert vector is not None
            hits = storage.search(vector, where, top_k, threshold, with_records=False)
        else:
            hits = storage.keyword_search(terms, where, top_k, with_records=False) if terms else []
            if not explain_scores:
                return [_strip(h) for h in hits]
        return explain(hits, mode) if explain_scores else hits
    assert vector is not None
    depth = candidates(top_k)
    with storage.snapshot():
        vector_hits = storage.search(vector, where, depth, threshold, with_records=False)
        keyword_hits = storage.keyword_search(terms, where, depth, with_records=False) if terms else []
        dates = storage.dates  # in the snapshot: its state (SQLite reads no more for it)
        found = storage.identify(vector_hits, keyword_hits, vector, dates and span is not None)
        vector_hits, keyword_hits, cosines = found
        context = None
        if storage.vector_context:  # the candidates' window means (module docstring)
            seen = {h["id"] for h in vector_hits}
            missing = [h["id"] for h in keyword_hits if h["id"] not in seen]
            context = context_cosines(storage.window_scores([*seen, *missing], vector))
    return fuse(
        vector_hits,
        keyword_hits,
        cosines,
        top_k,
        threshold,
        explain=explain_scores,
        context=context,
        context_weight=storage.vector_context,
        span=span if dates else None,
        summed=storage.context > 0,
        dates=dates,
    )


def pending(hits: list[dict[str, Any]]) -> list[Any]:
    """The rows of the stubs among ``hits`` (``rank``): what ``Storage.records`` reads for them."""
    return [h[ROW] for h in hits if ROW in h]


def finish(
    storage: Storage, hits: list[dict[str, Any]], found: dict[Any, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """``hits`` of ``rank`` as records: each stub takes its record, with its ``score`` (and
    ``score_details``). ``found``: ``Storage.records`` of their ``pending`` rows (read once for a
    group of searches, ``searching.SearchGroups``), else read here; either in the snapshot that
    ranked them."""
    rows = pending(hits)
    if not rows:
        return hits
    if found is None:
        found = storage.records(rows)
    out = []
    for h in hits:
        if ROW not in h:
            out.append(h)
        elif (record := found.get(h[ROW])) is not None:  # (a row gone: not within one snapshot)
            done = {**record, "score": h["score"]}
            if "score_details" in h:
                done["score_details"] = h["score_details"]
            out.append(done)
    return out


def search(
    storage: Storage,
    mode: str,
    vector: np.ndarray | None,
    terms: list[str],
    where: Node | None,
    top_k: int,
    threshold: float | None,
    explain_scores: bool = False,
    span: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One search (``rank`` then ``finish``, in one snapshot) → its records, best first."""
    with storage.snapshot():
        return finish(
            storage, rank(storage, mode, vector, terms, where, top_k, threshold, explain_scores, span)
        )


def context_cosines(windows: dict[str, tuple[float, float]]) -> dict[str, float]:
    """cos(q, normalised mean of the window's vectors) = Σ q·v / ‖Σ v‖ (``Storage.window_scores``);
    0 for a window whose vectors sum to nothing; clamped to [-1, 1] (rounding of a window of
    equal vectors can land just past it, and a cosine is reported as one)."""
    return {mid: min(1.0, max(-1.0, dot / norm)) if norm > 0 else 0.0 for mid, (dot, norm) in windows.items()}


def _strip(hit: dict[str, Any]) -> dict[str, Any]:
    """A keyword hit without the parts only ``explain`` shows."""
    hit.pop(KEYWORD_PARTS, None)
    return hit
