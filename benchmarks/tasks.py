"""Benchmark: W workers each running 20 tasks of one type — json.load the whole file vs TaskLibrary.

Generates a deterministic 62 MB library (630 tasks, 10 types, ~99 KB each), converts it (timed),
then for W = 1 and W = 25 starts W fresh worker processes per approach. Each worker gets its 20
tasks, touches every object and waits at a barrier while the parent sums their PSS from
/proc/PID/smaps_rollup. ``bare`` workers (an interpreter that loads nothing) give the baseline for
per-worker overhead. Prints a table and, last, one JSON line. Ratios are measured in one run.

    python benchmarks/tasks.py [--tasks 630] [--workers 1,25] [--compression none]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plots import add_plot_options, bars  # noqa: E402

from hivemem.tasks.convert import convert_tasks  # noqa: E402
from hivemem.tasks.synth import iter_tasks, write_library  # noqa: E402

WORKER = Path(__file__).resolve().parent / "tasks_worker.py"


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss line for pid {pid}")


def run_group(mode: str, path: Path, workers: int, per_worker: int, types: list[str]) -> dict:
    """Start ``workers`` workers at once, wait until all hold their tasks, measure, release."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for w in range(workers):
        args = [sys.executable, str(WORKER), mode, str(path), types[w % len(types)], str(per_worker), str(w)]
        procs.append(
            subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        )
    try:
        reports = []
        for proc in procs:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{mode} worker {proc.pid} died (exit {proc.wait()})")
            reports.append(json.loads(line))
        pss = [pss_kb(proc.pid) for proc in procs]  # everyone is at the barrier now
    finally:
        for proc in procs:
            try:
                proc.stdin.write("go\n")
                proc.stdin.close()
            except OSError:
                pass
        for proc in procs:
            proc.wait()
    firsts = [r["first_s"] for r in reports if r["first_s"] is not None]
    return {
        "mode": mode,
        "workers": workers,
        "total_pss_mb": sum(pss) / 1024,
        "mean_pss_mb": statistics.fmean(pss) / 1024,
        "first_task_s_median": statistics.median(firsts) if firsts else None,
        "first_task_s_max": max(firsts) if firsts else None,
        "all_tasks_s_median": statistics.median(r["all_s"] for r in reports),
        "objects_touched": sum(r["objects"] for r in reports),
    }


def compare_compression(src: Path, tmp: Path, task_type: str, per_worker: int) -> dict[str, dict]:
    """Conversion time, file size and in-process time to read 20 tasks, per compression."""
    from hivemem.tasks import TaskLibrary

    rows = {}
    for kind in ("none", "zlib", "zstd"):
        dest = tmp / f"codec-{kind}.db"
        started = time.perf_counter()
        convert_tasks(src, dest, compression=kind, progress=False)
        convert_s = time.perf_counter() - started
        lib = TaskLibrary(dest)
        reads = []
        for seed in range(5):
            started = time.perf_counter()
            lib.sample(task_type, per_worker, seed=seed)
            reads.append(time.perf_counter() - started)
        rows[kind] = {
            "convert_s": round(convert_s, 3),
            "library_mb": round(dest.stat().st_size / 1e6, 1),
            "read_20_s": round(statistics.median(reads), 4),
        }
        lib.close()
        dest.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=630)
    parser.add_argument("--types", type=int, default=10)
    parser.add_argument("--per-worker", type=int, default=20)
    parser.add_argument("--workers", default="1,25", help="comma-separated worker counts")
    parser.add_argument("--compression", default="none", choices=["none", "zlib", "zstd"])
    add_plot_options(parser)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="hivemem-bench-tasks-") as tmp:
        src, dest = Path(tmp) / "tasks_with_workflows.json", Path(tmp) / "tasks.db"
        write_library(src, iter_tasks(args.tasks, args.types))
        size_mb = src.stat().st_size / 1e6
        started = time.perf_counter()
        summary = convert_tasks(
            src, dest, index_fields=["difficulty"], compression=args.compression, progress=False
        )
        convert_s = time.perf_counter() - started
        types = sorted(summary["types"])

        codecs = compare_compression(src, Path(tmp), types[0], args.per_worker)
        results: dict[int, dict[str, dict]] = {}
        for workers in counts:
            results[workers] = {}
            for mode, path in (("bare", src), ("json", src), ("tasklib", dest)):
                results[workers][mode] = run_group(mode, path, workers, args.per_worker, types)

    print(
        f"source {size_mb:.1f} MB, {args.tasks} tasks, {args.types} types -> library "
        f"{summary['bytes'] / 1e6:.1f} MB ({args.compression}); conversion {convert_s:.2f} s"
    )
    header = (
        f"{'W':>3} {'approach':<12} {'total PSS MB':>13} {'per worker above bare MB':>25} "
        f"{'first task s (median/max)':>26} {'all 20 s':>9}"
    )
    print(header)
    print("-" * len(header))
    out: dict = {
        "bench": "tasks",
        "source_mb": round(size_mb, 1),
        "library_mb": round(summary["bytes"] / 1e6, 1),
        "compression": args.compression,
        "convert_s": round(convert_s, 3),
    }
    for workers, modes in results.items():
        bare = modes["bare"]["mean_pss_mb"]
        for mode in ("bare", "json", "tasklib"):
            r = modes[mode]
            over = r["mean_pss_mb"] - bare
            first = (
                f"{r['first_task_s_median']:.3f}/{r['first_task_s_max']:.3f}"
                if r["first_task_s_median"]
                else "-"
            )
            label = {"bare": "bare python", "json": "json.load", "tasklib": "TaskLibrary"}[mode]
            print(
                f"{workers:>3} {label:<12} {r['total_pss_mb']:>13.1f} {over:>25.1f} {first:>26} "
                f"{r['all_tasks_s_median']:>9.3f}"
            )
            out[f"w{workers}_{mode}"] = {
                k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
            }
            out[f"w{workers}_{mode}"]["per_worker_over_bare_mb"] = round(over, 2)
        out[f"w{workers}_pss_ratio_json_over_tasklib"] = round(
            modes["json"]["total_pss_mb"] / modes["tasklib"]["total_pss_mb"], 2
        )
        out[f"w{workers}_first_task_speedup"] = round(
            modes["json"]["first_task_s_median"] / modes["tasklib"]["first_task_s_median"], 1
        )
    print()
    print(f"{'compression':<12} {'convert s':>10} {'library MB':>11} {'read 20 tasks s':>16}")
    for kind, row in codecs.items():
        print(f"{kind:<12} {row['convert_s']:>10.2f} {row['library_mb']:>11.1f} {row['read_20_s']:>16.4f}")
    out["compression_compare"] = codecs
    print(json.dumps(out))
    names = {"bare": "bare python (baseline)", "json": "json.load the whole file", "tasklib": "TaskLibrary"}
    bars(
        args,
        "tasks_pss_by_workers",
        f"Task library: total PSS of W workers, {args.per_worker} tasks each ({size_mb:.0f} MB library)",
        [f"W = {w}" for w in results],
        {label: [results[w][mode]["total_pss_mb"] for w in results] for mode, label in names.items()},
        ylabel="total PSS, MB",
        note="/proc/PID/smaps_rollup summed at a barrier while every worker holds its tasks",
    )


if __name__ == "__main__":
    main()
