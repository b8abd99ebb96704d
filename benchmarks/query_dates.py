"""What dates named in a query cost a search (``keyword_dates``, issue 23; no model, no store).

    python benchmarks/query_dates.py [--rounds 5]

* **Reading the query** (``datewords.query_span``): µs per LoCoMo development question (their
  real shapes; how many name a date), and ms per query of the longest size (65,536 characters)
  built of near misses, the hostile case (the pattern's repetitions are bounded: linear).
* **The fusion** (``hybrid.fuse``) over 40 candidates (20 per side, with their ``created_at``):
  without a span (a query naming no date: the code path of every search before), and with a span
  10 of the candidates fall in. Rounds alternate the two; the ratio is within one round.

The storage side costs nothing: the boost reads the candidates' ``created_at``, which the search
already returns. Figures: docs/memory.md#what-was-built-dates-named-in-the-query-2026-12-06.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from plots import add_plot_options, bars
from retrieval import DEFAULT_DATA, load

from hivemem.embed.validate import MAX_TEXT_CHARS
from hivemem.memory import hybrid
from hivemem.memory.storage import datewords

HOSTILE = ["1 " * 4, "May ", "May 3,", "12 May ", "May 1 ", " " * 9, "mayday ", "May 12023 "]
HOSTILE += ["in ", "on the ", "12th of ", "in Jun's ", "in 20233 ", "Sept. 3rd ", "in the 3rd of "]


def per_call(fn: Callable[[], Any], repeat: int) -> float:
    """Seconds per call of ``fn``, the best of 3 timings of ``repeat`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def candidates(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """20 vector and 20 keyword candidates (10 shared), a quarter created on 3 May 2023."""
    rng = np.random.default_rng(seed)
    rows = [
        {"id": f"{i:05d}", "created_at": f"2023-05-0{3 + (i % 4 != 0)}T10:00:00.000000+00:00"}
        for i in range(30)
    ]
    vector = [{**r, "score": float(rng.uniform(0.1, 0.8))} for r in rows[:20]]
    keyword = [{**r, "score": float(rng.uniform(0.5, 6.0))} for r in rows[10:]]
    return vector, keyword, {r["id"]: float(rng.uniform(0.1, 0.8)) for r in rows[20:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    add_plot_options(ap)
    args = ap.parse_args()
    _, questions, _ = load(DEFAULT_DATA)
    texts = [q for _, q, _, _ in questions]
    named = sum(datewords.query_span(q) is not None for q in texts)
    hostile = [(p * (MAX_TEXT_CHARS // len(p) + 1))[:MAX_TEXT_CHARS] for p in HOSTILE]
    vector, keyword, cos = candidates(0)
    span = ("2023-05-03", "2023-05-03")
    rounds: dict[str, list[float]] = {
        k: [] for k in ("question_us", "hostile_ms", "fuse_us", "fuse_dated_us")
    }
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]  # alternate which fusion goes first
        for dated in order:
            s = span if dated else None
            t = per_call(lambda s=s: hybrid.fuse(vector, keyword, cos, 10, None, span=s, summed=True), 2000)
            rounds["fuse_dated_us" if dated else "fuse_us"].append(t * 1e6)
        rounds["question_us"].append(
            per_call(lambda: [datewords.query_span(q) for q in texts], 20) / len(texts) * 1e6
        )
        rounds["hostile_ms"].append(
            max(per_call(lambda h=h: datewords.query_span(h), 5) for h in hostile) * 1e3
        )
    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratio = statistics.median(d / p for d, p in zip(rounds["fuse_dated_us"], rounds["fuse_us"], strict=True))
    print(f"{len(texts)} LoCoMo questions, {named} name a date (datewords.query_span)\n")
    print("| measurement | median | rounds |\n|---|---|---|")
    for k, v in rounds.items():
        print(f"| {k} | {med[k]:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")
    print(f"| fuse with a span / without (same round) | {ratio:.2f}x | |")
    out = {"questions": len(texts), "named": named, "median": med, "fuse_ratio": ratio, "rounds": rounds}
    bars(
        args,
        "query_dates",
        "Dates named in a query: cost per search (µs)",
        ["read a question", "fuse, no date", "fuse, 10 of 40 dated"],
        {"µs": [med["question_us"], med["fuse_us"], med["fuse_dated_us"]]},
        ylabel="µs (median of rounds)",
        fmt="{:.1f}",
        note=f"hostile 65,536-char query: {med['hostile_ms']:.1f} ms (benchmarks/query_dates.py)",
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
