"""Where a cycle of grouped adds goes: N threads × ``Memory.add`` (the real model), traced.

    python benchmarks/add_cycle.py                    # 20 threads, 2,000 adds
    python benchmarks/add_cycle.py --threads 20 --adds 2000 --no-plots

The concurrent adds of one SQLite store run in groups (``hivemem.infra.grouping.Combiner``):
one lookup, one embed call, one group commit per group. This script times each stage of every
group from outside (wrappers around the store's lookup, the embed call, the group commit and
the search index's catch-up after it), and the engine's idle time between two embed calls: the
part of a cycle in which the engine waits for the threads (the write, the callers' wake-ups,
their next ``add``, the next lookup). Medians and means over the groups. Reports also the
``add_batch`` rate of as many other texts in the same process, for the ratio. Prints a table,
one JSON line, and a plot (docs/img/add_cycle.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plots import add_plot_options, bars
from threads import in_threads

STAGES = ("lookup", "embed", "commit", "catch_up", "upkeep", "write", "group")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=20)
    ap.add_argument("--adds", type=int, default=2000)
    add_plot_options(ap)
    args = ap.parse_args()

    from hivemem import Embedder, EmbeddingCache, Memory
    from hivemem.embed.corpus import sentences

    tmp = Path(tempfile.mkdtemp(prefix="hivemem-add-cycle-"))
    texts = sentences(2 * args.adds, seed=int(time.time()) % 10_000)
    emb = Embedder(cache=EmbeddingCache(tmp / "batch-cache.sqlite"))
    with Memory(tmp / "batch.sqlite", embedder=emb) as m:
        m.add("warm up", user_id="warm")
        t0 = time.perf_counter()
        m.add_batch([{"messages": t, "user_id": "bench"} for t in texts[: args.adds]])
        batch_rate = args.adds / (time.perf_counter() - t0)
    emb.close()

    emb = Embedder(cache=EmbeddingCache(tmp / "threads-cache.sqlite"))
    m = Memory(tmp / "threads.sqlite", embedder=emb)
    m.add("warm up", user_id="warm")
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)

    def timed(tag: str, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spans[tag].append((t0, time.perf_counter()))

        return wrapper

    storage, combiner = m._storage, m._combiner
    assert combiner is not None, "grouped adds need a SQLite store"
    storage.existing = timed("lookup", storage.existing)  # type: ignore[method-assign]
    storage.insert_many = timed("write", storage.insert_many)  # type: ignore[method-assign]
    storage._jobs._run = timed("commit", storage._jobs._run)
    storage._jobs._then = timed("catch_up", storage._jobs._then)
    if combiner._then is not None:  # the catch-up deferred to after the wake-ups (tried, dropped)
        combiner._then = timed("upkeep", combiner._then)
    emb.embed = timed("embed", emb.embed)  # type: ignore[method-assign]
    combiner._run = timed("group", combiner._run)
    groups0, calls0 = combiner.groups, combiner.calls
    t0 = time.perf_counter()
    in_threads(lambda part: [m.add(t, user_id="bench") for t in part], texts[args.adds :], args.threads)
    threads_rate = args.adds / (time.perf_counter() - t0)
    groups, calls = combiner.groups - groups0, combiner.calls - calls0
    m.close()
    emb.close()
    shutil.rmtree(tmp, ignore_errors=True)

    ms = {tag: [1e3 * (b - a) for a, b in spans[tag]] for tag in STAGES}
    embeds = sorted(spans["embed"])
    ms["engine_idle"] = [1e3 * (embeds[i + 1][0] - embeds[i][1]) for i in range(len(embeds) - 1)]
    result: dict[str, Any] = {
        "threads": args.threads, "adds": args.adds, "groups": groups,
        "adds_per_group": calls / max(groups, 1),
        "add_batch_rate": batch_rate, "threads_rate": threads_rate, "ratio": threads_rate / batch_rate,
        "median_ms": {k: statistics.median(v) for k, v in ms.items() if v},
        "mean_ms": {k: statistics.mean(v) for k, v in ms.items() if v},
    }  # fmt: skip
    per_group = f"{result['adds_per_group']:.1f} adds per group"
    print(f"\n| {args.threads} threads × add, {args.adds:,} adds, {per_group} | median ms | mean ms |")
    print("|---|---|---|")
    names = {
        "group": "a group (lookup + embed + write)", "lookup": "lookup of stored texts",
        "embed": "embed call", "write": "write (group commit + catch-up)", "commit": "group commit",
        "catch_up": "index catch-up in the commit",
        "upkeep": "index catch-up after the wake-ups",
        "engine_idle": "**engine idle between embed calls**",
    }  # fmt: skip
    for key, name in names.items():
        if key in result["median_ms"]:
            print(f"| {name} | {result['median_ms'][key]:.2f} | {result['mean_ms'][key]:.2f} |")
    print(f"| {args.threads} threads × add / add_batch | {result['ratio']:.3f} | |")
    print(json.dumps(result))
    keys = ["embed", "engine_idle", "write", "commit", "catch_up", "lookup"]
    bars(
        args, "add_cycle", f"{args.threads} threads × Memory.add: one group's stages",
        keys, {name: [result[f"{name}_ms"][k] for k in keys] for name in ("median", "mean")},
        ylabel="ms", fmt="{:.2f}", note=f"{args.threads} threads / add_batch = {result['ratio']:.2f}",
    )  # fmt: skip


if __name__ == "__main__":
    main()
