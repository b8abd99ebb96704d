"""A caller that does not come back: what the grouped searches' wait costs a steady searcher.

    python benchmarks/search_sporadic.py
    python benchmarks/before_after.py --before main -- search_sporadic.py --rounds 3

Concurrent searches of one SQLite store run in groups, and the next group waits (up to
``hivemem.memory.searching.SEARCH_WAIT_MS``) for as many callers as the last group served. Its
worst case: one thread searching in a loop, and another that searches once every ``--pause-ms``
(an HTTP client that sends a request now and then). Each of the second thread's searches may put
both in one group, after which the first thread's next search waits for a caller that sleeps.
The store and queries are those of ``search_threads.py`` (10,000 memories over 100 users, hybrid
search, **no model**: a table of random unit vectors). Each round runs both threads for
``--seconds``; reported: searches per second and latency p50 / p99 of each thread (medians over
rounds). Prints a table, one JSON line, and a plot (docs/img/search_sporadic.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plots import add_plot_options, bars
from search_threads import TableEmbedder, filled_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument(
        "--pause-ms", type=float, default=5.0, help="the sporadic thread's sleep between searches"
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="per round")
    ap.add_argument("--rounds", type=int, default=3)
    add_plot_options(ap)
    args = ap.parse_args()

    from hivemem.embed.corpus import sentences

    emb = TableEmbedder()
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-search-sporadic-"))
    memory, _ = filled_store(tmp, emb, args.memories, args.users)
    queries = sentences(4000, seed=2)
    emb.learn(queries, seed=2)
    memory.search(queries[0], user_id="user0")  # the index is built here

    def one_round() -> dict[str, dict[str, float]]:
        stop = time.monotonic() + args.seconds
        took: dict[str, list[float]] = {"steady": [], "sporadic": []}

        def run(kind: str, start: int, pause: float) -> None:
            i = start
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                memory.search(queries[i % len(queries)], user_id=f"user{i % args.users}")
                took[kind].append(1e3 * (time.perf_counter() - t0))
                i += 2
                if pause:
                    time.sleep(pause)

        threads = [
            threading.Thread(target=run, args=("steady", 0, 0.0)),
            threading.Thread(target=run, args=("sporadic", 1, args.pause_ms / 1000)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = {}
        for kind, ms in took.items():
            ms.sort()
            out[kind] = {
                "rate": len(ms) / args.seconds,
                "p50_ms": statistics.median(ms),
                "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
            }
        return out

    runs = []
    for r in range(args.rounds):
        runs.append(one_round())
        s = runs[-1]["steady"]
        print(f"  round {r}: steady {s['rate']:.0f}/s p50 {s['p50_ms']:.2f} ms", flush=True)
    memory.close()
    shutil.rmtree(tmp, ignore_errors=True)

    result: dict[str, Any] = {"pause_ms": args.pause_ms, "seconds": args.seconds, "rounds": args.rounds}
    for kind in ("steady", "sporadic"):
        for key in ("rate", "p50_ms", "p99_ms"):
            result[f"{kind}_{key}"] = statistics.median(x[kind][key] for x in runs)
    what = f"one thread searching in a loop, one every {args.pause_ms:g} ms (median of {args.rounds} rounds)"
    print(f"\n| {what} | searches/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for kind in ("steady", "sporadic"):
        rate, p50, p99 = (result[f"{kind}_{key}"] for key in ("rate", "p50_ms", "p99_ms"))
        print(f"| {kind} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")
    print(json.dumps(result))
    bars(
        args, "search_sporadic", f"a steady searcher beside one every {args.pause_ms:g} ms",
        ["p50 ms", "p99 ms"],
        {k: [result[f"{k}_p50_ms"], result[f"{k}_p99_ms"]] for k in ("steady", "sporadic")},
        ylabel="ms", fmt="{:.2f}", note=f"steady: {result['steady_rate']:.0f} searches/s",
    )  # fmt: skip


if __name__ == "__main__":
    main()
