"""Many processes × single texts through the shared service, this tree against an older one, interleaved.

    python benchmarks/service_callers.py --before /tmp/main-ref [--workers 25] [-n 40] [--rounds 3]

Each round, for each tree in turn (A B, then B A, …): a fresh service of that tree (``hivemem
serve``, its own socket and cache file), W worker processes of that tree that each embed n texts
one at a time through ``hivemem.connect()`` (distinct texts, fresh cache: the service computes
every one), all released at once from a barrier; then the tree's in-process ``embed`` of the same
number of texts in one call (the engine's batch rate, the issue-25 ratio's denominator). Besides
texts/s it reads the service's CPU time (``/proc/PID/stat``) over the run: CPU per text is much
less sensitive to a shared machine's load than wall time; the same for the W workers together (a
worker's own CPU per call competes with the model for the cores). The service's PSS right after
the last reply (busy) and after the workers exited. And a lone client's latency: 200
single texts one after another, p50. ``--cached``: every text is in the cache file before the
service starts (its in-process LRU is empty), so no model runs and the figures are the service's
own cost per request: framing, the event loop, the cache lookup. From the service's metrics over
the workers' run: texts per model batch (``batch_texts_mean``) and seconds of model batches per
second of the run (``batch_s_per_s``: the share of the run with a batch in flight, when one batch
at a time uses every core). Each tree runs in a home of its own (``model_homes.py``). Prints a
table (medians over rounds), one JSON line and bar charts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

from model_homes import tree_home  # noqa: E402
from plots import add_plot_options, bars  # noqa: E402
from procstat import cpu_s, pss_mb, wait_for_socket  # noqa: E402


def worker(seed: int, index: int, n: int, total: int) -> None:
    import hivemem
    from hivemem.embed.corpus import sentences

    texts = sentences(total, seed=seed)[index * n : (index + 1) * n]
    emb = hivemem.connect(autostart=False)
    emb.embed_one(f"warm-up {seed} {index}")
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for text in texts:
        t0 = time.perf_counter()
        emb.embed_one(text)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"end": time.time(), "times": times}), flush=True)
    sys.stdin.readline()


def one_round(
    tree: Path, work: Path, w: int, n: int, seed: int, service_args: list[str], cached: bool, home: Path
) -> dict:
    sock = work / f"s{seed}.sock"
    env = {
        **os.environ,
        "HIVEMEM_HOME": str(home),  # the tree's own (model_homes.py)
        "PYTHONPATH": f"{tree}:{ROOT / 'benchmarks'}",
        "HIVEMEM_SOCKET": str(sock),
        "HIVEMEM_CACHE": str(work / f"c{seed}.sqlite"),
        "HF_HUB_OFFLINE": "1",
    }
    if cached:  # the workers' texts on disk before the service starts: its LRU is empty, no model runs
        code = _FILL.format(total=w * n, seed=seed, lone=seed + 7)
        subprocess.run([PY, "-c", code], env=env, cwd=tree, check=True)
    # cwd=tree: ``python -m``/``-c`` put the working directory before PYTHONPATH on sys.path (run
    # from this checkout, the old tree's service and batch were this tree's)
    service = subprocess.Popen(
        [PY, "-m", "hivemem", "serve", *service_args], env=env, cwd=tree, stderr=subprocess.DEVNULL
    )
    out: dict = {}
    try:
        wait_for_socket(service, sock, f"the service of {tree}")
        lone = subprocess.run(
            [PY, "-c", _LONE.format(seed=seed + 7)],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        )
        out["lone_p50_ms"] = float(lone.stdout.strip())
        procs = [
            subprocess.Popen(
                [PY, __file__, "--worker", str(seed), str(i), str(n), str(w * n)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(w)
        ]
        try:
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            batches0 = _batches(env, tree)
            cpu0, start = cpu_s(service.pid), time.time()
            client_cpu0 = sum(cpu_s(p.pid) for p in procs)
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            done = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
            out["service_cpu_ms_per_text"] = (cpu_s(service.pid) - cpu0) * 1000 / (w * n)
            out["client_cpu_ms_per_text"] = (sum(cpu_s(p.pid) for p in procs) - client_cpu0) * 1000 / (w * n)
            out["service_pss_busy_mb"] = pss_mb(service.pid)  # right after the last reply
            wall = max(d["end"] for d in done) - start
            out["texts_per_s"] = w * n / wall
            out["p50_ms"] = statistics.median(t for d in done for t in d["times"]) * 1000
            count, texts, seconds = (b - a for a, b in zip(batches0, _batches(env, tree), strict=True))
            out["batch_texts_mean"] = texts / count if count else math.nan
            out["batch_s_per_s"] = seconds / wall
            for p in procs:
                p.communicate("exit\n", timeout=60)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        out["service_pss_mb"] = pss_mb(service.pid)
    finally:
        service.terminate()
        service.wait(60)
    batch = subprocess.run(
        [PY, "-c", _BATCH.format(total=w * n, seed=seed + 3)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    out["batch_texts_per_s"] = float(batch.stdout.strip())
    out["ratio"] = out["texts_per_s"] / out["batch_texts_per_s"]
    return out


def _batches(env: dict[str, str], tree: Path) -> tuple[float, float, float]:
    """The service's model batches so far (its metrics): how many, their texts, their seconds; NaN
    for a tree whose service does not report them."""
    got = subprocess.run([PY, "-c", _STATS], env=env, cwd=tree, capture_output=True, text=True)
    if got.returncode != 0:
        return math.nan, math.nan, math.nan
    count, texts, seconds = got.stdout.split()
    return float(count), float(texts), float(seconds)


_STATS = (
    "import hivemem\nm = hivemem.connect(autostart=False).stats()['metrics']\n"
    "print(m['batch_size']['count'], m['batch_size']['sum'], m['batch_seconds']['sum'])\n"
)
_LONE = (
    "import time, statistics, hivemem\nfrom hivemem.embed.corpus import sentences\n"
    "e = hivemem.connect(autostart=False)\nt = sentences(201, seed={seed})\ne.embed_one(t[0])\nd = []\n"
    "for x in t[1:]:\n    s = time.perf_counter(); e.embed_one(x); d.append(time.perf_counter() - s)\n"
    "print(statistics.median(d) * 1000)\n"
)
_FILL = (
    "import hivemem\nfrom hivemem.embed.corpus import sentences\ne = hivemem.Embedder()\n"
    "e.embed(sentences({total}, seed={seed}))\ne.embed(sentences(201, seed={lone}))\ne.close()\n"
)
_BATCH = (
    "import time, hivemem\nfrom hivemem.embed.corpus import sentences\n"
    "t = sentences({total}, seed={seed})\ne = hivemem.Embedder(cache=False)\ne.embed(t[:64])\n"
    "s = time.perf_counter()\ne.embed(t)\nprint(len(t) / (time.perf_counter() - s))\n"
)
KEYS = ("texts_per_s", "batch_texts_per_s", "ratio", "service_cpu_ms_per_text", "client_cpu_ms_per_text",
        "p50_ms", "lone_p50_ms", "service_pss_busy_mb", "service_pss_mb", "batch_texts_mean",
        "batch_s_per_s")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="a checkout of the old code, measured interleaved")
    ap.add_argument("--workers", type=int, default=25)
    ap.add_argument("-n", type=int, default=40, help="texts per worker")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--service-args", default="", help="extra `hivemem serve` options")
    ap.add_argument(
        "--cached",
        action="store_true",
        help="every text already in the cache file (not in the service's memory): the service's own cost",
    )
    add_plot_options(ap)
    args = ap.parse_args()
    trees = [("after", ROOT)] + ([("before", args.before.resolve())] if args.before else [])
    runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
    work = Path(tempfile.mkdtemp(prefix="hmsc", dir="/tmp"))
    try:
        homes = {label: tree_home(work, label, tree) for label, tree in trees}
        seed = int(time.time()) % 100_000
        for r in range(args.rounds):
            for label, tree in trees if r % 2 == 0 else trees[::-1]:
                seed += 100
                extra = args.service_args.split()
                row = one_round(tree, work, args.workers, args.n, seed, extra, args.cached, homes[label])
                runs[label].append(row)
                print(f"  round {r} {label:6} " + "  ".join(f"{k} {row[k]:.3g}" for k in KEYS), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"\n| {args.workers} processes × {args.n} single texts (median of {args.rounds}) | "
          + " | ".join(label for label, _ in trees) + " |")  # fmt: skip
    print("|---|" + "---|" * len(trees))
    result: dict = {"workers": args.workers, "n": args.n, "rounds": args.rounds, "cached": args.cached,
                    "loadavg_end": load}  # fmt: skip
    for key in KEYS:
        cells = []
        for label, _ in trees:
            value = statistics.median(x[key] for x in runs[label])
            result.setdefault(label, {})[key] = value
            cells.append(f"{value:.3g}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    result["runs"] = runs
    print(json.dumps(result))
    # --cached: no model runs, so the ratio to the batch means nothing; the service's own CPU and
    # the workers' (per request) do
    series = {"ratio": [result[label]["ratio"] for label, _ in trees]}
    what = "ratio"
    if args.cached:
        what = "CPU per request, ms"
        series = {
            who: [result[label][key] for label, _ in trees]
            for who, key in (("service", "service_cpu_ms_per_text"), ("workers", "client_cpu_ms_per_text"))
        }
    bars(
        args,
        "service_callers_cached" if args.cached else "service_callers",
        f"{args.workers} processes × single texts through the service"
        + (" (cached: the protocol's cost)" if args.cached else " / the in-process batch"),
        [label for label, _ in trees],
        series,
        ylabel=what,
        fmt="{:.3f}" if args.cached else "{:.2f}",
        note=f"benchmarks/service_callers.py, median of {args.rounds} interleaved rounds; load {load:.1f}",
    )
    bars(
        args,
        "service_callers_pss_cached" if args.cached else "service_callers_pss",
        f"The service's PSS, {args.workers} processes × {args.n} single texts",
        ["right after the last reply", "after the workers exited"],
        {label: [result[label][k] for k in ("service_pss_busy_mb", "service_pss_mb")] for label, _ in trees},
        ylabel="PSS, MB",
        fmt="{:.0f}",
        note=f"benchmarks/service_callers.py, median of {args.rounds} interleaved rounds; load {load:.1f}",
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*(int(x) for x in sys.argv[2:6]))
    else:
        main()
