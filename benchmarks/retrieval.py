"""Retrieval quality on real long conversations: LoCoMo, development half.

    python benchmarks/retrieval.py                        # data: ../shared/data/locomo-dev
    python benchmarks/retrieval.py --data DIR --sweep     # also the grid the defaults came from
    python benchmarks/retrieval.py --backend both         # SQLite and PostgreSQL side by side
    python benchmarks/retrieval.py --backend postgres --url postgresql://…   # an existing server

Every turn of a conversation is one memory in that conversation's scope (``user_id`` = the
conversation), stored as ``"Speaker: text"`` with the turn's ``dia_id`` in its metadata; every
question of categories 1–4 is one ``search(question, user_id=…, top_k=10)``. The metric of the
LoCoMo paper's code: recall@k = the share of the question's evidence turns among the retrieved
ones, averaged over questions; hit@10 = at least one evidence turn in the top 10. Evidence ids
that name no turn are dropped ("D8:6; D9:17" is split), a question left without any is skipped.

Rows: ``vector``, ``keyword`` and ``hybrid`` (the default of ``Memory.search``) through hivemem
(its own int8 ONNX model), ``keyword + context`` and ``hybrid + context`` (SQLite: the same store
with ``keyword_context=True``), ``hybrid + both contexts`` (also ``vector_context=True``), each
context row with its paired bootstrap against hybrid and the keep rule (no category worse at 5 or
10, interval above 0), and the exact fp32 sentence-transformers reference
(brute force, torch). ``--runs`` adds each session with its own ``run_id`` (what Mem0 users do),
so that a window stays within its session. On the held-out half: ``--data DIR`` with its conversations.
``--dates`` adds each turn with its session's time as ``timestamp`` (LoCoMo's "1:56 pm on 8 May,
2023", read as UTC) and the rows ``hybrid + dates``, ``hybrid + context + dates`` and ``hybrid +
both contexts + dates`` (``keyword_dates=True``), each with its keep rule against hybrid and
against the same row without the date words.
``--sweep`` evaluates the alternatives the defaults were chosen from (tokenizers, stop
words, fusion rules and weights, candidate depths), on this development data only (SQLite).
``--backend postgres|both`` runs the same rows on PostgreSQL (a throwaway server from
``tests/pgtemp.py`` unless ``--url`` names one; the rows are labelled ``(postgres)``) and, with
``both``, how often the two backends return the same top 10 (the same texts in the same order)
and the mean overlap of the two top-10 sets, per mode; with ``--dates`` the option rows run on
PostgreSQL too (their rules are SQLite's) and get the same agreement. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from plots import add_plot_options, bars

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.memory import filters as flt
from hivemem.memory import hybrid
from hivemem.memory.storage import fts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "locomo-dev"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
K = 10

Question = tuple[str, str, int, set[str]]  # conversation, question, category, evidence dia_ids


def load(data: Path) -> tuple[dict[str, list[tuple[str, str]]], list[Question], int]:
    """Turns ``(dia_id, "Speaker: text")`` per conversation, the questions, and how many were skipped."""
    turns: dict[str, list[tuple[str, str]]] = {}
    questions: list[Question] = []
    skipped = 0
    files = sorted(data.glob("*.json"))
    if not files:
        raise SystemExit(f"no LoCoMo conversations (*.json) in {data}; pass --data DIR")
    for f in files:
        conv = json.loads(f.read_text())
        sessions = sorted(
            (int(k.split("_")[1]), v) for k, v in conv.items() if re.fullmatch(r"session_\d+", k)
        )
        mine = [(t["dia_id"], f"{t['speaker']}: {t['text']}") for _, sess in sessions for t in sess]
        turns[f.stem] = mine
        ids = {d for d, _ in mine}
        for qa in conv["qa"]:
            if qa.get("category") not in CATEGORIES:
                continue
            evidence = {e.strip() for x in qa.get("evidence", []) for e in re.split(r"[;,]", x)} & ids
            if not evidence:
                skipped += 1
                continue
            questions.append((f.stem, qa["question"], qa["category"], evidence))
    return turns, questions, skipped


class Scores:
    def __init__(self) -> None:
        self.rows: dict[Any, list[tuple[float, float, float]]] = defaultdict(list)

    def add(self, category: int, evidence: set[str], ranked: list[set[str]]) -> None:
        at5 = set().union(*ranked[:5]) if ranked else set()
        at10 = set().union(*ranked[:K]) if ranked else set()
        row = (
            len(evidence & at5) / len(evidence),
            len(evidence & at10) / len(evidence),
            float(bool(evidence & at10)),
        )
        self.rows[category].append(row)
        self.rows["all"].append(row)

    def table(self) -> dict[str, dict[str, float]]:
        out = {}
        for key, rows in self.rows.items():
            r5, r10, h10 = np.mean(rows, axis=0)
            out[str(key)] = {
                "recall@5": float(r5),
                "recall@10": float(r10),
                "hit@10": float(h10),
                "n": len(rows),
            }
        return out


def session_times(data: Path) -> dict[str, dict[str, float]]:
    """Per conversation, each session's time (``D3`` → Unix seconds): LoCoMo's
    ``session_3_date_time`` ("1:56 pm on 8 May, 2023"), read as UTC."""
    out: dict[str, dict[str, float]] = {}
    for f in sorted(data.glob("*.json")):
        conv = json.loads(f.read_text())
        out[f.stem] = {
            f"D{k.split('_')[1]}": datetime.strptime(v, "%I:%M %p on %d %B, %Y")
            .replace(tzinfo=UTC)
            .timestamp()
            for k, v in conv.items()
            if re.fullmatch(r"session_\d+_date_time", k)
        }
    return out


def fill(
    m: Memory,
    turns: dict[str, list[tuple[str, str]]],
    runs: bool = False,
    times: dict[str, dict[str, float]] | None = None,
) -> dict[str, list[str]]:
    """Store every turn; → memory id → the dia_ids it stands for (a repeated text is one memory
    per scope). ``runs``: each session with its own ``run_id`` (``D3:7`` → ``D3``), as Mem0 users
    add conversations; the searches still name only the ``user_id``. ``times``
    (``session_times``): each turn added with its session's ``timestamp``."""
    dia: dict[str, list[str]] = defaultdict(list)
    for conv, mine in turns.items():
        items: list[dict[str, Any]] = [
            {"messages": text, "user_id": conv, "metadata": {"dia_id": d}} for d, text in mine
        ]
        for item, (d, _) in zip(items, mine, strict=True):
            if runs:
                item["run_id"] = d.split(":")[0]
            if times is not None:
                item["timestamp"] = times[conv][d.split(":")[0]]
        for (d, _), res in zip(mine, m.add_batch(items)["results"], strict=True):
            dia[res["id"]].append(d)
    return dia


def evaluate(
    questions: list[Question], rank: Callable[[str, str, int], list[str]], dia: dict[str, list[str]]
) -> Scores:
    scores = Scores()
    for i, (conv, question, category, evidence) in enumerate(questions):
        ids = rank(conv, question, i)
        scores.add(category, evidence, [set(dia[x]) for x in ids])
    return scores


def reference(turns: dict[str, list[tuple[str, str]]], questions: list[Question]) -> Scores | None:
    """Exact fp32 sentence-transformers, brute force within the conversation."""
    try:
        st = Embedder(backend="sentence-transformers", cache=False, batching=False)
    except ImportError as exc:
        print(f"  no sentence-transformers reference: {exc}")
        return None
    with st:
        vecs = {conv: st.embed([t for _, t in mine]) for conv, mine in turns.items()}
        qv = st.embed([q for _, q, _, _ in questions])
    scores = Scores()
    for (conv, _, category, evidence), q in zip(questions, qv, strict=True):
        order = np.argsort(-(vecs[conv] @ q), kind="stable")[:K]
        scores.add(category, evidence, [{turns[conv][i][0]} for i in order])
    return scores


# -- the sweep: the alternatives the defaults were chosen from --------------------------------------


def sweep(
    m: Memory, questions: list[Question], qvecs: np.ndarray, dia: dict[str, list[str]]
) -> dict[str, float]:
    storage = m._storage
    out: dict[str, float] = {}
    cache: dict[tuple[Any, ...], Any] = {}
    scorer = ["default"]

    def fts5_bm25(conv: str, terms: list[str], depth: int) -> list[dict[str, Any]]:
        """The alternative keyword scorer: FTS5's own bm25() (statistics of the whole store)."""
        if not terms:
            return []
        token = fts.scope_tokens(flt.parse({"user_id": conv}))[0]
        rows = (
            storage._db()
            .execute(
                "SELECT m.id, -bm25(memories_fts, 1.0, 0.0) FROM memories_fts JOIN memories m"
                " ON m.rid = memories_fts.rowid WHERE memories_fts MATCH ?"
                " ORDER BY bm25(memories_fts, 1.0, 0.0) LIMIT ?",
                (f"scope : {fts.quote(token)} AND {fts.body_match(terms)}", depth),
            )
            .fetchall()
        )
        return [{"id": i, "score": sc} for i, sc in rows if sc > 0]

    def sides(
        conv: str, question: str, i: int, depth: int
    ) -> tuple[list[dict], list[dict], dict[str, float]]:
        key = (fts.LAYOUT, hybrid.STOP_WORDS is _NO_STOP, scorer[0], conv, i, depth)
        if key not in cache:
            where = flt.parse({"user_id": conv})
            v = storage.search(qvecs[i], where, depth, None)
            if scorer[0] == "bm25":
                kw = fts5_bm25(conv, hybrid.query_terms(question), depth)
            else:
                kw = storage.keyword_search(hybrid.query_terms(question), where, depth)
            seen = {h["id"] for h in v}
            cos = storage.cosines([h["id"] for h in kw if h["id"] not in seen], qvecs[i])
            cache[key] = (v, kw, cos)
        return cache[key]

    def keyword_only(conv: str, question: str, i: int) -> list[str]:
        return [h["id"] for h in sides(conv, question, i, 50)[1][:K]]

    def fused(rule: str, depth: int, p: float) -> Callable[[str, str, int], list[str]]:
        def rank(conv: str, question: str, i: int) -> list[str]:
            v, kw, cos = sides(conv, question, i, depth)
            if rule == "default":
                return [h["id"] for h in hybrid.fuse(v, kw, cos, K, None, weight=p)]
            allcos = {**{h["id"]: h["score"] for h in v}, **cos}
            score: dict[str, float] = defaultdict(float)
            if rule == "rrf":
                for r, h in enumerate(v):
                    score[h["id"]] += 1 / (p + r + 1)
                for r, h in enumerate(kw):
                    score[h["id"]] += 1 / (p + r + 1)
            elif rule == "minmax":
                lo, hi = (v[-1]["score"], v[0]["score"]) if v else (0, 1)
                kmax = max((h["score"] for h in kw), default=1)
                kws = {h["id"]: h["score"] / kmax for h in kw}
                for x, c in allcos.items():
                    score[x] = p * (c - lo) / (hi - lo + 1e-9) + (1 - p) * kws.get(x, 0)
            elif rule == "mem0":  # Mem0 2.x: semantic candidates only, sigmoid-normalised BM25 added
                n = len(hybrid.query_terms(question))
                mid, steep = (5, 0.7) if n <= 3 else (7, 0.6) if n <= 6 else (9, 0.5) if n <= 9 else (10, 0.5)
                kws = {h["id"]: h["score"] for h in kw}
                for h in v:
                    bonus = 1 / (1 + math.exp(-steep * (kws[h["id"]] - mid))) if h["id"] in kws else 0
                    score[h["id"]] = h["score"] + bonus
            return sorted(score, key=lambda x: (-score[x], x))[:K]

        return rank

    def run(name: str, rank: Callable[[str, str, int], list[str]]) -> None:
        r = evaluate(questions, rank, dia).table()["all"]["recall@10"]
        out[name] = r
        print(f"  {name:<58} recall@10 {r:.4f}", flush=True)

    default_stop, layout = hybrid.STOP_WORDS, fts.LAYOUT
    scorer[0] = "bm25"
    run("keyword: FTS5 bm25() (store-wide statistics, length-normalised)", keyword_only)
    run(
        "hybrid (default rule) over FTS5 bm25()",
        fused("default", hybrid.candidates(K), hybrid.KEYWORD_WEIGHT),
    )
    scorer[0] = "default"
    for tokenizer in ("unicode61 remove_diacritics 2", "trigram", fts.TOKENIZER):
        fts.TOKENIZER, fts.LAYOUT = tokenizer, f"sweep {tokenizer}"
        m._storage = storage = type(storage)(storage.path)  # re-opening rebuilds the FTS index
        storage.bind_model(m.embedder.model_id, m.embedder.dim)
        for stop in (False, True):
            hybrid.STOP_WORDS = default_stop if stop else _NO_STOP
            label = f"{tokenizer}, {'stop words dropped' if stop else 'all words'}"
            run(f"keyword: {label}", keyword_only)
            run(
                f"hybrid (default rule): {label}",
                fused("default", hybrid.candidates(K), hybrid.KEYWORD_WEIGHT),
            )
    hybrid.STOP_WORDS = default_stop
    for depth in (10, 20, 30, 50, 100):
        for w in (0.25, 0.3, 0.35, 0.4, 0.5, 0.6):
            run(f"cos + w·kw/max, depth {depth}, w {w}", fused("default", depth, w))
        for a in (0.3, 0.4, 0.5):
            run(f"min-max convex, depth {depth}, a {a}", fused("minmax", depth, a))
        for k in (5, 20, 60):
            run(f"RRF, depth {depth}, k {k}", fused("rrf", depth, k))
    run("Mem0 2.x rule (semantic candidates + sigmoid BM25), depth 60", fused("mem0", 60, 0))
    fts.LAYOUT = layout
    return out


_NO_STOP: frozenset[str] = frozenset()


def run_modes(
    m: Memory, questions: list[Question], dia: dict[str, list[str]]
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float], dict[str, list[list[str]]]]:
    """Every question in each mode → (score tables, ms per search, the top-10 texts per question)."""
    results, timing, tops = {}, {}, {}
    for mode in ("vector", "keyword", "hybrid"):
        got: list[list[str]] = []

        def rank(conv: str, q: str, i: int, mode: str = mode, got: list[list[str]] = got) -> list[str]:
            hits = m.search(q, user_id=conv, top_k=K, mode=mode)["results"]
            got.append([h["memory"] for h in hits])
            return [h["id"] for h in hits]

        t0 = time.perf_counter()
        scores = evaluate(questions, rank, dia)
        timing[mode] = 1000 * (time.perf_counter() - t0) / len(questions)
        results[mode], tops[mode] = scores.table(), got
    return results, timing, tops


def paired(base: np.ndarray, new: np.ndarray, rounds: int = 2000) -> dict[str, float]:
    """recall@10 change of ``new`` against ``base`` (per-question ``(recall@5, recall@10)`` rows):
    a 95% paired bootstrap interval over questions, and how many questions gained or lost (a
    change inside the interval's noise is not a lift)."""
    d = new[:, 1] - base[:, 1]
    rng = np.random.default_rng(0)
    means = [float(d[rng.integers(0, len(d), len(d))].mean()) for _ in range(rounds)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "delta": float(d.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "up": int((d > 0).sum()),
        "down": int((d < 0).sum()),
    }


DATED = ("hybrid + dates", "hybrid + context + dates", "hybrid + both contexts + dates")
SHARE_07 = "hybrid + both contexts + dates, vector share 0.7"  # the research's share (docs/memory.md)
TARGET = {"recall@5": 0.68, "recall@10": 0.76}  # issue 23's target over all questions


def with_context(
    location: str,
    emb: Embedder,
    questions: list[Question],
    dia: dict[str, list[str]],
    dates: bool = False,
    tops: dict[str, list[list[str]]] | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float], dict[str, Any], dict[str, Any]]:
    """The same store searched with ``keyword_context=True`` and with both ``keyword_context``
    and ``vector_context`` (each memory's window: the turn and the two before it, and for the
    keyword context the two after it too, in its scope: the conversation, or with ``--runs`` its
    session) → score tables, ms per search, and for each
    the rule for keeping it: no category worse at 5 or 10 than plain hybrid, and the paired
    interval of the recall@10 change above 0. ``dates`` (``--dates``): also each of the hybrid
    rows with ``keyword_dates=True`` (the store re-indexed once; dates named in the questions boost
    too), each with its rule (in ``rules``, the fourth item then being a dict of all the rules by
    row), and the built row with the vector context's share 0.7 instead of
    ``hybrid.VECTOR_CONTEXT_SHARE`` (set on the open store: the research's value). ``tops``: gets
    each row's top-10 texts per question (for the backends' agreement)."""
    rows: dict[str, Scores] = {}
    timing: dict[str, float] = {}
    plan = [
        ("hybrid", False, False, False),
        ("keyword + context", True, False, False),
        ("hybrid + context", True, False, False),
        ("hybrid + both contexts", True, True, False),
    ]
    if dates:
        plan += [(name, "context" in name, "both" in name, True) for name in (*DATED, SHARE_07)]
    for name, context, vector, dated in plan:
        options = {"keyword_context": context, "vector_context": vector, "keyword_dates": dated}
        with Memory(location, embedder=emb, **options) as mc:
            mode = name.split(" ")[0]
            if name == SHARE_07:
                mc._storage.vector_context = 0.7

            got: list[list[str]] = []
            if tops is not None:
                tops[name] = got

            def rank(
                conv: str, q: str, i: int, mc: Memory = mc, mode: str = mode, got: list[list[str]] = got
            ) -> list[str]:
                hits = mc.search(q, user_id=conv, top_k=K, mode=mode)["results"]
                got.append([h["memory"] for h in hits])
                return [h["id"] for h in hits]

            t0 = time.perf_counter()
            rows[name] = evaluate(questions, rank, dia)
            timing[name] = 1000 * (time.perf_counter() - t0) / len(questions)
    rules: dict[str, Any] = {}
    for name in (*DATED, SHARE_07) if dates else ():
        rules[name] = keep_rule(rows["hybrid"], rows[name])
        rules[name]["target"] = all(rows[name].table()["all"][m] >= v for m, v in TARGET.items())
        undated = name.removesuffix(" + dates").removesuffix(" + dates, vector share 0.7")
        if undated != "hybrid":  # and on top of the same row without the date words
            rules[f"{name} vs {undated}"] = keep_rule(rows[undated], rows[name])
    return (
        {n: r.table() for n, r in rows.items() if n != "hybrid"},
        {n: t for n, t in timing.items() if n != "hybrid"},
        keep_rule(rows["hybrid"], rows["hybrid + context"]),
        {"hybrid + both contexts": keep_rule(rows["hybrid"], rows["hybrid + both contexts"]), **rules},
    )


def keep_rule(before: Scores, after: Scores) -> dict[str, Any]:
    """No category worse at 5 or 10, and the paired interval of the recall@10 change above 0."""
    base, new = before.table(), after.table()
    change = paired(np.array(before.rows["all"])[:, :2], np.array(after.rows["all"])[:, :2])
    worse = [f"{k} {m}" for k in base for m in ("recall@5", "recall@10") if new[k][m] < base[k][m] - 1e-12]
    return {"change_recall@10": change, "categories_worse": worse, "kept": not worse and change["lo"] > 0}


def agreement(a: list[list[str]], b: list[list[str]]) -> dict[str, float]:
    """Share of questions with the same top 10 (same order), and the mean overlap of the sets."""
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    overlap = float(
        np.mean([len(set(x) & set(y)) / max(len(x), len(y), 1) for x, y in zip(a, b, strict=True)])
    )
    return {"identical_top10": same, "overlap@10": overlap}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the LoCoMo development conversations")
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite")
    ap.add_argument("--url", help="postgresql://… of a server with pgvector (default: a throwaway one)")
    ap.add_argument("--sweep", action="store_true", help="also evaluate the alternatives to the defaults")
    ap.add_argument("--no-reference", action="store_true", help="skip the sentence-transformers reference")
    ap.add_argument("--runs", action="store_true", help="add each session with its own run_id")
    ap.add_argument(
        "--dates", action="store_true", help="add turns with their session's timestamp; keyword_dates rows"
    )
    add_plot_options(ap)
    args = ap.parse_args()
    turns, questions, skipped = load(args.data)
    print(
        f"LoCoMo dev: {len(turns)} conversations, {sum(map(len, turns.values()))} turns, "
        f"{len(questions)} questions of categories 1-4 ({skipped} without a valid evidence turn skipped)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-retrieval-"))
    emb = Embedder(cache=EmbeddingCache(tmp / "cache.sqlite"))
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    server = None
    if "postgres" in backends and not args.url:
        sys.path.insert(0, str(ROOT / "tests"))  # the test suite's throwaway server
        from pgtemp import TempPostgres

        server = TempPostgres()
        args.url = server.start()
    results: dict[str, dict[str, dict[str, float]]] = {}
    timing: dict[str, float] = {}
    tops: dict[str, dict[str, list[list[str]]]] = {}
    stores: dict[str, Memory] = {}
    dias: dict[str, dict[str, list[str]]] = {}
    schema = f"retrieval_{os.getpid()}"
    for backend in backends:
        if backend == "sqlite":
            location = str(tmp / "locomo.sqlite")
        else:
            location = f"{args.url}{'&' if '?' in args.url else '?'}schema={schema}"
        m = stores[backend] = Memory(location, embedder=emb)
        t0 = time.perf_counter()
        dia = dias[backend] = fill(m, turns, args.runs, session_times(args.data) if args.dates else None)
        print(f"{backend}: stored in {time.perf_counter() - t0:.1f} s (embedding included)", flush=True)
        if backend == backends[0]:
            qvecs = emb.embed([q for _, q, _, _ in questions])  # cached: searches embed nothing new
        res, tim, tops[backend] = run_modes(m, questions, dia)
        label = "" if backend == backends[0] else f" ({backend})"
        for mode in res:
            results[mode + label], timing[mode + label] = res[mode], tim[mode]
        if backend == "sqlite" or args.dates:  # the options (issue 23); PostgreSQL with --dates only
            m.close()  # the rows with options reopen it (a re-index with --dates)
            res, tim, rule, more = with_context(location, emb, questions, dia, args.dates, tops[backend])
            if backend == "sqlite":
                context_rule, rules = rule, more
                vector_rule = rules.pop("hybrid + both contexts")
            m = stores[backend] = Memory(location, embedder=emb)
            results.update({n + label: r for n, r in res.items()})
            timing.update({n + label: t for n, t in tim.items()})
    m, dia = stores[backends[0]], dias[backends[0]]
    if not args.no_reference:
        ref = reference(turns, questions)
        if ref is not None:
            results["exact fp32 reference"] = ref.table()
    keys = ["all", *map(str, CATEGORIES)]
    print(
        "\n| method | "
        + " | ".join(
            f"{'all' if k == 'all' else CATEGORIES[int(k)]} (n={results['hybrid'][k]['n']})"
            " r@5 / r@10 / hit@10"
            for k in keys
        )
        + " |"
    )
    print("|---|" + "---|" * len(keys))
    for name, table in results.items():
        cells = [
            f"{t['recall@5']:.3f} / {t['recall@10']:.3f} / {t['hit@10']:.3f}"
            for t in (table[k] for k in keys)
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    out: dict[str, Any] = {
        "questions": len(questions),
        "skipped": skipped,
        "backends": backends,
        "results": results,
        "ms_per_search": timing,
    }
    if "sqlite" in backends:
        out["keyword_context"], out["vector_context"] = context_rule, vector_rule
        if args.dates:
            out["keyword_dates"] = rules
        for name, rule in (("hybrid + context", context_rule), ("hybrid + both contexts", vector_rule),
                           *rules.items()):  # fmt: skip
            c = rule["change_recall@10"]
            against = name.replace(" vs ", " against ") if " vs " in name else f"{name} against hybrid"
            print(
                f"\n{against}: recall@10 {c['delta']:+.3f} [95% CI {c['lo']:+.3f},"
                f" {c['hi']:+.3f}], questions up/down {c['up']}/{c['down']}; categories worse:"
                f" {', '.join(rule['categories_worse']) or 'none'}; kept: {rule['kept']}"
                + (f"; target r@5 >= 0.68 and r@10 >= 0.76: {rule['target']}" if "target" in rule else "")
            )
    if len(backends) == 2:
        out["agreement"] = {
            mode: agreement(tops["sqlite"][mode], tops["postgres"][mode])
            for mode in tops["sqlite"]
            if mode in tops["postgres"]
        }
        print("\n| mode | identical top-10, SQLite vs PostgreSQL | mean overlap@10 |\n|---|---|---|")
        for mode, a in out["agreement"].items():
            print(f"| {mode} | {a['identical_top10']:.3f} | {a['overlap@10']:.3f} |")
    ref_r10 = results.get("exact fp32 reference", {}).get("all", {}).get("recall@10")
    if ref_r10:
        out["hybrid_vs_reference_recall@10"] = results["hybrid"]["all"]["recall@10"] / ref_r10
    out["targets"] = {
        "hybrid_recall@10>=1.30x_reference": out["hybrid_vs_reference_recall@10"] >= 1.30
        if ref_r10
        else None,
        "hybrid>=max(vector,keyword)_every_category": all(
            results["hybrid"][k]["recall@10"] + 1e-12
            >= max(results["vector"][k]["recall@10"], results["keyword"][k]["recall@10"])
            for k in keys
        ),
    }
    print(
        f"\nhybrid recall@10 / reference: {out.get('hybrid_vs_reference_recall@10', float('nan')):.3f}; "
        f"ms per search (query embedding cached): {', '.join(f'{k} {v:.1f}' for k, v in timing.items())}"
    )
    bars(
        args,
        "retrieval_locomo",
        "LoCoMo (development half): recall@10 by question category",
        [f"{'all' if k == 'all' else CATEGORIES[int(k)]} ({results['hybrid'][k]['n']})" for k in keys],
        {name: [table[k]["recall@10"] for k in keys] for name, table in results.items()},
        ylabel="recall@10 (questions per category in brackets)",
        fmt="{:.2f}",
        horizontal=True,
        note="vector/hybrid: hivemem's int8 ONNX model; reference: fp32 sentence-transformers, brute force",
    )
    if args.sweep:
        if backends[0] != "sqlite":
            raise SystemExit("--sweep evaluates SQLite's alternatives: use --backend sqlite or both")
        print("\nsweep (recall@10 over all questions; development data only):")
        out["sweep"] = sweep(m, questions, qvecs, dia)
    for store in stores.values():
        store.close()
    emb.close()
    if server is not None:
        server.stop()
    elif "postgres" in backends:  # a server of someone else's: remove the schema made here
        import psycopg

        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print(json.dumps(out))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
