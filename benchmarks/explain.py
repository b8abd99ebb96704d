"""What ``search(..., explain=True)`` costs: search p50 with and without it, in one run.

    python benchmarks/explain.py                          # SQLite, 20,000 memories, 200 queries
    python benchmarks/explain.py --backend both --size 100000

``--size`` corpus sentences are written through the storage layer with random unit vectors (the
keyword side is real text); the queries are other corpus sentences, embedded by the real model
once and then served from an embedding cache, so that the store and the fusion are what is timed.
Each query runs with ``explain=False`` and ``explain=True`` back to back, the order alternating
query by query (the machine's noise hits both alike), in each mode, ``top_k=10``. Reported: the
p50 of each and their ratio. The ``explain=False`` path does no work for the details (one flag
check), so its cost against the code before explain existed is that of an ``if``.

The PostgreSQL server is the test suite's throwaway one (``tests/pgtemp.py``) unless
``HIVEMEM_BENCH_PG_DSN`` names one. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from plots import add_plot_options, bars

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.embed.corpus import sentences
from hivemem.memory.records import prepare

ROOT = Path(__file__).resolve().parents[1]
MODES = ("hybrid", "vector", "keyword")


def _location(backend: str, tmp: Path, dsn: str) -> str:
    if backend == "sqlite":
        return str(tmp / f"{uuid.uuid4().hex[:8]}.sqlite")
    return f"{dsn}{'&' if '?' in dsn else '?'}schema=bench_{uuid.uuid4().hex[:8]}"


def measure(backend: str, emb: Embedder, tmp: Path, dsn: str, size: int, queries: int) -> dict[str, Any]:
    texts = sentences(size + queries, seed=2311)
    v = np.random.default_rng(5).standard_normal((size, emb.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    out: dict[str, Any] = {}
    with Memory(_location(backend, tmp, dsn), embedder=emb) as m:
        for start in range(0, size, 5000):
            rows = [x for t in texts[start : min(size, start + 5000)] for x in prepare(t, user_id="bench")]
            m._storage.insert(rows, v[start : start + len(rows)])
        asked = texts[size:]
        for mode in MODES:
            times: dict[bool, list[float]] = {False: [], True: []}
            for warm in (True, False):  # the first pass builds the indexes and fills the cache
                for i, q in enumerate(asked):
                    for explain in (False, True) if i % 2 == 0 else (True, False):
                        t0 = time.perf_counter()
                        hits = m.search(q, user_id="bench", top_k=10, mode=mode, explain=explain)["results"]
                        if not warm:
                            times[explain].append(time.perf_counter() - t0)
                        assert explain == all("score_details" in h for h in hits) or not hits
            plain, explained = (statistics.median(times[e]) * 1000 for e in (False, True))
            out[mode] = {"p50_ms": round(plain, 3), "explain_p50_ms": round(explained, 3),
                         "ratio": round(explained / plain, 3)}  # fmt: skip
            line = f"explain=False {plain:7.2f} ms   explain=True {explained:7.2f} ms"
            print(f"  {backend:<8} {mode:<8} {line}", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    add_plot_options(parser)
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-bench-explain-"))
    server, dsn = None, os.environ.get("HIVEMEM_BENCH_PG_DSN", "").strip()
    if "postgres" in backends and not dsn:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgtemp import TempPostgres

        server = TempPostgres({"shared_buffers": "1GB"})
        dsn = server.start()
    try:
        with Embedder(cache=EmbeddingCache(tmp / "cache")) as emb:
            print(f"search p50 at {args.size:,} memories, {args.queries} queries, top_k=10")
            found = {b: measure(b, emb, tmp, dsn, args.size, args.queries) for b in backends}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| backend | mode | p50 explain=False | p50 explain=True | True / False |")
    print("|---|---|---|---|---|")
    for b in backends:
        for mode in MODES:
            x = found[b][mode]
            print(
                f"| {b} | {mode} | {x['p50_ms']:.2f} ms | {x['explain_p50_ms']:.2f} ms | {x['ratio']:.2f}× |"
            )
    cats = [f"{b}\n{mode}" for b in backends for mode in MODES]
    bars(args, "explain_search_p50", f"search p50 at {args.size:,} memories: explain=True over False", cats,
         {"explain=True / False": [found[b][mode]["ratio"] for b in backends for mode in MODES]},
         ylabel="p50 ratio", fmt="{:.2f}",
         note="top_k=10; interleaved query by query; shared machine")  # fmt: skip
    print(json.dumps({"benchmark": "explain", "size": args.size, "queries": args.queries, **found}))


if __name__ == "__main__":
    main()
