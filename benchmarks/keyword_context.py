"""What the contexts (issue 23) cost, writes and search: the keyword context (``storage/ftscontext.py``'s
``memories_ctx``) and the vector context (``vector_context``: the window's mean stored vector).

    python benchmarks/keyword_context.py                         # 100,000 memories, 100 queries
    python benchmarks/keyword_context.py --users 1000            # 1,000 scopes of 100
    python benchmarks/keyword_context.py --backend postgres      # PostgreSQL (pgcontext.py)
    python benchmarks/before_after.py --before REV -- keyword_context.py --context off  # the default path
    python benchmarks/keyword_context.py --context dates --size 20000   # keyword_dates off / on

A store gets the context index the first time a ``Memory`` with ``keyword_context=True`` opens
it; from then on every write keeps it (triggers in the write transaction), so only such stores
pay for it. Rows (each a median over ``--rounds`` interleaved rounds; ``_context_on``: a store
that has the index and, for searches, the option on; ``_context_full``: also ``vector_context=True``,
which stores nothing more (only the (scope, rid) index the keyword context already has) and reads
the fusion's candidates' windows at search time: its searches run on the ``_context_on`` store
itself, hybrid mode only, and its ``add_batch`` on a fresh store as the others):

* ``add_batch``: ``Memory.add_batch`` of ``--batch`` fresh texts (real model, an empty embedding
  cache each round, so the figure includes embedding, as users see it).
* ``insert``: the storage layer alone (random unit vectors, no model) writing ``--size``
  memories in batches of 10,000 (once, before the rounds): the write cost with nothing to hide it.
* ``search p50``: ``Memory.search`` over a store of ``--size`` memories in one scope (or
  ``--users`` scopes, each search in one of them), ``top_k=10``, new
  queries (the query embedding included), hybrid and keyword mode, with the option off (the
  default) and, where this tree has it, on.
* ``window_read_ms_40`` / ``cosines_ms_40`` (with the vector context): p50 of reading the windows
  of 40 memories of the searched scope (a hybrid search's candidates at ``top_k=10``) against
  reading their cosines, alternated, on the store of ``--size`` memories: the vector context's own
  cost per search, without the noise of whole searches.
* ``_dates`` (``--context dates``): the same rows for a store with ``keyword_dates=True`` (each
  memory's date words indexed with its text; no context), against the default store.
* Then, once per store: its file size (``file_mb``; PostgreSQL: its schema's tables with their
  indexes), ``batch_delete`` of up to 1,000 memories of
  one scope (``batch_delete_ms``) and ``delete_all`` of every scope (``delete_all_s``): a delete
  re-indexes the windows around it (the 2 before and the 2 after; an add: its own and the 2 before).

With ``before_after.py`` the same script runs on both trees; rows the old tree lacks (the option
on) are left out of its JSON. ``--backend postgres`` runs the same on a throwaway server
(``tests/pgtemp.py``), or on ``$HIVEMEM_BENCH_PG_DSN``, one schema per store. Prints a table, one
JSON line and a plot.
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
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from memory import build  # the sibling script: bulk insert through the storage layer
from plots import add_plot_options, bars

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.embed.corpus import sentences
from hivemem.memory import hybrid

HAS_CONTEXT = hasattr(hybrid, "configure_context")
HAS_VECTOR = hasattr(hybrid, "VECTOR_CONTEXT_SHARE")
HAS_DATES = "keyword_dates" in Memory.__init__.__kwdefaults__  # type: ignore[operator]
TAIL = {"off": "", "on": "_context_on", "full": "_context_full", "dates": "_dates"}
ROOT = Path(__file__).resolve().parents[1]


class Places:
    """Where each store lives: a file under ``tmp`` (SQLite) or a schema of ``dsn`` (PostgreSQL)."""

    def __init__(self, tmp: Path, dsn: str | None) -> None:
        self.tmp, self.dsn = tmp, dsn

    def __call__(self, name: str) -> str:
        if self.dsn is None:
            return str(self.tmp / f"{name}.sqlite")
        schema = "kc_" + name.replace("-", "_")
        return f"{self.dsn}{'&' if '?' in self.dsn else '?'}schema={schema}"

    def size_mb(self, m: Memory, name: str) -> float:
        if self.dsn is None:
            m._storage._db().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]
            return os.path.getsize(self(name)) / 1e6
        with m._storage._pool.connection() as conn:  # type: ignore[attr-defined]
            found = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                ("kc_" + name.replace("-", "_"),),
            ).fetchone()[0]
        return float(found) / 1e6


def store(place: str, emb: Embedder, variant: str) -> Memory:
    if variant == "off":
        return Memory(place, embedder=emb)
    if variant == "dates":
        return Memory(place, embedder=emb, keyword_dates=True)  # type: ignore[call-arg,unused-ignore]
    if variant == "on":
        return Memory(place, embedder=emb, keyword_context=True)  # type: ignore[call-arg,unused-ignore]
    return Memory(place, embedder=emb, keyword_context=True, vector_context=True)  # type: ignore[call-arg,unused-ignore]


def add_rate(tmp: Path, places: Places, texts: list[str], name: str, context: str) -> float:
    """memories/s of one ``add_batch`` of ``texts`` into a fresh store, fresh cache."""
    with Embedder(cache=EmbeddingCache(tmp / f"add-{name}-cache.sqlite")) as emb:
        emb.embed(["warm the engine up"])
        m = store(places(f"add-{name}"), emb, context)
        t0 = time.perf_counter()
        m.add_batch([{"messages": t, "user_id": "bench"} for t in texts])
        dt = time.perf_counter() - t0
        m.close()
    return len(texts) / dt


def search_p50(m: Memory, queries: list[str], mode: str, users: int) -> float:
    lat = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        m.search(q, user_id="one" if users == 1 else f"user{(i * 37) % users}", top_k=10, mode=mode)
        lat.append(time.perf_counter() - t0)
    return 1000 * statistics.median(lat)


def window_read(m: Memory, users: int, reads: int = 200) -> dict[str, list[float]]:
    """p50 ms of ``window_scores`` for 40 memories of one scope (a hybrid search's candidates at
    ``top_k=10``), and of ``cosines`` for the same 40 (what a search already reads for the keyword
    side's candidates), alternated; closes ``m``."""
    import numpy as np

    ids = [h["id"] for h in m.get_all(user_id="one" if users == 1 else "user0", top_k=1000)["results"]]
    rng = np.random.default_rng(23)
    storage, lat = m._storage, {"window_read_ms_40": [], "cosines_ms_40": []}
    for _ in range(reads):
        pick = [ids[i] for i in rng.choice(len(ids), size=min(40, len(ids)), replace=False)]
        q = rng.standard_normal(storage._model[1] if storage._model else 384).astype(np.float32)  # type: ignore[attr-defined]
        q /= np.linalg.norm(q)
        for name, read in (("window_read_ms_40", storage.window_scores), ("cosines_ms_40", storage.cosines)):
            with storage.snapshot():
                t0 = time.perf_counter()
                read(pick, q)  # type: ignore[operator]
                lat[name].append(time.perf_counter() - t0)
    m.close()
    return {k: [1000 * statistics.median(v)] for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=100_000, help="memories in the searched store")
    ap.add_argument("--batch", type=int, default=1000, help="texts per add_batch round")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users", type=int, default=1, help="scopes the searched store is spread over")
    ap.add_argument(
        "--context",
        choices=["both", "off", "dates"],
        default="both",
        help="off: only the default rows (the same work on every tree, for before_after.py); dates: the "
        "default rows and keyword_dates=True (each memory's date words indexed with its text)",
    )
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    add_plot_options(ap)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-context-"))
    server, dsn = None, os.environ.get("HIVEMEM_BENCH_PG_DSN", "").strip() or None
    if args.backend == "postgres" and dsn is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgtemp import TempPostgres

        server = TempPostgres({"shared_buffers": "1GB"})
        dsn = server.start()
    try:
        run(args, tmp, Places(tmp, dsn if args.backend == "postgres" else None))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path, places: Places) -> None:
    variants: tuple[str, ...] = ("off",)
    if HAS_CONTEXT and args.context == "both":
        variants = ("off", "on", "full") if HAS_VECTOR else ("off", "on")
    if args.context == "dates":
        if not HAS_DATES:
            raise SystemExit("this tree has no keyword_dates option")
        variants = ("off", "dates")
    n = len(variants)
    pool = sentences(n * args.rounds * args.batch + args.rounds * args.queries * 5 + 10, seed=2323)
    rates: dict[str, list[float]] = {}
    with Embedder(cache=EmbeddingCache(tmp / "search-cache.sqlite")) as emb:
        stores = {v: store(places(f"search-{v}"), emb, v) for v in variants if v != "full"}
        for v, m in stores.items():
            m.search("warm up", user_id="one")
            rates["insert_ops_s" + TAIL[v]] = [args.size / build(m._storage, args.size, args.users)]
        if "full" in variants:  # it writes nothing more: the keyword context's very store, searched
            stores["full"] = store(places("search-on"), emb, "full")
        at = n * args.rounds * args.batch
        for r in range(args.rounds):
            for i, v in enumerate(variants):
                texts = pool[(n * r + i) * args.batch : (n * r + i + 1) * args.batch]
                rates.setdefault("add_batch_ops_s" + TAIL[v], []).append(
                    add_rate(tmp, places, texts, f"{r}-{v}", v)
                )
            for mode in ("hybrid", "keyword"):
                for name, target in stores.items():
                    if name == "full" and mode == "keyword":
                        continue  # the vector context is hybrid's only
                    queries = pool[at : at + args.queries]
                    at += args.queries
                    rates.setdefault(f"{mode}_p50_ms_context_{name}", []).append(
                        search_p50(target, queries, mode, args.users)
                    )
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
        if "full" in stores:  # the vector context's own read, alone: the windows of 40 candidates
            rates.update(window_read(stores.pop("full"), args.users))
        for v, m in stores.items():  # once, at the end: the file, then deletes (which empty it)
            tail = TAIL[v]
            rates["file_mb" + tail] = [places.size_mb(m, f"search-{v}")]
            ids = [
                h["id"]
                for h in m.get_all(user_id="one" if args.users == 1 else "user0", top_k=1000)["results"]
            ]
            t0 = time.perf_counter()
            m.batch_delete([{"memory_id": i} for i in ids])
            rates["batch_delete_ms" + tail] = [1000 * (time.perf_counter() - t0)]
            t0 = time.perf_counter()
            for u in ["one"] if args.users == 1 else [f"user{i}" for i in range(args.users)]:
                m.delete_all(user_id=u)
            rates["delete_all_s" + tail] = [time.perf_counter() - t0]
            m.close()
    out: dict[str, Any] = {k: statistics.median(v) for k, v in rates.items()}
    out.update(
        size=args.size,
        users=args.users,
        batch=args.batch,
        queries=args.queries,
        rounds=args.rounds,
        context=HAS_CONTEXT,
        backend=args.backend,
    )
    print("\n| measurement | median | rounds |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {statistics.median(v):,.2f} | {', '.join(f'{x:,.1f}' for x in v)} |")
    searches = [k for k in out if "_p50_ms_" in k]
    bars(
        args,
        "keyword_context_cost" + ("_pg" if args.backend == "postgres" else ""),
        f"Search p50 at {args.size:,} memories ({args.backend}), contexts off / keyword (on) / both (full)",
        searches,
        {"p50 ms": [out[k] for k in searches]},
        ylabel="ms",
        fmt="{:.1f}",
        note=f"one run on a shared box; median of {args.rounds} interleaved rounds",
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
