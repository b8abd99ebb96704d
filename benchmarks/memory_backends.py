"""The memory store on SQLite and on PostgreSQL + pgvector, side by side in ONE run.

    python benchmarks/memory.py --backend both            # or: python benchmarks/memory_backends.py
    python benchmarks/memory.py --backend both --quick    # small run

Every figure is measured on both backends in interleaved rounds (SQLite, PostgreSQL, SQLite, …;
best of the rounds for throughputs, medians of interleaved queries for latencies), so the ratios
hold on a noisy machine even when the absolute numbers do not:

* ``add_batch(1000)`` with the real model (one embedder, no cache, new texts every round), and
  the storage write alone (1,000 rows with ready vectors);
* 20 threads of single ``add()``;
* search p50 at 10k and 100k memories (distinct corpus sentences with random unit vectors,
  written through the storage layer; every query a new text embedded by the model), in one
  scope and over 1,000 users: ``search`` as called (hybrid, the default), the storage parts
  alone (vector side, keyword side, whole hybrid search), the share of queries whose top-10 is
  identical on both backends per mode (vector search is exact: all of them), recall@10 against a
  brute-force float32 top-10, and pgvector's HNSW index (opt-in) at the largest size;
* 25 writer processes adding 40 memories each plus 8 texts they all share (embeddings served from
  a warm cache, so the figure is the backends' write concurrency): memories/s, and the check that
  nothing was lost, duplicated or failed.

The PostgreSQL server is a throwaway one (``tests/pgtemp.py``: PostgreSQL 16 + pgvector 0.6.2
from the ``pgserver`` wheel, Unix socket, ``shared_buffers=1GB``, otherwise defaults: fsync and
synchronous_commit on), or the one ``HIVEMEM_BENCH_PG_DSN`` names. Prints a table and, last,
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from plots import add_plot_options, bars
from threads import in_threads

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.embed.corpus import sentences
from hivemem.memory import filters as flt
from hivemem.memory import hybrid
from hivemem.memory.records import prepare

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("sqlite", "postgres")
TABLE: list[tuple[str, str, str, str, str]] = []


class Texts:
    def __init__(self, n: int) -> None:
        self.pool = sentences(n, seed=4242)
        self.at = 0

    def take(self, n: int) -> list[str]:
        out = self.pool[self.at : self.at + n]
        if len(out) < n:
            raise RuntimeError("corpus too small for this run")
        self.at += n
        return out


class Stores:
    """Fresh, empty stores on both backends."""

    def __init__(self, tmp: Path, dsn: str) -> None:
        self.tmp, self.dsn, self.schemas = tmp, dsn, []

    def location(self, backend: str) -> str:
        if backend == "sqlite":
            return str(self.tmp / f"{uuid.uuid4().hex[:8]}.sqlite")
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        self.schemas.append(schema)
        return f"{self.dsn}{'&' if '?' in self.dsn else '?'}schema={schema}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def report(
    name: str, sq: float, pg: float, unit: str, target: str = "", higher_is_better: bool = True
) -> float:
    ratio = pg / sq if sq else float("nan")
    TABLE.append((name, f"{sq:,.1f} {unit}", f"{pg:,.1f} {unit}", f"{ratio:.2f}×", target))
    print(
        f"  {name:<58} sqlite {sq:>9,.1f} {unit:<6} postgres {pg:>9,.1f} {unit:<6} ratio {ratio:.2f}",
        flush=True,
    )
    return ratio


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- writes --------------------------------------------------------------------------------------


def add_batch_rounds(stores: Stores, emb: Embedder, texts: Texts, size: int, rounds: int) -> dict[str, Any]:
    best = {b: float("inf") for b in BACKENDS}
    engine_best = float("inf")
    store_only = {b: float("inf") for b in BACKENDS}
    ratios = []
    rng = np.random.default_rng(1)
    for r in range(rounds):
        took = {}
        t0 = time.perf_counter()
        emb.embed(texts.take(size))
        engine_best = min(engine_best, time.perf_counter() - t0)
        for b in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            m = Memory(stores.location(b), embedder=emb)
            items = [{"messages": t, "user_id": f"r{r}"} for t in texts.take(size)]
            t0 = time.perf_counter()
            out = m.add_batch(items)["results"]
            took[b] = time.perf_counter() - t0
            best[b] = min(best[b], took[b])
            assert sum(x["event"] == "ADD" for x in out) == size
            mems = [x for i in range(size) for x in prepare(f"storage only {r} {i}", user_id="s")]
            vecs = unit_vectors(rng, size, emb.dim)
            t0 = time.perf_counter()
            m._storage.insert(mems, vecs)
            store_only[b] = min(store_only[b], time.perf_counter() - t0)
            m.close()
        ratios.append(took["sqlite"] / took["postgres"])  # PostgreSQL's throughput / SQLite's, this round
    return {
        "add_batch_s": best,
        "engine_s": engine_best,
        "storage_insert_s": store_only,
        "round_ratios": ratios,
    }


def threads_rounds(stores: Stores, emb: Embedder, texts: Texts, n: int, rounds: int) -> dict[str, float]:
    best = {b: float("inf") for b in BACKENDS}
    for r in range(rounds):
        for b in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            m = Memory(stores.location(b), embedder=emb)
            m.add("warm up", user_id="warm")
            batch = texts.take(n)
            seconds = in_threads(lambda part, m=m: [m.add(t, user_id="bench") for t in part], batch, 20)
            best[b] = min(best[b], seconds)
            assert m.count() == n + 1
            m.close()
    return best


# -- search --------------------------------------------------------------------------------------


def fill(m: Memory, corpus: list[str], users: int, vecs: np.ndarray) -> None:
    n = len(corpus)
    for start in range(0, n, 5000):
        size = min(5000, n - start)
        new = [
            x
            for i in range(start, start + size)
            for x in prepare(corpus[i], user_id=f"user{i % users}" if users > 1 else "one")
        ]
        m._storage.insert(new, vecs[start : start + size])


def brute_top10(vecs: np.ndarray, users_of: np.ndarray, q: np.ndarray, user: str) -> list[int]:
    mask = np.flatnonzero(users_of == user)
    return mask[np.argsort(-(vecs[mask] @ q), kind="stable")[:10]].tolist()


def search_section(
    stores: Stores, emb: Embedder, texts: Texts, n: int, users: int, n_q: int
) -> dict[str, Any]:
    """``search`` (hybrid, the default) p50 with the query embedded; the storage parts alone
    (vector side, keyword side, the whole hybrid search); how often the backends' top-10 agree,
    per mode (vector search is exact: it must always agree)."""
    rng = np.random.default_rng(n + users)
    vecs = unit_vectors(rng, n, emb.dim)
    corpus = sentences(n, seed=7)  # distinct sentences of a few hundred words: common words everywhere
    users_of = np.array(["one" if users == 1 else f"user{i % users}" for i in range(n)])
    mems = {b: Memory(stores.location(b), embedder=emb) for b in BACKENDS}
    for b, m in mems.items():
        t0 = time.perf_counter()
        fill(m, corpus, users, vecs)
        print(f"    filled {b} with {n:,} in {time.perf_counter() - t0:.1f} s", flush=True)
    text_of = {t: i for i, t in enumerate(corpus)}
    queries = texts.take(n_q)
    warm: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for i, q in enumerate(texts.take(n_q)):  # a process's first searches load and count what it keeps
        for b in BACKENDS if i % 2 else BACKENDS[::-1]:
            t0 = time.perf_counter()
            mems[b].search(q, user_id="one" if users == 1 else f"user{(i * 53) % users}", top_k=20)
            warm[b].append(time.perf_counter() - t0)
    for b in BACKENDS:
        print(f"    first search {b}: {warm[b][0]:.2f} s; mean of the first {n_q}: "
              f"{1000 * statistics.mean(warm[b]):.1f} ms", flush=True)  # fmt: skip
    parts = ("vector", "keyword", "hybrid")
    lat: dict[str, list[float]] = {b: [] for b in BACKENDS}
    store = {(b, p): [] for b in BACKENDS for p in parts}
    same = dict.fromkeys(parts, 0)
    overlap = dict.fromkeys(parts, 0)
    hits = total = 0
    for i, q in enumerate(queries[1:], 1):
        user = "one" if users == 1 else f"user{(i * 37) % users}"
        order = BACKENDS if i % 2 else BACKENDS[::-1]
        for b in order:
            t0 = time.perf_counter()
            mems[b].search(q, user_id=user, top_k=20)
            lat[b].append(time.perf_counter() - t0)
        qv = emb.embed_one(q)
        terms = hybrid.query_terms(q)
        where = flt.parse({"user_id": user})
        tops: dict[tuple[str, str], list[int]] = {}
        for b in order:
            s = mems[b]._storage
            for p in parts:
                t0 = time.perf_counter()
                if p == "vector":
                    res = s.search(qv, where, 20, None)
                elif p == "keyword":
                    res = s.keyword_search(terms, where, 20)
                else:
                    res = hybrid.search(s, "hybrid", qv, terms, where, 20, None)
                store[(b, p)].append(time.perf_counter() - t0)
                tops[(b, p)] = [text_of[r["memory"]] for r in res[:10]]
        for p in parts:
            a, b_ = tops[("sqlite", p)], tops[("postgres", p)]
            same[p] += a == b_
            overlap[p] += len(set(a) & set(b_)) / max(len(a), len(b_)) if a or b_ else 1.0
        exact = set(brute_top10(vecs, users_of, qv, user))
        hits += len(exact & set(tops[("postgres", "vector")]))
        total += len(exact)
    runs = len(queries) - 1
    out: dict[str, Any] = {
        "first_search_s": {b: warm[b][0] for b in BACKENDS},
        "first_searches_mean_ms": {b: 1000 * statistics.mean(warm[b]) for b in BACKENDS},
        "p50_ms": {b: 1000 * statistics.median(lat[b]) for b in BACKENDS},
        "storage_p50_ms": {p: {b: 1000 * statistics.median(store[(b, p)]) for b in BACKENDS} for p in parts},
        "identical_top10": {p: same[p] / runs for p in parts},
        "overlap_at_10": {p: overlap[p] / runs for p in parts},
        "postgres_recall_at_10": hits / total,
    }
    for m in mems.values():
        m.close()
    return out


def hnsw_section(stores: Stores, emb: Embedder, texts: Texts, n: int, n_q: int) -> dict[str, Any]:
    """pgvector's HNSW index (opt-in) against the exact default, on real embeddings of ``n``
    distinct sentences (random vectors are HNSW's worst case and say little about real use)."""
    from hivemem.memory.storage.postgres import PostgresStorage

    corpus = texts.take(n)
    t0 = time.perf_counter()
    vecs = emb.embed(corpus)
    print(f"    embedded {n:,} sentences in {time.perf_counter() - t0:.1f} s", flush=True)
    exact = Memory(stores.location("postgres"), embedder=emb)
    exact._storage.insert([x for t in corpus for x in prepare(t, user_id="one")], vecs)
    s = exact._storage
    queries = [emb.embed_one(t) for t in texts.take(n_q)]
    index_of = {t: i for i, t in enumerate(corpus)}
    truth = [set(np.argsort(-(vecs @ q))[:10].tolist()) for q in queries]
    out: dict[str, Any] = {"n": n}
    lat, hits = [], 0
    s.search(queries[0], None, 10, None)  # loads the int8 copy
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        res = s.search(q, None, 10, None)
        lat.append(time.perf_counter() - t0)
        hits += len(want & {index_of[r["memory"]] for r in res})
    out["exact"] = {
        "storage_p50_ms": 1000 * statistics.median(lat),
        "recall_at_10": hits / (10 * len(queries)),
    }
    with s._read() as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        t0 = time.perf_counter()
        conn.execute(f"CREATE INDEX memories_vec_hnsw ON {s._ns}.memories USING hnsw (vec vector_ip_ops)")
        out["build_s"] = time.perf_counter() - t0
        conn.execute(f"ANALYZE {s._ns}.memories")
    for ef in (40, 100, 200):
        h = PostgresStorage(s._pool.conninfo, schema=s.schema, search="hnsw", ef_search=ef)
        h.bind_model(emb.model_id, emb.dim)
        lat, hits = [], 0
        for q, want in zip(queries, truth, strict=True):
            t0 = time.perf_counter()
            res = h.search(q, None, 10, None)
            lat.append(time.perf_counter() - t0)
            hits += len(want & {index_of[r["memory"]] for r in res})
        out[f"ef{ef}"] = {
            "storage_p50_ms": 1000 * statistics.median(lat),
            "recall_at_10": hits / (10 * len(queries)),
        }
        h.close()
    exact.close()
    return out


# -- 25 writer processes -------------------------------------------------------------------------

_WRITER = r"""
import json, os, sys, time
from hivemem import Embedder, EmbeddingCache, Memory
location, cache, go = sys.argv[1:4]
texts, shared = json.loads(sys.argv[4]), json.loads(sys.argv[5])
m = Memory(location, embedder=Embedder(threads=1, cache=EmbeddingCache(cache)))
m.add("warm up " + str(os.getpid()), user_id="warm")
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
errors, out = 0, {}
for s in range(0, len(texts), 10):
    try:
        for r in m.add_batch([{"messages": t, "user_id": "fleet"} for t in texts[s : s + 10]])["results"]:
            out[r["memory"]] = [r["id"], r["event"]]
    except Exception as exc:
        errors += 1
        print(repr(exc), file=sys.stderr)
for t in shared:
    try:
        r = m.add(t, user_id="fleet")["results"][0]
        out[t] = [r["id"], r["event"]]
    except Exception as exc:
        errors += 1
        print(repr(exc), file=sys.stderr)
print(json.dumps({"end": time.time(), "errors": errors, "out": out}), flush=True)
"""


def fleet(
    stores: Stores, emb_cache: Path, texts: Texts, backend: str, n_proc: int, per: int
) -> dict[str, Any]:
    own = [texts.take(per) for _ in range(n_proc)]
    shared = texts.take(8)
    location = stores.location(backend)
    Memory(location, embedder=Embedder(cache=EmbeddingCache(emb_cache))).close()  # create the store
    go = stores.tmp / f"go-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [location, str(emb_cache), str(go)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, *args, json.dumps(own[i]), json.dumps(shared)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n_proc)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.time()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out))
    wall = max(r["end"] for r in results) - t0
    m = Memory(location, embedder=Embedder(cache=EmbeddingCache(emb_cache)))
    stored = m.get_all(filters={"user_id": "fleet"}, top_k=100_000)["results"]
    m.close()
    ids = {r["memory"]: r["id"] for r in stored}
    expected = {t for o in own for t in o} | set(shared)
    lost = len(expected - set(ids))
    duplicates = len(stored) - len(ids)
    wrong_ids = sum(ids.get(t) != rid for r in results for t, (rid, _) in r["out"].items())
    shared_adds = [sum(r["out"][t][1] == "ADD" for r in results) for t in shared]
    return {
        "wall_s": wall,
        "memories_per_s": (n_proc * per) / wall,
        "errors": sum(r["errors"] for r in results),
        "lost": lost,
        "duplicates": duplicates,
        "wrong_ids": wrong_ids,
        "shared_text_adds": shared_adds,
    }


# -- main ----------------------------------------------------------------------------------------


SECTIONS = ("writes", "search", "hnsw", "fleet")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--backend", default="both", help="accepted for benchmarks/memory.py's command line")
    ap.add_argument(
        "--search-sizes", help="comma-separated store sizes (default 10000,100000; quick 2000,10000)"
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--engine-threads", type=int, help="the embedder's threads (default: one per core)")
    add_plot_options(ap)
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if sections - set(SECTIONS):
        ap.error(f"unknown sections {sorted(sections - set(SECTIONS))}")
    q = args.quick
    size, rounds, n_thr, n_q = (200, 2, 100, 15) if q else (1000, 5, 300, 41)
    sizes = [2000, 10_000] if q else [10_000, 100_000]
    if args.search_sizes:
        sizes = [int(x) for x in args.search_sizes.split(",")]
    n_hnsw = 2000 if q else 10_000
    n_proc, per = (10, 20) if q else (25, 40)
    need = (
        size * rounds * 3 + n_thr * rounds * 2 + n_q * (len(sizes) * 4 + 1) + n_hnsw + (n_proc * per + 8) * 2
    )
    texts = Texts(need + 100)
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-bench-backends-"))
    out: dict[str, Any] = {"quick": q, "sections": sorted(sections), "engine_threads": args.engine_threads}
    server = None
    dsn = os.environ.get("HIVEMEM_BENCH_PG_DSN", "").strip()
    if not dsn:
        sys.path.insert(0, str(ROOT / "tests"))  # the test suite's throwaway server
        from pgtemp import TempPostgres

        server = TempPostgres({"shared_buffers": "1GB"})
        dsn = server.start()
    stores = Stores(tmp, dsn)
    print(f"memory backends benchmark ({'quick' if q else 'full'}), PostgreSQL at {dsn}", flush=True)
    targets: dict[str, Any] = {}
    try:
        with Embedder(cache=False, threads=args.engine_threads) as emb:
            emb.embed(["warm up"])
            if "writes" in sections:
                print(f"add_batch({size}), {rounds} interleaved rounds")
                w = add_batch_rounds(stores, emb, texts, size, rounds)
                rate = {b: size / w["add_batch_s"][b] for b in BACKENDS}
                out["add_batch_texts_per_s"] = rate
                out["engine_texts_per_s"] = size / w["engine_s"]
                out["add_batch_round_ratios"] = w["round_ratios"]
                best = report(
                    f"add_batch({size}), texts/s, best of {rounds}", rate["sqlite"], rate["postgres"], "/s"
                )
                median = statistics.median(w["round_ratios"])
                print(f"  per-round ratios {[round(x, 2) for x in w['round_ratios']]}, median {median:.2f}")
                TABLE.append(
                    (
                        f"add_batch({size}): median of the {rounds} per-round ratios",
                        "",
                        "",
                        f"{median:.2f}×",
                        "≥ 0.8×",
                    )
                )
                targets["add_batch_postgres>=0.8x_sqlite"] = median >= 0.8
                out["ratio_add_batch_best"], out["ratio_add_batch_median"] = best, median
                ins = {b: 1000 * w["storage_insert_s"][b] for b in BACKENDS}
                out["storage_insert_ms"] = ins
                report(
                    f"storage insert of {size} rows (vectors ready), ms", ins["sqlite"], ins["postgres"], "ms"
                )
                print(f"  (engine alone: {out['engine_texts_per_s']:,.0f} texts/s)")
                print(f"20 threads of single add(), {n_thr} texts, best of {rounds}")
                t = threads_rounds(stores, emb, texts, n_thr, rounds)
                rate = {b: n_thr / t[b] for b in BACKENDS}
                out["threads20_texts_per_s"] = rate
                report("20 threads single add(), texts/s", rate["sqlite"], rate["postgres"], "/s")
            if "search" in sections:
                same = []
                for n in sizes:
                    for users in (1, 1000):
                        scope = "one scope" if users == 1 else "1,000 users"
                        print(f"search {n:,} memories, {scope}")
                        s = search_section(stores, emb, texts, n, users, n_q)
                        key = f"search_{n}_{'one_scope' if users == 1 else 'users1000'}"
                        out[key] = s
                        big = n == sizes[-1]
                        ratio = report(
                            f"search {n:,}, {scope}: hybrid p50 ms (query embedded)", s["p50_ms"]["sqlite"],
                            s["p50_ms"]["postgres"], "ms", "≤ 2×" if big else "",
                        )  # fmt: skip
                        if big:
                            targets[f"{key}_p50_postgres<=2x_sqlite"] = ratio <= 2
                        report(f"search {n:,}, {scope}: mean of a process's first {n_q} searches, ms",
                               s["first_searches_mean_ms"]["sqlite"], s["first_searches_mean_ms"]["postgres"],
                               "ms")  # fmt: skip
                        for part, st in s["storage_p50_ms"].items():
                            report(f"search {n:,}, {scope}: storage p50 ms, {part}", st["sqlite"],
                                   st["postgres"], "ms")  # fmt: skip
                        same.append(s["identical_top10"]["vector"])
                        agree, over = s["identical_top10"], s["overlap_at_10"]
                        print("  identical top-10 " + ", ".join(f"{p} {v:.3f}" for p, v in agree.items())
                              + "; overlap@10 " + ", ".join(f"{p} {v:.3f}" for p, v in over.items())
                              + f"; PostgreSQL recall@10 {s['postgres_recall_at_10']:.3f}")  # fmt: skip
                        for part in ("hybrid", "keyword"):
                            TABLE.append((f"search {n:,}, {scope}: identical {part} top-10 / overlap@10",
                                          "", "", f"{agree[part]:.3f} / {over[part]:.3f}",
                                          ""))  # fmt: skip
                targets["identical_top10"] = min(same) == 1.0
                TABLE.append(
                    (
                        "queries with the identical vector top-10 on both backends (exact search)",
                        "",
                        "",
                        f"{min(same):.3f}",
                        "1.000",
                    )
                )
            if "hnsw" in sections:
                print(f"HNSW (opt-in) against the exact default, {n_hnsw:,} real sentences embedded")
                h = hnsw_section(stores, emb, texts, n_hnsw, n_q)
                out["hnsw"] = h
                for name in ("exact", "ef40", "ef100", "ef200"):
                    p50, rec = h[name]["storage_p50_ms"], h[name]["recall_at_10"]
                    label = "exact (default)" if name == "exact" else f"HNSW ef_search={name[2:]}"
                    print(f"  {label}: storage p50 {p50:.1f} ms, recall@10 {rec:.3f}")
                    TABLE.append((f"{n_hnsw:,} real sentences, {label}: storage p50 / recall@10", "",
                                  f"{p50:.1f} ms / {rec:.3f}", "", ""))  # fmt: skip
                print(f"  HNSW built in {h['build_s']:.1f} s")
        if "fleet" in sections:
            print(
                f"{n_proc} writer processes × {per} memories + 8 shared texts (embeddings from a warm cache)"
            )
            cache = tmp / "fleet-cache.sqlite"
            with Embedder(cache=EmbeddingCache(cache)) as warm:
                warm.embed(texts.pool[texts.at : texts.at + (n_proc * per + 8) * 2])
            fl = {b: fleet(stores, cache, texts, b, n_proc, per) for b in BACKENDS}
            for b in BACKENDS:
                print(f"  {b}: {fl[b]}", flush=True)
            out["fleet"] = fl
            report(f"{n_proc} writer processes, memories/s", fl["sqlite"]["memories_per_s"],
                   fl["postgres"]["memories_per_s"], "/s")  # fmt: skip
            targets["fleet_0_lost_0_dup_0_errors"] = all(
                f[k] == 0 for f in fl.values() for k in ("lost", "duplicates", "errors", "wrong_ids")
            ) and all(a == 1 for f in fl.values() for a in f["shared_text_adds"])
    finally:
        stores.drop()
        if server is not None:
            server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| figure | SQLite | PostgreSQL | PostgreSQL / SQLite | target |\n|---|---|---|---|---|")
    for r in TABLE:
        print("| " + " | ".join(r) + " |")
    out["targets"] = targets
    plot(args, out, sizes)
    print(json.dumps(out, default=float))


def plot(args: argparse.Namespace, out: dict[str, Any], sizes: list[int]) -> None:
    """PostgreSQL's figures as a share of SQLite's, one bar each (1.0 = the same)."""
    names, values = [], []
    if "add_batch_texts_per_s" in out:
        names.append("add_batch\nthroughput")
        values.append(out["ratio_add_batch_median"])
        names.append("20 threads\nadd()")
        values.append(out["threads20_texts_per_s"]["postgres"] / out["threads20_texts_per_s"]["sqlite"])
    for n in sizes:
        for scope in ("one_scope", "users1000"):
            key = f"search_{n}_{scope}"
            if key in out:
                p50 = out[key]["p50_ms"]
                names.append(f"search {n // 1000}k\n{'one scope' if scope == 'one_scope' else '1k users'}")
                values.append(p50["sqlite"] / p50["postgres"])  # speed: higher is better
    if "fleet" in out:
        names.append("25 writer\nprocesses")
        values.append(out["fleet"]["postgres"]["memories_per_s"] / out["fleet"]["sqlite"]["memories_per_s"])
    if names:
        bars(args, "memory_backends", "PostgreSQL's speed as a share of SQLite's (one run, interleaved)",
             names, {"PostgreSQL / SQLite": values}, ylabel="× SQLite (higher is faster)", fmt="{:.2f}",
             note="throughputs: PostgreSQL / SQLite; search: SQLite p50 / PostgreSQL p50")  # fmt: skip


if __name__ == "__main__":
    main()
