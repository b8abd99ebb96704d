"""Research for issue 23 item 1: which ideas raise recall on LoCoMo (development half), offline.

    python benchmarks/retrieval_ideas.py                 # data: ../shared/data/locomo-dev
    python benchmarks/retrieval_ideas.py --cache FILE    # keep the embedding cache between runs

Loading, the metric and the baseline store come from ``benchmarks/retrieval.py`` (imported, not
copied). Every idea is evaluated on the same 760 questions with the real int8 MiniLM model and
the SQLite backend; the keyword side is always the store's own ``keyword_search`` (its BM25 with
the statistics of the conversation), the vector side exact cosines of the store's vectors.

* **Query-side ideas** re-rank the baseline store's two sides: the fusion rule of
  ``hivemem.memory.hybrid`` (``fuse``, replayed on all the turns of the conversation, then the same
  candidate depth), pseudo-relevance feedback on the vector side (Rocchio: the query vector plus
  ``b`` × the mean vector of the first fused hits, searched again) and on the keyword side (the
  rarer words of the first hits as a second, weaker keyword query), fusion weights.
* **Index-side ideas** are prototyped by *other stores* whose memory text differs (the turn with
  its neighbouring turns of the same session as context, the session date, no speaker name, the
  image caption); each hit maps back to the turn it stands for (``dia_id`` metadata), so the
  metric is the same. A signal may come from one store for the keyword side and another for the
  vector side.
* **Neighbour smoothing** (index side, computed here): a turn's fused score plus ``g`` × the best
  fused score of its neighbouring turns in the session (needs the neighbours at search time).

Prints a table (idea; recall@5 / recall@10 over all questions and per category; the change of
recall@10 with a 95% paired bootstrap interval over questions and how many questions gained or
lost), the ideas that lift the whole development half (no category worse at 5 or 10, interval
above 0), one JSON line and a plot (docs/img/retrieval_ideas.png). The figures and what was kept
are in docs/memory.md. Development data only: a winner here still has to hold on the held-out half.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import retrieval as R
from plots import add_plot_options, bars

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.memory import filters as flt
from hivemem.memory import hybrid

DEPTH = hybrid.candidates(R.K)


@dataclass
class Turn:
    dia: str
    speaker: str
    text: str
    date: str
    session: int
    caption: str = ""


def raw_turns(data: Path) -> dict[str, list[Turn]]:
    """Every turn with its session date and image caption (``R.load`` keeps only the text)."""
    out: dict[str, list[Turn]] = {}
    for f in sorted(data.glob("*.json")):
        conv = json.loads(f.read_text())
        mine = []
        for key in sorted((k for k in conv if re.fullmatch(r"session_\d+", k)), key=lambda k: int(k[8:])):
            date = conv.get(f"{key}_date_time", "")
            for t in conv[key]:
                mine.append(
                    Turn(t["dia_id"], t["speaker"], t["text"], date, int(key[8:]), t.get("blip_caption", ""))
                )
        out[f.stem] = mine
    return out


def window(turns: list[Turn], i: int, before: int, after: int, session: bool = True) -> list[Turn]:
    """Turn ``i`` with its neighbours: in its session, or (``session=False``) anywhere in the
    conversation (the benchmark's scope, ``user_id`` = the conversation, without ``run_id``)."""
    s = turns[i].session
    return [t for t in turns[max(0, i - before) : i + after + 1] if t.session == s or not session]


def said(t: Turn) -> str:
    return f"{t.speaker}: {t.text}"


# Stored text per variant: (turns of the conversation, index) -> text.
VARIANTS: dict[str, Callable[[list[Turn], int], str]] = {
    "base": lambda ts, i: said(ts[i]),
    "no speaker": lambda ts, i: ts[i].text,
    "date": lambda ts, i: f"[{ts[i].date}] {said(ts[i])}",
    "caption": lambda ts, i: said(ts[i]) + (f" [shares a photo: {ts[i].caption}]" if ts[i].caption else ""),
    "context ±1": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 1, 1)),
    "context -1": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 1, 0)),
    "context ±2": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 2, 2)),
    "context -2": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 2, 0)),
    "context ±2 (scope)": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 2, 2, False)),
    "context -2 (scope)": lambda ts, i: "\n".join(said(t) for t in window(ts, i, 2, 0, False)),
}


@dataclass
class Side:
    """One variant store: per conversation, the vector of each baseline memory and the store."""

    memory: Memory
    to_base: dict[str, str]  # this store's memory id -> the baseline memory id of the same turn
    vecs: dict[str, np.ndarray] = field(default_factory=dict)  # conv -> (n, dim), baseline order
    kw_cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = field(default_factory=dict)


def fill(
    m: Memory, turns: dict[str, list[tuple[str, str]]]
) -> tuple[dict[str, list[str]], dict[tuple[str, str], str]]:
    """``R.fill`` one conversation at a time: also → (conversation, dia_id) → memory id
    (dia_ids repeat across conversations)."""
    dia: dict[str, list[str]] = {}
    by_dia: dict[tuple[str, str], str] = {}
    for conv, mine in turns.items():
        part = R.fill(m, {conv: mine})
        dia.update(part)
        by_dia.update({(conv, d): mid for mid, ds in part.items() for d in ds})
    return dia, by_dia


class Lab:
    def __init__(self, data: Path, tmp: Path, emb: Embedder) -> None:
        self.turns, self.questions, _ = R.load(data)
        self.raw = raw_turns(data)
        self.emb, self.tmp = emb, tmp
        self.base = Memory(str(tmp / "base.sqlite"), embedder=emb)
        self.dia, self.by_dia = fill(self.base, self.turns)
        self.ids: dict[str, list[str]] = {}  # conv -> baseline memory ids (the units ranked)
        for conv, mine in self.turns.items():
            self.ids[conv] = list(dict.fromkeys(self.by_dia[conv, d] for d, _ in mine))
        self.pos = {conv: {m: i for i, m in enumerate(ids)} for conv, ids in self.ids.items()}
        self.text = {(d, conv): text for conv, mine in self.turns.items() for d, text in mine}
        self.qv = emb.embed([q for _, q, _, _ in self.questions])
        self.sides: dict[str, Side] = {}
        # neighbours in the session, per baseline unit (index lists)
        self.neigh: dict[str, list[list[int]]] = {}
        for conv, ts in self.raw.items():
            p, n = self.pos[conv], []
            unit_turns: dict[int, list[int]] = {}
            for i, t in enumerate(ts):
                unit_turns.setdefault(p[self.by_dia[conv, t.dia]], []).append(i)
            for u in range(len(self.ids[conv])):
                near = set()
                for i in unit_turns[u]:
                    for t in window(ts, i, 1, 1):
                        near.add(p[self.by_dia[conv, t.dia]])
                near.discard(u)
                n.append(sorted(near))
            self.neigh[conv] = n

    def side(self, name: str) -> Side:
        if name in self.sides:
            return self.sides[name]
        make = VARIANTS[name]
        texts = {conv: [(t.dia, make(ts, i)) for i, t in enumerate(ts)] for conv, ts in self.raw.items()}
        if name == "base":
            m, by_dia = self.base, self.by_dia
        else:
            m = Memory(str(self.tmp / f"{len(self.sides)}.sqlite"), embedder=self.emb)
            t0 = time.perf_counter()
            by_dia = fill(m, texts)[1]
            print(f"  store '{name}': {time.perf_counter() - t0:.0f} s", flush=True)
        to_base = {mid: self.by_dia[key] for key, mid in by_dia.items()}
        s = Side(m, to_base)
        for conv, items in texts.items():
            vec = dict(zip((d for d, _ in items), self.emb.embed([x for _, x in items]), strict=True))
            s.vecs[conv] = np.stack([vec[self.dia[mid][0]] for mid in self.ids[conv]])
        self.sides[name] = s
        return s

    def base_text(self, conv: str, j: int) -> str:
        """The stored text of baseline unit ``j``."""
        return self.text[self.dia[self.ids[conv][j]][0], conv]

    def keyword(self, name: str, conv: str, terms: list[str]) -> np.ndarray:
        """The store's BM25 score of every baseline unit (0: no query word)."""
        s = self.side(name)
        key = (conv, tuple(terms))
        if key not in s.kw_cache:
            out = np.zeros(len(self.ids[conv]))
            if terms:
                where = flt.parse({"user_id": conv})
                for h in s.memory._storage.keyword_search(terms, where, 100_000):
                    j = self.pos[conv][s.to_base[h["id"]]]
                    out[j] = max(out[j], h["score"])
            s.kw_cache[key] = out
        return s.kw_cache[key]


def fuse(
    cos: np.ndarray,
    kw: np.ndarray,
    w: float = hybrid.KEYWORD_WEIGHT,
    depth: int = DEPTH,
    pick: np.ndarray | None = None,
    boost: np.ndarray | None = None,
    tie: np.ndarray | None = None,
) -> np.ndarray:
    """``hybrid.fuse`` over the candidates it would see (a vector candidate outside the keyword
    side's ``depth`` gets no keyword score, as there); the others score -inf. ``pick``: the
    vector side's candidates are the best ``depth`` by it (-inf: never), not by ``cos``.
    ``boost`` (question dates, ``retrieval_dates.py``): added to the keyword score of the fusion's
    own candidates only (no new candidate); ``tie``: the keyword side's ties go to the higher
    ``tie`` (else to the older turn)."""
    cand = np.zeros(len(cos), bool)
    order = np.lexsort((np.arange(len(cos)), -(cos if pick is None else pick)))[:depth]
    cand[order if pick is None else order[np.isfinite(pick[order])]] = True
    hit = np.flatnonzero(kw > 0)
    second = hit if tie is None else -tie[hit]
    kw_cand = hit[np.lexsort((hit, second, -kw[hit]))[:depth]]
    cand[kw_cand] = True
    kw = np.where(np.isin(np.arange(len(kw)), kw_cand), kw, 0.0)  # fuse knows only its keyword hits
    if boost is not None:
        kw = kw + np.where(cand, boost, 0.0)
    best = kw.max() if len(kw) else 0.0
    score = (cos + w * (kw / best if best > 0 else 0)) / ((1 + w) if best > 0 else 1)
    return np.where(cand, score, -np.inf)


def top(score: np.ndarray, tie: np.ndarray, k: int = R.K) -> list[int]:
    order = np.lexsort((np.arange(len(score)), -tie, -score))
    return [int(i) for i in order[:k] if np.isfinite(score[i])]


Ranker = Callable[[str, str, int], list[int]]  # (conv, question, question index) -> unit indexes


def evaluate(lab: Lab, rank: Ranker) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """The score table, and each question's (recall@5, recall@10) in question order."""

    def ids(conv: str, q: str, i: int) -> list[str]:
        return [lab.ids[conv][j] for j in rank(conv, q, i)]

    scores = R.evaluate(lab.questions, ids, lab.dia)
    return scores.table(), np.array(scores.rows["all"])[:, :2]


# -- the rankers ---------------------------------------------------------------------------------


def hybrid_rank(lab: Lab, vec: str = "base", kw: str = "base", w: float = hybrid.KEYWORD_WEIGHT) -> Ranker:
    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side(vec).vecs[conv] @ lab.qv[i]
        return top(fuse(cos, lab.keyword(kw, conv, hybrid.query_terms(q)), w), cos)

    return rank


def two_vectors(lab: Lab, a: str, b: str, kw: str, how: str) -> Ranker:
    """Cosine from two stores (the turn alone and the turn in context): their max or mean."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        ca, cb = lab.side(a).vecs[conv] @ lab.qv[i], lab.side(b).vecs[conv] @ lab.qv[i]
        cos = np.maximum(ca, cb) if how == "max" else (ca + cb) / 2
        return top(fuse(cos, lab.keyword(kw, conv, hybrid.query_terms(q))), cos)

    return rank


def two_keywords(lab: Lab, a: str, b: str, share: float) -> Ranker:
    """Keyword score of the turn alone plus ``share`` × that of the turn in context."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side("base").vecs[conv] @ lab.qv[i]
        terms = hybrid.query_terms(q)
        ka, kb = lab.keyword(a, conv, terms), lab.keyword(b, conv, terms)
        kw = ka / (ka.max() or 1) + share * kb / (kb.max() or 1)
        return top(fuse(cos, kw), cos)

    return rank


def prf_vector(lab: Lab, beta: float, m: int, w: float = hybrid.KEYWORD_WEIGHT, keep: int = 0) -> Ranker:
    """Rocchio on the vector side: q + beta × mean of the first ``m`` fused hits, normalised;
    ``keep``: the first pass's best ``keep`` stay in front, the feedback only fills the rest."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        vecs = lab.side("base").vecs[conv]
        kw = lab.keyword("base", conv, hybrid.query_terms(q))
        cos = vecs @ lab.qv[i]
        first = top(fuse(cos, kw, w), cos, m)
        q2 = lab.qv[i] + beta * vecs[first].mean(axis=0)
        cos2 = vecs @ (q2 / np.linalg.norm(q2))
        if not keep:
            return top(fuse(cos2, kw, w), cos2)
        head = top(fuse(cos, kw, w), cos, keep)
        return (head + [j for j in top(fuse(cos2, kw, w), cos2, R.K + keep) if j not in head])[: R.K]

    return rank


def prf_keyword(lab: Lab, share: float, m: int, n_terms: int) -> Ranker:
    """The first ``m`` fused hits' rarest ``n_terms`` words as a second keyword query (× share)."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side("base").vecs[conv] @ lab.qv[i]
        terms = hybrid.query_terms(q)
        kw = lab.keyword("base", conv, terms)
        first = top(fuse(cos, kw), cos, m)
        words: dict[str, int] = {}
        for j in first:
            for x in hybrid.query_terms(lab.base_text(conv, j)):
                if x not in terms and not x.isdigit():
                    words[x] = words.get(x, 0) + 1
        # rarest in the conversation first: the keyword store's own idf decides
        extra = sorted(words, key=lambda x: (-lab.keyword("base", conv, [x]).max(), x))[:n_terms]
        kw2 = lab.keyword("base", conv, extra) if extra else np.zeros_like(kw)
        total = kw / (kw.max() or 1) + share * kw2 / (kw2.max() or 1)
        return top(fuse(cos, total), cos)

    return rank


def smoothed(lab: Lab, g: float, vec: str = "base", kw: str = "base") -> Ranker:
    """Fused score of every turn plus g × the best fused score of its session neighbours."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side(vec).vecs[conv] @ lab.qv[i]
        k = lab.keyword(kw, conv, hybrid.query_terms(q))
        s = fuse(cos, k, depth=len(cos))
        near = np.array([max((s[j] for j in n), default=0.0) for n in lab.neigh[conv]])
        total = np.where(np.isfinite(fuse(cos, k)), s + g * near, -np.inf)  # the fusion's candidates
        return top(total, cos)

    return rank


def smoothed_wide(lab: Lab, g: float) -> Ranker:
    """As ``smoothed`` but every turn is a candidate (the neighbours bring their own turns in)."""

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side("base").vecs[conv] @ lab.qv[i]
        s = fuse(cos, lab.keyword("base", conv, hybrid.query_terms(q)), depth=len(cos))
        near = np.array([max((s[j] for j in n), default=0.0) for n in lab.neigh[conv]])
        return top(s + g * near, cos)

    return rank


_ASK = re.compile(
    r"^\s*(?:(?:what|which|who|whom|whose|when|where|why|how)(?:\s+(?:kind|type|sort|many|much|long|often|of))*"
    r"(?:\s+(?:is|are|was|were|do|does|did|has|have|had|can|could|would|will|might|might|be))?\s+)",
    re.IGNORECASE,
)


def statement(q: str) -> str:
    """The question without its question word and auxiliary: closer to how a turn says it."""
    return _ASK.sub("", q).rstrip(" ?") or q


def declarative(lab: Lab, how: str) -> Ranker:
    """Vector side from the question rewritten as a statement (alone, or averaged with it)."""
    qs = lab.emb.embed([statement(q) for _, q, _, _ in lab.questions])

    def rank(conv: str, q: str, i: int) -> list[int]:
        v = qs[i] if how == "alone" else (qs[i] + lab.qv[i]) / np.linalg.norm(qs[i] + lab.qv[i])
        cos = lab.side("base").vecs[conv] @ v
        return top(fuse(cos, lab.keyword("base", conv, hybrid.query_terms(q))), cos)

    return rank


def combined(
    lab: Lab, vec: tuple[str, ...], kw: dict[str, float], g: float = 0.0, beta: float = 0.0
) -> Ranker:
    """Cosine = mean over the ``vec`` stores; keyword = Σ share × (score / best) over the ``kw``
    stores; optionally neighbour smoothing ``g`` and vector PRF ``beta`` (top 3)."""

    def cosines(conv: str, v: np.ndarray) -> np.ndarray:
        return sum(lab.side(n).vecs[conv] @ v for n in vec) / len(vec)

    def rank(conv: str, q: str, i: int) -> list[int]:
        terms = hybrid.query_terms(q)
        k = sum(
            share * (x / (x.max() or 1))
            for share, x in ((s, lab.keyword(n, conv, terms)) for n, s in kw.items())
        )
        cos = cosines(conv, lab.qv[i])
        if beta:
            first = top(fuse(cos, k), cos, 3)
            q2 = lab.qv[i] + beta * lab.side("base").vecs[conv][first].mean(axis=0)
            cos = cosines(conv, q2 / np.linalg.norm(q2))
        if not g:
            return top(fuse(cos, k), cos)
        s = fuse(cos, k, depth=len(cos))
        near = np.array([max((s[j] for j in n), default=0.0) for n in lab.neigh[conv]])
        return top(np.where(np.isfinite(fuse(cos, k)), s + g * near, -np.inf), cos)

    return rank


def mean_context(
    lab: Lab,
    before: int,
    after: int,
    session: bool,
    kw: dict[str, float],
    w: float = 1.0,
    pool: int | None = None,
    g: float = 0.0,
    fw: float = hybrid.KEYWORD_WEIGHT,
    depth: int = DEPTH,
    boost: Callable[[str, int], np.ndarray] | None = None,
    scale: Callable[[str, str], np.ndarray] | None = None,
    boost_mode: str = "all",
) -> Ranker:
    """A context vector that costs no model call: the normalised mean of the *stored* vectors of
    the turn's window; cosine = (cos(q, turn) + w · cos(q, context)) / (1 + w); keyword as
    ``combined``. ``pool``: the vector side's candidates are the best ``DEPTH`` by that cosine
    among the best ``pool`` by the turn's own cosine (the existing index, no second one; the
    keyword side's candidates get theirs too); None: among every turn (a second index). ``g``:
    neighbour smoothing on top (``smoothed``: + g × the best fused score of the turn's two
    session neighbours). ``fw``: the fusion's keyword weight; ``depth``: each side's candidates;
    ``boost`` (conversation, question index) → a score per turn added to the keyword side's
    (before it is divided by its best: ``retrieval_dates.py``); ``scale`` (store, conversation) →
    a factor per turn for that store's keyword scores (length normalisation). ``boost_mode``: "all"
    (every boosted turn may become a keyword candidate, ties to the older turn), "all newest" /
    "all cosine" (ties to the newer turn / the higher cosine), "candidates" (only the fusion's
    own candidates get it)."""
    ctx: dict[str, np.ndarray] = {}
    for conv, ts in lab.raw.items():
        p, vecs = lab.pos[conv], lab.side("base").vecs[conv]
        first: dict[int, int] = {}
        for i, t in enumerate(ts):
            first.setdefault(p[lab.by_dia[conv, t.dia]], i)
        rows = []
        for u in range(len(lab.ids[conv])):
            units = sorted({p[lab.by_dia[conv, t.dia]] for t in window(ts, first[u], before, after, session)})
            m = vecs[units].mean(axis=0)
            rows.append(m / np.linalg.norm(m))
        ctx[conv] = np.stack(rows)

    def rank(conv: str, q: str, i: int) -> list[int]:
        terms = hybrid.query_terms(q)
        k = sum(
            share * (x / (x.max() or 1))
            for share, x in (
                (s, lab.keyword(n, conv, terms) * (1.0 if scale is None else scale(n, conv)))
                for n, s in kw.items()
            )
        )
        own = lab.side("base").vecs[conv] @ lab.qv[i]
        extra, tie = None, None
        if boost is not None and boost_mode == "candidates":
            extra = boost(conv, i)
        elif boost is not None:
            k = k + boost(conv, i)
            tie = {"all": None, "all newest": np.arange(len(own), dtype=float), "all cosine": own}[boost_mode]
        cos = (own + w * (ctx[conv] @ lab.qv[i])) / (1 + w)
        if pool is None:
            return top(fuse(cos, k, fw, depth, boost=extra, tie=tie), cos)
        pick = np.full(len(cos), -np.inf)
        first = np.lexsort((np.arange(len(own)), -own))[:pool]
        pick[first] = cos[first]
        fused = fuse(cos, k, fw, depth, pick=pick, boost=extra, tie=tie)
        if g:
            every = fuse(cos, k, fw, depth=len(cos))
            near = np.array([max((every[j] for j in n), default=0.0) for n in lab.neigh[conv]])
            fused = np.where(np.isfinite(fused), fused + g * near, -np.inf)
        return top(fused, cos)

    return rank


def diverse(lab: Lab, penalty: float) -> Ranker:
    """Maximal marginal relevance by words: each next hit is the best fused score minus
    ``penalty`` × its largest word overlap (Jaccard) with the hits already taken."""
    words: dict[tuple[str, int], set[str]] = {}

    def bag(conv: str, j: int) -> set[str]:
        if (conv, j) not in words:
            words[conv, j] = set(hybrid.query_terms(lab.base_text(conv, j)))
        return words[conv, j]

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side("base").vecs[conv] @ lab.qv[i]
        s = fuse(cos, lab.keyword("base", conv, hybrid.query_terms(q)))
        pool = top(s, cos, len(s))
        taken: list[int] = []
        while pool and len(taken) < R.K:

            def gain(j: int) -> float:
                a = bag(conv, j)
                return s[j] - penalty * max(
                    (len(a & bag(conv, t)) / (len(a | bag(conv, t)) or 1) for t in taken), default=0.0
                )

            best = max(pool, key=gain)
            taken.append(best)
            pool.remove(best)
        return taken

    return rank


def names_boost(lab: Lab, share: float, speakers: bool) -> Ranker:
    """A second keyword query of the question's capitalised words (names, places; not its first
    word), added with ``share``; ``speakers=False`` leaves the conversation's speakers out."""
    who = {conv: {t.speaker.lower() for t in ts} for conv, ts in lab.raw.items()}

    def rank(conv: str, q: str, i: int) -> list[int]:
        cos = lab.side("base").vecs[conv] @ lab.qv[i]
        kw = lab.keyword("base", conv, hybrid.query_terms(q))
        caps = [w.lower() for w in re.findall(r"\w+", q)[1:] if w[:1].isupper()]
        caps = [w for w in caps if speakers or w not in who[conv]]
        caps = [w for w in hybrid.query_terms(" ".join(caps)) if w not in hybrid.STOP_WORDS]
        k2 = lab.keyword("base", conv, caps) if caps else np.zeros_like(kw)
        return top(fuse(cos, kw / (kw.max() or 1) + share * k2 / (k2.max() or 1)), cos)

    return rank


def public_api(lab: Lab) -> Ranker:
    def rank(conv: str, q: str, i: int) -> list[int]:
        hits = lab.base.search(q, user_id=conv, top_k=R.K)["results"]
        return [lab.pos[conv][h["id"]] for h in hits]

    return rank


def ideas(lab: Lab) -> dict[str, Ranker]:
    out: dict[str, Ranker] = {
        "baseline: Memory.search (hybrid)": public_api(lab),
        "baseline replayed here (same rule)": hybrid_rank(lab),
    }
    for w in (0.3, 0.5, 0.6):
        out[f"fusion weight {w}"] = hybrid_rank(lab, w=w)
    for beta, m in ((0.3, 3), (0.5, 3), (0.5, 5), (1.0, 5)):
        out[f"PRF vector: q + {beta}·mean(top {m})"] = prf_vector(lab, beta, m)
    for share, m, n in ((0.2, 3, 5), (0.3, 5, 10)):
        out[f"PRF keyword: {share}·(top {m}'s {n} rarest words)"] = prf_keyword(lab, share, m, n)
    for how in ("alone", "averaged"):
        out[f"query as a statement for the vector side ({how})"] = declarative(lab, how)
    for name in ("no speaker", "date", "caption"):
        out[f"index: text = {name} (both sides)"] = hybrid_rank(lab, name, name)
    for name in ("context ±1", "context -1", "context ±2"):
        out[f"index: {name}, both sides"] = hybrid_rank(lab, name, name)
        out[f"index: {name}, vector side only"] = hybrid_rank(lab, name, "base")
        out[f"index: {name}, keyword side only"] = hybrid_rank(lab, "base", name)
    for how in ("max", "mean"):
        out[f"index: cos = {how}(turn, context ±1), keyword turn"] = two_vectors(
            lab, "base", "context ±1", "base", how
        )
        out[f"index: cos = {how}(turn, context ±1), keyword context ±1"] = two_vectors(
            lab, "base", "context ±1", "context ±1", how
        )
    for ctx in ("context ±1", "context ±2", "context -2"):
        for share in (0.3, 0.5):
            out[f"index: kw = turn + {share}·{ctx}, cos turn"] = two_keywords(lab, "base", ctx, share)
    combos = {
        "A": (("base", "context ±2"), {"context ±1": 1.0}),
        "B": (("base", "context ±2"), {"base": 1.0, "context ±2": 0.5}),
        "C": (("context ±2",), {"context ±1": 1.0}),
        "D": (("base", "context ±2"), {"context ±1": 1.0, "date": 0.5}),
        "E": (("base", "context ±1"), {"base": 1.0, "context ±1": 1.0}),
        "F": (("base", "context ±2"), {"base": 1.0, "context ±1": 1.0}),
        "G": (("base", "context -2"), {"base": 1.0, "context -2": 0.5}),
        "H": (("base", "context -2"), {"base": 1.0, "context -1": 1.0}),
    }
    for label, (vec, kw) in combos.items():
        text = f"combo {label}: cos mean({', '.join(vec)}); kw " + " + ".join(
            f"{s}·{n}" for n, s in kw.items()
        )
        out[text] = combined(lab, vec, kw)
        out[text + "; smoothing 0.2"] = combined(lab, vec, kw, g=0.2)
        out[text + "; PRF 0.3"] = combined(lab, vec, kw, beta=0.3)
    for scope in ("", " (scope)"):  # issue 23 step 1: K bounded by the session or by the scope
        for ctx in ("context -2", "context ±2"):
            out[f"index: kw = turn + 0.5·{ctx}{scope}, cos turn"] = two_keywords(
                lab, "base", ctx + scope, 0.5
            )
    for session in (True, False):
        bound = "session" if session else "scope"
        for before, after in ((2, 0), (2, 2), (1, 1)):
            win = f"{before}..{after}" if after else f"-{before}"
            for kname, kw in (
                ("turn", {"base": 1.0}),
                ("K", {"base": 1.0, f"context -2{'' if session else ' (scope)'}": 0.5}),
            ):
                for w in (0.5, 1.0):
                    out[f"mean-vector context {win} ({bound}), w {w}; kw {kname}"] = mean_context(
                        lab, before, after, session, kw, w
                    )
    for session in (True, False):  # issue 23 step 2: candidates from the existing index only
        bound = "session" if session else "scope"
        k_ = {"base": 1.0, f"context -2{'' if session else ' (scope)'}": 0.5}
        for pool in (20, 64, 256):
            for w in (0.5,) if pool != 256 else (0.3, 0.5, 0.7):
                out[f"mean-vector context -2 ({bound}), w {w}; kw K; pool {pool}"] = mean_context(
                    lab, 2, 0, session, k_, w, pool
                )
    k_ = {"base": 1.0, "context -2": 0.5}
    for g in (0.1, 0.2):  # issue 23 step 2: anything cheap on top of the session mean vector
        out[f"mean-vector context -2 (session), w 0.5; kw K; pool 20; smoothing {g}"] = mean_context(
            lab, 2, 0, True, k_, 0.5, 20, g
        )
    out["mean-vector context -2 (session), w 0.5; kw K with the session date; pool 20"] = mean_context(
        lab, 2, 0, True, {"date": 1.0, "context -2": 0.5}, 0.5, 20
    )
    out["mean-vector context -2 (session), w 0.5; kw K + 0.3·date; pool 20"] = mean_context(
        lab, 2, 0, True, {**k_, "date": 0.3}, 0.5, 20
    )
    for penalty in (0.05, 0.1, 0.2):
        out[f"diversity: MMR by word overlap, penalty {penalty}"] = diverse(lab, penalty)
    for share in (0.3, 0.6):
        out[f"names: capitalised query words again, × {share}"] = names_boost(lab, share, True)
        out[f"names: capitalised query words but speakers, × {share}"] = names_boost(lab, share, False)
    out["PRF vector: q + 0.3·mean(top 2)"] = prf_vector(lab, 0.3, 2)
    for beta in (0.3, 0.5):
        out[f"PRF vector: q + {beta}·mean(top 3), first 5 kept"] = prf_vector(lab, beta, 3, keep=5)
    out["PRF vector: q + 0.2·mean(top 3)"] = prf_vector(lab, 0.2, 3)
    for g in (0.1, 0.2, 0.3):
        out[f"neighbour smoothing g={g} (candidates of the fusion)"] = smoothed(lab, g)
        out[f"neighbour smoothing g={g} (every turn a candidate)"] = smoothed_wide(lab, g)
    return out


TARGET = {"recall@5": 0.68, "recall@10": 0.76}  # issue 23's target over all questions


def main(
    make: Callable[[Lab], dict[str, Ranker]] = ideas,
    plot: str = "retrieval_ideas",
    title: str = "LoCoMo (development half): the best ideas, all questions",
    doc: str = __doc__,
) -> None:
    """Evaluate the rankers of ``make`` (``retrieval_dates.py`` passes its own) and print them."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--data", type=Path, default=R.DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, help="embedding cache file (default: a temporary one)")
    ap.add_argument("--only", help="a regular expression: evaluate only the ideas whose name matches")
    ap.add_argument(
        "--against", help="a regular expression: also compare each row with the first row it matches"
    )
    add_plot_options(ap)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-ideas-"))
    emb = Embedder(cache=EmbeddingCache(args.cache or tmp / "cache.sqlite"))
    t0 = time.perf_counter()
    lab = Lab(args.data, tmp, emb)
    print(f"{len(lab.questions)} questions; baseline store in {time.perf_counter() - t0:.0f} s", flush=True)
    keys = ["all", *map(str, R.CATEGORIES)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    change: dict[str, dict[str, float]] = {}
    head = " | ".join(f"{'all' if k == 'all' else R.CATEGORIES[int(k)]} r@5 / r@10" for k in keys)
    print(f"\n| idea | {head} | Δ r@10 [95% CI], questions up/down |\n|---|" + "---|" * (len(keys) + 1))
    base_rows = None
    per_q: dict[str, np.ndarray] = {}
    for name, rank in make(lab).items():
        if args.only and not re.search(args.only, name) and not name.startswith("baseline"):
            continue
        t, rows = evaluate(lab, rank)
        results[name] = t
        per_q[name] = rows
        base_rows = rows if base_rows is None else base_rows
        c = change[name] = R.paired(base_rows, rows)
        cells = " | ".join(f"{t[k]['recall@5']:.3f} / {t[k]['recall@10']:.3f}" for k in keys)
        print(
            f"| {name} | {cells} | {c['delta']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}],"
            f" {c['up']}/{c['down']} |",
            flush=True,
        )
    base = results["baseline: Memory.search (hybrid)"]
    lifts = [  # no category worse at 5 or 10, and a gain beyond the noise
        name
        for name, t in results.items()
        if all(t[k][m] >= base[k][m] - 1e-12 for k in keys for m in ("recall@5", "recall@10"))
        and change[name]["lo"] > 0
    ]
    print(
        f"\nlift the whole development half (no category worse at 5 or 10, 95% CI above 0): {lifts or 'none'}"
    )
    ref = next((n for n in per_q if args.against and re.search(args.against, n)), None)
    if ref is not None:
        print(f"\nΔ r@10 [95% CI], up/down against '{ref}':")
        for n, rows in per_q.items():
            c = R.paired(per_q[ref], rows)
            worse = [  # the keep rule's other half, against that row
                f"{'all' if k == 'all' else R.CATEGORIES[int(k)]} {m}"
                f" {results[n][k][m]:.4f} < {results[ref][k][m]:.4f}"
                for k in keys
                for m in ("recall@5", "recall@10")
                if results[n][k][m] < results[ref][k][m] - 1e-12
            ]
            print(
                f"  {n}: {c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}], {c['up']}/{c['down']};"
                f" worse: {', '.join(worse) or 'none'}"
            )
    reach = [n for n in lifts if all(results[n]["all"][m] >= v for m, v in TARGET.items())]
    print(f"of those, reach the target (recall@5 >= 0.68 and recall@10 >= 0.76): {reach or 'none'}")
    out: dict[str, Any] = {
        "questions": len(lab.questions),
        "results": results,
        "change": change,
        "lifts": lifts,
        "reach_target": reach,
    }
    shown = list(
        dict.fromkeys(
            [
                "baseline: Memory.search (hybrid)",
                *sorted(results, key=lambda n: -results[n]["all"]["recall@10"])[:11],
            ]
        )
    )
    bars(
        args,
        plot,
        title,
        shown,
        {m: [results[n]["all"][m] for n in shown] for m in ("recall@5", "recall@10")},
        ylabel="recall over the 760 questions",
        fmt="{:.3f}",
        horizontal=True,
        note=f"int8 MiniLM + SQLite BM25; index-side ideas: other stores (benchmarks/{plot}.py)",
    )
    for side in lab.sides.values():
        if side.memory is not lab.base:
            side.memory.close()
    lab.base.close()
    emb.close()
    print(json.dumps(out))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
