"""Concurrent searches in one process: N threads × ``Memory.search`` against one thread alone.

    python benchmarks/search_threads.py                        # 10k memories, 100 users, 8 threads
    python benchmarks/before_after.py --before main -- search_threads.py --rounds 5

The store holds ``--memories`` sentences (``hivemem.embed.corpus``, so the keyword side has real
words to match) spread over ``--users`` users; each search is a hybrid search of a new sentence in
one user's scope (``--fill-batch``: the store filled that many rows per commit, timed as
``fill_s``). **No model**: the embedder is a table of random unit vectors (384 wide, as
MiniLM), computed before timing, so the figures are the store's and Python's, not the engine's
(the search cost does not depend on the vectors' values). Each round times one thread over
``--searches`` queries and ``--threads`` threads over as many others, in alternating order (A B,
B A, …) so that the load of a shared machine falls on both; the ratio is taken within a round and
the median over rounds reported, with the CPU time and voluntary context switches per search
(the GIL hand-offs: a search that lets go of the GIL often makes many when threads wait for it).
Prints a table, one JSON line (``gil``: whether the GIL was on, ``sys._is_gil_enabled()``), and a
plot (docs/img/search_threads.png).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plots import add_plot_options, bars
from threads import in_threads

DIM = 384


class TableEmbedder:
    """NOT a model: a random unit vector per text, all made before timing (see the docstring).
    Also a ``hivemem.embed.protocol.Backend`` (``encode``), so that ``hivemem.Embedder`` can run
    its queue and cache over it without a model (``memory_threads.py --no-model``)."""

    model_id = "bench/random-table-384"
    dim = DIM
    truncated = 0

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}

    def learn(self, texts: Sequence[str], seed: int) -> np.ndarray:
        vecs = np.random.default_rng(seed).standard_normal((len(texts), DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        self.table.update(zip(texts, vecs, strict=True))
        return vecs

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])

    def embed_one(self, text: str) -> np.ndarray:
        return self.table[text]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.embed(texts)

    def close(self) -> None:
        pass


def filled_store(
    tmp: Path, emb: TableEmbedder, memories: int, users: int, fill_batch: int = 0
) -> tuple[Any, float]:
    """A SQLite ``Memory`` in ``tmp`` holding ``memories`` corpus sentences over ``users`` users,
    written through the storage layer ``fill_batch`` rows per commit (0: one commit), and the
    seconds the fill took."""
    from hivemem import Memory
    from hivemem.embed.corpus import sentences
    from hivemem.memory.records import prepare

    memory = Memory(tmp / "m.sqlite", embedder=emb)
    texts = sentences(memories, seed=1)
    new = [m for i, t in enumerate(texts) for m in prepare(t, user_id=f"user{i % users}")]
    vecs, step = emb.learn(texts, seed=1), fill_batch or len(new)
    took = time.perf_counter()
    for i in range(0, len(new), step):  # one commit each (the keyword index's segments follow)
        memory._storage.insert(new[i : i + step], vecs[i : i + step])
    return memory, time.perf_counter() - took


def timed(fn: Any, items: list[Any], threads: int) -> dict[str, float]:
    """Searches/s of ``threads`` threads over ``items``, CPU ms and voluntary switches per search."""
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    took = in_threads(lambda part: [fn(*x) for x in part], items, threads)
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    n = len(items)
    return {"rate": n / took, "cpu_ms": 1e3 * (c1 - c0) / n, "switches": (r1.ru_nvcsw - r0.ru_nvcsw) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--searches", type=int, default=600, help="searches per timing")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", default="hybrid", choices=("hybrid", "vector", "keyword"))
    ap.add_argument("--fill-batch", type=int, default=0, help="rows per insert (0: all in one, the default)")
    add_plot_options(ap)
    args = ap.parse_args()

    from hivemem.embed.corpus import sentences

    emb = TableEmbedder()
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-search-threads-"))
    memory, fill_s = filled_store(tmp, emb, args.memories, args.users, args.fill_batch)
    queries = sentences(2 * args.searches * args.rounds + 1, seed=2)
    emb.learn(queries, seed=2)
    items = [(q, f"user{i % args.users}") for i, q in enumerate(queries)]
    memory.search(items.pop()[0], user_id="user0", mode=args.mode)  # the index is built here

    def search(query: str, user: str) -> None:
        memory.search(query, user_id=user, mode=args.mode)

    runs: list[dict[str, Any]] = []
    n = args.searches
    for r in range(args.rounds):
        chunk = items[2 * n * r : 2 * n * (r + 1)]
        order = [(1, chunk[:n]), (args.threads, chunk[n:])]
        got = {t: timed(search, part, t) for t, part in (order if r % 2 == 0 else order[::-1])}
        one, many = got[1], got[args.threads]
        runs.append({"one": one, "many": many, "ratio": many["rate"] / one["rate"]})
        print(f"  round {r}: 1 thread {one['rate']:.0f}/s, {args.threads} threads {many['rate']:.0f}/s,"
              f" ratio {runs[-1]['ratio']:.2f}", flush=True)  # fmt: skip
    memory.close()
    shutil.rmtree(tmp, ignore_errors=True)

    def med(get: Any) -> float:
        return statistics.median(get(x) for x in runs)

    result = {
        "memories": args.memories, "users": args.users, "threads": args.threads, "mode": args.mode,
        "rounds": args.rounds, "fill_batch": args.fill_batch, "fill_s": fill_s,
        "one_rate": med(lambda x: x["one"]["rate"]),
        "many_rate": med(lambda x: x["many"]["rate"]), "ratio": med(lambda x: x["ratio"]),
        "one_cpu_ms": med(lambda x: x["one"]["cpu_ms"]), "many_cpu_ms": med(lambda x: x["many"]["cpu_ms"]),
        "one_switches": med(lambda x: x["one"]["switches"]),
        "many_switches": med(lambda x: x["many"]["switches"]),
        # steadier than the rates on a crowded box (where N runnable threads draw more CPU than one)
        "cpu_ratio": med(lambda x: x["many"]["cpu_ms"] / x["one"]["cpu_ms"]),
        "gil": getattr(sys, "_is_gil_enabled", lambda: True)(),  # after every import (3.13t: may be off)
    }  # fmt: skip
    t = args.threads
    print(f"\n| {args.mode} search, {args.memories:,} memories / {args.users} users, no model"
          f" (median of {args.rounds} rounds) | 1 thread | {t} threads |")  # fmt: skip
    print("|---|---|---|")
    print(f"| searches/s | {result['one_rate']:.0f} | {result['many_rate']:.0f} |")
    print(f"| CPU ms per search | {result['one_cpu_ms']:.2f} | {result['many_cpu_ms']:.2f} |")
    switches = f"{result['one_switches']:.1f} | {result['many_switches']:.1f}"
    print(f"| voluntary context switches per search | {switches} |")
    print(f"| CPU per search, {t} threads / 1 thread (within a round) | | {result['cpu_ratio']:.2f} |")
    print(f"| **{t} threads / 1 thread** (ratio within a round) | | **{result['ratio']:.2f}** |")
    print(json.dumps(result))
    note = f"no model; median of {args.rounds} rounds; {t} threads / 1 = {result['ratio']:.2f}"
    bars(
        args, "search_threads", f"{args.mode} search, {args.memories:,} memories, {t} threads vs 1",
        ["searches/s"], {"1 thread": [result["one_rate"]], f"{t} threads": [result["many_rate"]]},
        ylabel="searches/s", note=note,
    )  # fmt: skip


if __name__ == "__main__":
    main()
