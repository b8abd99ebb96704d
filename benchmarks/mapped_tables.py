"""The model's tables mapped from their own file (docs/service.md, "Round 5"): processes with a
local engine, this tree against an older one, interleaved; and how much of the table one maps.

    python benchmarks/mapped_tables.py --before <checkout of the old code> [--workers 1,4] [-n 200]

Part 1, for each tree in turn (A B, then B A, …), ``--rounds`` times and for each W in ``--workers``:
W processes of the tree at once, each with a local engine as a worker builds it
(``Embedder(cache=False, batching=False, threads=1)``), embed n texts in one call, then n others
(the same texts for both trees); held at a barrier, the PSS of each (``/proc/PID/smaps_rollup``) is
read; also their CPU per text in each call (the first pays for faulting the table's pages in) and
a digest of their vectors (the trees must agree bit for bit). Part 2 (this tree): the table's
resident MB in one process after 1,000 texts, by the page cache's state (the file's pages
dropped, or read through once as a copy or a backup would), by the engine's access advice
(``MADV_RANDOM``, or none) and by vocabulary (the benchmark corpus, or random words of the whole
vocabulary: the upper end). Part 3: this tree's backend on both layouts in one process, calls
alternated (the layout's own CPU per text, free of the trees' other differences). Each tree runs
in a home of its own (``model_homes.py``). Prints tables, one JSON line and bar charts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from model_homes import MODEL, tree_home
from plots import add_plot_options, bars
from procstat import pss_mb

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

_WORKER = """
import hashlib, json, sys, time
import numpy as np
import hivemem
from hivemem.embed.corpus import sentences
texts = sentences(2 * {n}, seed={seed})
e = hivemem.Embedder(cache=False, batching=False, threads=1)
e.embed(["warm-up"])
cpu, vectors = [], []
for part in (texts[:{n}], texts[{n}:]):
    c = time.process_time()
    vectors.append(e.embed(part))
    cpu.append((time.process_time() - c) * 1000 / len(part))
v = np.concatenate(vectors)
print(json.dumps({{"cpu_ms": cpu[0], "cpu_ms_second": cpu[1],
                  "digest": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]}}), flush=True)
sys.stdin.readline()
"""

_RESIDENT = """
import json, random, sys
sys.path.insert(0, {bench!r})
from model_homes import table_mapping
import hivemem.embed.onnx_backend as onnx_backend
if {advice!r} == "none":
    onnx_backend.advise_random = lambda path: 0
from hivemem.embed.engine import make_backend
backend = make_backend("onnx")
if {vocabulary!r} == "corpus":
    from hivemem.embed.corpus import sentences
    texts = sentences(1000, seed=5)
else:
    words = sorted(w for w in backend.tokenizer.get_vocab() if w.isalpha() and w.islower())
    rng = random.Random(5)
    texts = [" ".join(rng.choice(words) for _ in range(20)) for _ in range(1000)]
backend.encode(texts)
print(json.dumps(table_mapping()))
"""


def env_for(tree: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "HIVEMEM_HOME": str(home), "HF_HUB_OFFLINE": "1"}


def workers_round(tree: Path, home: Path, w: int, n: int, seed: int) -> dict:
    """W processes of ``tree`` with a local engine: PSS (mean, sum), CPU per text, vector digests."""
    procs = [
        subprocess.Popen(
            [PY, "-c", _WORKER.format(n=n, seed=seed + i)],
            env=env_for(tree, home),
            cwd=tree,  # ``-c`` puts the working directory before PYTHONPATH
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(w)
    ]
    try:
        done = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        pss = [pss_mb(p.pid) for p in procs]
        for p in procs:
            p.communicate("exit\n", timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {
        "pss_mean_mb": statistics.mean(pss),
        "pss_sum_mb": sum(pss),
        "cpu_ms_per_text": statistics.mean(d["cpu_ms"] for d in done),
        "cpu_ms_per_text_second_call": statistics.mean(d["cpu_ms_second"] for d in done),
        "digests": [d["digest"] for d in done],
    }


def drop_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_through(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def resident(home: Path) -> list[dict]:
    """Part 2: the table's resident MB after 1,000 texts, by cache state × advice × vocabulary."""
    manifest = json.loads((home / "models" / MODEL / "manifest.json").read_text())
    data = home / "models" / MODEL / (manifest["variants"][manifest["default"]]["file"] + ".data")
    rows = []
    for vocabulary in ("corpus", "whole vocabulary"):
        for cache in ("dropped", "read through"):
            for advice in ("random", "none"):
                (drop_cache if cache == "dropped" else read_through)(data)
                code = _RESIDENT.format(bench=str(ROOT / "benchmarks"), advice=advice, vocabulary=vocabulary)
                out = subprocess.run(
                    [PY, "-c", code],
                    env=env_for(ROOT, home),
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                seen = json.loads(out.stdout)
                rows.append({"vocabulary": vocabulary, "cache": cache, "advice": advice, **seen})
                print(f"  {vocabulary:16} {cache:12} {advice:6} table resident {seen['data_rss_mb']:5.1f} "
                      f"of {seen['data_size_mb']:.1f} MB; largest anonymous "
                      f"{seen['largest_anon_mb']:.1f} MB")  # fmt: skip
    return rows


_AB = """
import json, statistics, sys, time
from pathlib import Path
from hivemem.embed.corpus import sentences
from hivemem.embed.onnx_backend import OnnxBackend
backends = {{k: OnnxBackend(Path(g), Path(t), threads=1) for k, (g, t) in {graphs!r}.items()}}
texts = sentences(200 * ({rounds} + 1), seed=9)
for b in backends.values():
    b.encode(texts[:200])
cpu = {{k: [] for k in backends}}
for r in range(1, {rounds} + 1):
    for k in list(backends) if r % 2 else list(backends)[::-1]:
        c = time.process_time()
        backends[k].encode(texts[r * 200 : (r + 1) * 200])
        cpu[k].append((time.process_time() - c) * 5)  # ms per text
print(json.dumps(cpu))
"""


def same_engine_ab(homes: dict[str, Path], rounds: int) -> dict[str, float]:
    """Part 3: this tree's backend on the old layout (one file) and on the mapped one, in one
    process, calls of 200 texts alternated: the layout's own CPU cost per text."""
    graphs = {}
    for layout, label in (("one file", "before"), ("mapped", "after")):
        directory = homes[label] / "models" / MODEL
        manifest = json.loads((directory / "manifest.json").read_text())
        graph = directory / manifest["variants"][manifest["default"]]["file"]
        graphs[layout] = (str(graph), str(directory / "tokenizer.json"))
    code = _AB.format(graphs=graphs, rounds=rounds)
    out = subprocess.run([PY, "-c", code], env=env_for(ROOT, homes["after"]), cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    cpu = json.loads(out.stdout)
    ratios = [m / o for m, o in zip(cpu["mapped"], cpu["one file"], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "one_file_ms": statistics.median(cpu["one file"]),
        "mapped_ms": statistics.median(cpu["mapped"]),
        "ratio_median": statistics.median(ratios),
        "ratio_q1": quartiles[0],
        "ratio_q3": quartiles[2],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the old code")
    ap.add_argument("--workers", default="1,4", help="process counts, comma-separated")
    ap.add_argument("-n", type=int, default=200, help="texts per process")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ab-rounds", type=int, default=40, help="alternated calls per layout in part 3")
    add_plot_options(ap)
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    trees = [("after", ROOT), ("before", args.before.resolve())]
    work = Path(tempfile.mkdtemp(prefix="hmmt", dir="/tmp"))
    try:
        homes = {label: tree_home(work, label, tree) for label, tree in trees}
        runs: dict[tuple[str, int], list[dict]] = {(label, w): [] for label, _ in trees for w in counts}
        seed = int(time.time()) % 100_000
        for r in range(args.rounds):
            for w in counts:
                seed += 100
                for label, tree in trees if r % 2 == 0 else trees[::-1]:
                    row = workers_round(tree, homes[label], w, args.n, seed)
                    runs[(label, w)].append(row)
                    print(f"  round {r} W={w} {label:6} PSS mean {row['pss_mean_mb']:.1f} sum "
                          f"{row['pss_sum_mb']:.1f} MB, CPU {row['cpu_ms_per_text']:.3f} / "
                          f"{row['cpu_ms_per_text_second_call']:.3f} ms/text",
                          flush=True)  # fmt: skip
                after, before = runs[("after", w)][-1]["digests"], runs[("before", w)][-1]["digests"]
                assert after == before, f"the trees' vectors differ: {after} vs {before}"
        rows = resident(homes["after"])
        ab = same_engine_ab(homes, args.ab_rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    keys = ("pss_mean_mb", "pss_sum_mb", "cpu_ms_per_text", "cpu_ms_per_text_second_call")
    medians = {
        f"{label} W={w}": {k: statistics.median(x[k] for x in v) for k in keys}
        for (label, w), v in runs.items()
    }
    print(f"\n| processes with a local engine, {args.n} texts each (median of {args.rounds}) | "
          + " | ".join(medians) + " |")  # fmt: skip
    print("|---|" + "---|" * len(medians))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{m[k]:.3g}" for m in medians.values()) + " |")
    print("(vectors: bit-identical between the trees in every round)")
    print("\n| vocabulary | page cache | advice | table resident MB | largest anonymous MB |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['vocabulary']} | {row['cache']} | {row['advice']} | {row['data_rss_mb']:.1f} of "
              f"{row['data_size_mb']:.1f} | {row['largest_anon_mb']:.1f} |")  # fmt: skip
    print(f"\nSame engine, one process, {args.ab_rounds} alternated calls of 200 texts per layout: "
          f"CPU per text {ab['one_file_ms']:.3f} ms (one file) / {ab['mapped_ms']:.3f} ms (mapped); "
          f"mapped / one file median {ab['ratio_median']:.3f} "
          f"(quartiles {ab['ratio_q1']:.3f}–{ab['ratio_q3']:.3f})")  # fmt: skip
    print(json.dumps({"n": args.n, "rounds": args.rounds, "loadavg_end": load, "workers": medians,
                      "table_resident": rows, "same_engine_cpu": ab, "vectors_identical": True}))  # fmt: skip
    bars(
        args,
        "mapped_tables_workers",
        f"PSS of a process with a local engine ({args.n} texts)",
        [f"W={w}" for w in counts],
        {label: [medians[f"{label} W={w}"]["pss_mean_mb"] for w in counts] for label, _ in trees},
        ylabel="PSS per process, MB",
        fmt="{:.0f}",
        note=f"benchmarks/mapped_tables.py, median of {args.rounds} interleaved rounds; load {load:.1f}",
    )
    bars(
        args,
        "mapped_tables_resident",
        "The word-embedding table resident in one process after 1,000 texts",
        [f"{r['vocabulary']},\n{r['cache']}" for r in rows if r["advice"] == "random"],
        {f"advice {a}": [r["data_rss_mb"] for r in rows if r["advice"] == a] for a in ("random", "none")},
        ylabel="MB (of 44.7)",
        fmt="{:.1f}",
        note="benchmarks/mapped_tables.py; before round 5 all 44.7 MB, anonymous, in every process",
    )


if __name__ == "__main__":
    main()
