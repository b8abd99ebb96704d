"""Concurrent single calls against one batch, before/after: issue 15's memory part and issue 25's
two in-process paths (16 threads × ``embed_one``, 20 threads × ``Memory.add``).

    python benchmarks/memory_threads.py                          # this tree only
    python benchmarks/memory_threads.py --before /tmp/main-ref   # and an older checkout, interleaved

Each round runs one fresh process per code tree (``PYTHONPATH``), the trees taking turns (A B,
B A, …) so that the load of a shared machine falls on both alike. A process measures, on texts
no other measurement of the round used (the same texts for both trees), with a fresh store and
embedding cache each: the engine's raw ``embed(N)`` (no cache) and, on the same texts, 16 threads
calling ``embed_one`` (the two in either order, by round), ``add_batch(N)``, 20 threads calling
``embed([text])`` on the engine directly, and 20 threads of single ``add`` — plus how many adds
shared a transaction and, where the code has it, a group (``hivemem.infra.grouping.Combiner``),
the p50 of one thread's single ``embed_one`` calls (latency: must not get worse), and for
``add_batch`` and the two 20-thread runs the process's CPU per item and the cores it kept busy
(a ratio's gap is either more CPU per item or a core left idle).
Ratios are taken within a process (same moment), then the median over rounds is reported.
``--no-model``: the same ``Embedder`` (queue, cache) and ``Memory`` over a table of random vectors
made before timing (``search_threads.TableEmbedder``) instead of the model, so the figures are
Python's and the store's alone (what an interpreter changes; it needs no tokenizer or ONNX Runtime).
The JSON line says whether the GIL was on in the children (``gil``: ``sys._is_gil_enabled()``
after every import; always true before CPython 3.13).
Prints a table, then one JSON line.
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
from pathlib import Path
from typing import Any

from plots import add_plot_options, bars
from search_threads import TableEmbedder
from threads import in_threads

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("engine", "threads16_embed_one", "add_batch", "threads_embed", "threads_add")


def _threads(fn: Any, texts: list[str], threads: int) -> float:
    """Calls per second of ``fn(text)`` over ``texts`` from ``threads`` threads."""
    return len(texts) / in_threads(lambda part: [fn(t) for t in part], texts, threads)


def _cpu(out: dict[str, Any], key: str, n: int, run: Any) -> None:
    """``out[key]`` = ``run()`` (a rate over ``n`` items); with the process's CPU ms per item
    (``key_cpu_ms``, all threads) and the cores it kept busy meanwhile (``key_cores``): where a
    ratio's gap goes — more CPU per item, or cores left idle."""
    c0, t0 = time.process_time(), time.perf_counter()
    out[key] = run()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    out[f"{key}_cpu_ms"] = 1e3 * cpu / n
    out[f"{key}_cores"] = cpu / wall


def child(seed: int, batch: int, adds: int, threads: int, model: bool = True) -> dict[str, Any]:
    """One process, one tree: every figure of a round (texts/s, and the grouping counters);
    ``model=False``: over a ``TableEmbedder`` backend (``--no-model``)."""
    from hivemem import Embedder, EmbeddingCache, Memory
    from hivemem.embed.corpus import sentences

    texts = sentences(2 * batch + 2 * adds, seed=1000 + seed)
    parts = [texts[:batch], texts[batch : 2 * batch], texts[2 * batch : 2 * batch + adds], texts[-adds:]]
    warm = sentences(64, seed=99)
    table = None if model else TableEmbedder()
    if table is not None:
        table.learn([*texts, *warm, "warm up"], seed=seed)
    backend: Any = "onnx" if table is None else table
    tmp = Path(tempfile.mkdtemp(prefix="hivemem-threads-"))
    out: dict[str, Any] = {}
    with Embedder(backend, cache=False) as raw:
        raw.embed(warm)

        def engine() -> None:
            t0 = time.perf_counter()
            raw.embed(parts[0])
            out["engine"] = batch / (time.perf_counter() - t0)

        def singles() -> None:  # the same texts (no cache): issue 25's 16 threads × embed_one
            out["threads16_embed_one"] = _threads(raw.embed_one, parts[0], 16)

        for step in (engine, singles) if seed % 2 == 0 else (singles, engine):
            step()
        latencies = []
        for text in texts[-100:]:
            t0 = time.perf_counter()
            raw.embed_one(text)
            latencies.append(time.perf_counter() - t0)
        out["single_p50_ms"] = 1000 * statistics.median(latencies)

    def fresh(name: str) -> tuple[Any, Any]:
        emb = Embedder(backend, cache=EmbeddingCache(tmp / f"{name}-cache.sqlite"))
        m = Memory(tmp / f"{name}.sqlite", embedder=emb)
        m.add("warm up", user_id="warm")
        return m, emb

    m, emb = fresh("batch")

    def one_batch() -> float:
        t0 = time.perf_counter()
        m.add_batch([{"messages": t, "user_id": "bench"} for t in parts[1]])
        return batch / (time.perf_counter() - t0)

    _cpu(out, "add_batch", batch, one_batch)
    m.close()
    emb.close()
    m, emb = fresh("threads")
    _cpu(out, "threads_embed", adds, lambda: _threads(lambda t: emb.embed([t]), parts[2], threads))
    batches = emb._queue.batches
    _cpu(out, "threads_add", adds, lambda: _threads(lambda t: m.add(t, user_id="bench"), parts[3], threads))
    out["engine_batch_texts"] = adds / max(emb._queue.batches - batches, 1)
    storage = m._storage
    out["adds_per_transaction"] = getattr(storage, "inserts", 0) / max(getattr(storage, "commits", 0), 1)
    combiner = getattr(m, "_combiner", None)  # absent before grouped adds
    out["adds_per_group"] = combiner.calls / max(combiner.groups, 1) if combiner is not None else None
    assert m.count() == adds + 1, "an add was lost"
    m.close()
    emb.close()
    out["gil"] = getattr(sys, "_is_gil_enabled", lambda: True)()  # after every import
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--before", type=Path, help="a checkout of the old code (e.g. main), measured interleaved"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1000, help="texts of the engine call and of add_batch")
    ap.add_argument("--adds", type=int, default=600, help="single adds (and embed calls) per thread run")
    ap.add_argument("--threads", type=int, default=20)
    ap.add_argument("--no-model", action="store_true", help="random vectors instead of the model (docstring)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: one round in this process
    add_plot_options(ap)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.batch, args.adds, args.threads, not args.no_model)))
        return
    trees = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    for r in range(args.rounds):
        for label, tree in trees if r % 2 == 0 else trees[::-1]:
            env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
            cmd = [sys.executable, __file__, "--child", str(r), "--batch", str(args.batch),
                   "--adds", str(args.adds), "--threads", str(args.threads)]  # fmt: skip
            cmd += ["--no-model"] if args.no_model else []
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{label} round {r} failed:\n{done.stderr[-3000:]}")
            runs[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(
                f"  round {r} {label:6} " + "  ".join(f"{k} {runs[label][-1][k]:7.0f}/s" for k in KEYS),
                flush=True,
            )
    result: dict[str, Any] = {"rounds": args.rounds, "threads": args.threads, "batch": args.batch,
                              "model": not args.no_model,
                              "gil": any(x["gil"] for label in runs for x in runs[label])}  # fmt: skip
    n = args.threads
    print(
        f"\n| figure (median of {args.rounds} rounds; ratios within a round) | "
        + " | ".join(label for label, _ in trees)
        + " |"
    )
    print("|---|" + "---|" * len(trees))
    rows = [  # (label, JSON key, figure of one round)
        (f"engine embed({args.batch}), texts/s", "engine", lambda x: x["engine"]),
        ("16 threads × embed_one, same texts, texts/s", "threads16_embed_one",
         lambda x: x["threads16_embed_one"]),
        ("**16 threads × embed_one / engine batch**", "threads16_vs_engine",
         lambda x: x["threads16_embed_one"] / x["engine"]),
        ("single embed_one p50, ms (one thread)", "single_p50_ms", lambda x: x["single_p50_ms"]),
        (f"add_batch({args.batch}), memories/s", "add_batch", lambda x: x["add_batch"]),
        (f"{n} threads × engine embed([text]), texts/s", "threads_embed", lambda x: x["threads_embed"]),
        (f"{n} threads × add(text), memories/s", "threads_add", lambda x: x["threads_add"]),
        (f"**{n} threads × add / add_batch**", "threads_add_vs_add_batch",
         lambda x: x["threads_add"] / x["add_batch"]),
        (f"{n} threads × add / {n} threads × engine embed", "threads_add_vs_threads_embed",
         lambda x: x["threads_add"] / x["threads_embed"]),
        (f"{n} threads × engine embed / add_batch", "threads_embed_vs_add_batch",
         lambda x: x["threads_embed"] / x["add_batch"]),
        ("add_batch / engine", "add_batch_vs_engine", lambda x: x["add_batch"] / x["engine"]),
        (f"CPU per memory, {n} threads × add / add_batch", "add_cpu_ratio",
         lambda x: x["threads_add_cpu_ms"] / x["add_batch_cpu_ms"]),
        (f"CPU per item, {n} threads × engine embed / add_batch", "embed_cpu_ratio",
         lambda x: x["threads_embed_cpu_ms"] / x["add_batch_cpu_ms"]),
        ("cores busy: add_batch", "add_batch_cores", lambda x: x["add_batch_cores"]),
        (f"cores busy: {n} threads × engine embed", "threads_embed_cores",
         lambda x: x["threads_embed_cores"]),
        (f"cores busy: {n} threads × add", "threads_add_cores", lambda x: x["threads_add_cores"]),
        (f"adds per transaction ({n} threads of add)", "adds_per_transaction",
         lambda x: x["adds_per_transaction"]),
        (f"engine batch, texts ({n} threads of add)", "engine_batch_texts",
         lambda x: x["engine_batch_texts"]),
    ]  # fmt: skip
    for name, key, get in rows:
        cells = []
        for label, _ in trees:
            value = statistics.median(get(x) for x in runs[label])
            result.setdefault(label, {})[key] = value
            cells.append(f"{value:,.2f}" if value < 100 else f"{value:,.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    result["runs"] = runs
    keys = [("threads16_vs_engine", "16 threads × embed_one\n/ engine batch (target ≥ 0.85)"),
            ("threads_add_vs_add_batch", f"{n} threads × add\n/ add_batch (target ≥ 0.8)")]  # fmt: skip
    bars(
        args,
        "memory_threads_no_model" if args.no_model else "memory_threads",
        f"Threads of single calls vs one batch{', no model' if args.no_model else ''}"
        f" (median of {args.rounds} rounds)",
        [label for _, label in keys],
        {tree: [result[tree][k] for k, _ in keys] for tree, _ in trees},
        ylabel="ratio (same process, same moment)",
        fmt="{:.2f}",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
