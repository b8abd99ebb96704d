"""Issue 25's table in one command: every path by which many callers reach the engine, against its target.

    HIVEMEM_HOME=/tmp/hm1 python benchmarks/many_callers.py [--rounds 3] [--quick]

Runs, one after the other and each in its own process, the scripts that measure one path
(each prints a table and a JSON line of its own; their docstrings say how they measure):

* ``service_callers.py``: 25 processes × single texts through a fresh service / the same texts
  embedded in one in-process call; the service's PSS right after the last reply; a lone client's p50;
* ``memory_threads.py``: 16 threads × ``embed_one`` / the engine's batch, 20 threads ×
  ``Memory.add`` / ``add_batch``;
* ``search_threads.py``: 8 threads × hybrid ``Memory.search`` / one thread (10k memories, no model);
* ``http_api.py``: 32 HTTP clients searching with new queries, and adding, / the engine's batch rate.

Every figure is a ratio taken within one run of its script (medians over its rounds), so the
table compares across machines better than rates do; it still depends on the cores: on 2 cores
the model and the callers' Python share them (docs/service.md, docs/embed.md, docs/http.md).
Prints the table (figure, target, met), one JSON line with every script's own JSON under its
name, and a bar chart of the ratios against their targets (docs/img/many_callers.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from before_after import last_json
from plots import add_plot_options, bars

HERE = Path(__file__).resolve().parent

# (label, script, key path in its JSON, target, at least): issue 25's targets
FIGURES: list[tuple[str, str, tuple[str, ...], float, bool]] = [
    ("25 processes via the service / in-process batch", "service_callers", ("after", "ratio"), 0.85, True),
    ("16 threads × embed_one / engine batch", "memory_threads", ("after", "threads16_vs_engine"), 0.85, True),
    ("20 threads × add / add_batch", "memory_threads", ("after", "threads_add_vs_add_batch"), 0.8, True),
    ("8 threads × Memory.search / 1 thread", "search_threads", ("ratio",), 1.0, True),
    ("32 HTTP clients, new-query searches / engine", "http_api", ("search_new_vs_engine",), 0.4, True),
    ("32 HTTP clients, adds / engine", "http_api", ("add_new_vs_engine",), 0.6, True),
    ("service PSS after 25 workers, MB", "service_callers", ("after", "service_pss_busy_mb"), 150.0, False),
]  # fmt: skip


def run_script(name: str, extra: list[str]) -> dict[str, Any]:
    """The script's last stdout line, parsed (its own JSON); its output is shown as it comes."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if proc.wait() != 0:
        raise SystemExit(f"{name}.py failed (exit {proc.returncode})")
    out = last_json("".join(lines))
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def dig(data: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = data
    for key in path:
        value = value[key]
    return float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each script that takes them")
    ap.add_argument("--quick", action="store_true", help="fewer texts, searches and requests (a smoke run)")
    add_plot_options(ap)
    args = ap.parse_args()
    if "HIVEMEM_HOME" not in os.environ:
        print("note: HIVEMEM_HOME is not set: the service and the engine use the default home")
    rounds = ["--rounds", str(args.rounds)]
    quiet = ["--no-plots"]
    plans = {
        "service_callers": [*rounds, "--workers", "25", "-n", "16" if args.quick else "40", *quiet],
        "memory_threads": [*rounds, *(["--batch", "200", "--adds", "200"] if args.quick else []), *quiet],
        "search_threads": [*rounds, "--searches", "100" if args.quick else "400", *quiet],
        "http_api": ["--quick"] if args.quick else [],
    }
    load_start = os.getloadavg()[0]
    results = {name: run_script(name, extra) for name, extra in plans.items()}
    rows = []
    for label, script, path, target, at_least in FIGURES:
        value = dig(results[script], path)
        met = value >= target if at_least else value <= target
        row = {"figure": label, "value": round(value, 3), "target": target, "at_least": at_least}
        rows.append({**row, "met": met})
    cores = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    print(f"\n| issue 25's paths ({cores} cores, {cpu}; load {load_start:.1f} → {os.getloadavg()[0]:.1f}) "
          "| measured | target | met |")  # fmt: skip
    print("|---|---|---|---|")
    for r in rows:
        sign, met = "≥" if r["at_least"] else "≤", "yes" if r["met"] else "no"
        print(f"| {r['figure']} | {r['value']:.3g} | {sign} {r['target']:g} | {met} |")
    ratios = [r for r in rows if r["at_least"]]
    bars(
        args,
        "many_callers",
        f"Many callers against one batch ({cores} cores), issue 25's targets",
        [r["figure"].replace(" / ", "\n/ ") for r in ratios],
        {"measured": [r["value"] for r in ratios], "target": [r["target"] for r in ratios]},
        ylabel="ratio",
        fmt="{:.2f}",
        horizontal=True,
    )
    print(json.dumps({"bench": "many_callers", "cores": cores, "loadavg_start": load_start,
                      "loadavg_end": os.getloadavg()[0], "rows": rows, "scripts": results}))  # fmt: skip


if __name__ == "__main__":
    main()
