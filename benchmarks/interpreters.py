"""One benchmark, several interpreters (or one interpreter under several settings), in one run.

Runs a benchmark script of this tree (this tree first on ``PYTHONPATH``) once per interpreter and
round, the interpreters taking turns (A B C, C B A, …) so that the load of a shared machine falls
on all alike, and compares the numbers of the scripts' final JSON lines named by ``--keys`` (the
median over rounds, and each one's ratio to the first interpreter; a script's own per-round
lists are left out). An interpreter is ``LABEL=[NAME=VALUE …] PATH`` (no ``=`` in the label):
the assignments are its environment, e.g. the GIL turned back on in a free-threaded build
(docs/memory.md, "A free-threaded interpreter")::

    python benchmarks/interpreters.py --rounds 3 \\
        --python "3.13t GIL off=/opt/py313t-venv/bin/python" \\
        --python "3.13t GIL on=PYTHON_GIL=1 /opt/py313t-venv/bin/python" \\
        --python "3.11=/work/main/.venv/bin/python" \\
        --keys ratio,one_rate,many_rate --plot-keys ratio -- search_threads.py --rounds 2

The script's ``gil`` key (``sys._is_gil_enabled()`` in the child, after every import) is shown per
interpreter: an extension module not marked free-threading-safe turns the GIL back on.
Prints a table, a final JSON line, and a plot (docs/img/interpreters_<label or script>.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from before_after import flatten, last_json
from plots import add_plot_options, bars

ROOT = Path(__file__).resolve().parents[1]


def parse_python(spec: str) -> tuple[str, str, dict[str, str]]:
    """``LABEL=[NAME=VALUE …] PATH`` → ``(label, path, env)``."""
    label, sep, rest = spec.partition("=")
    words = shlex.split(rest)
    if not sep or not label or not words or "=" in words[-1]:
        raise SystemExit(f"--python {spec!r}: expected LABEL=[NAME=VALUE ...] PATH")
    return label, words[-1], dict(w.split("=", 1) for w in words[:-1])


def run(python: str, env: dict[str, str], bench: list[str]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    cmd = [python, str(ROOT / "benchmarks" / bench[0]), *bench[1:], "--no-plots"]
    full = {**os.environ, "HF_HUB_OFFLINE": "1", **env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{bench[0]} failed under {python} {env} (exit {proc.returncode})")
    return last_json(proc.stdout), time.perf_counter() - started


def draw(args: Any, name: str, keys: list[str], series: dict[str, dict[str, float]], note: str) -> None:
    """The plot: one bar per interpreter (``series``: label → medians) for each of ``keys``."""
    bars(
        args, f"interpreters_{name}", f"{name}, per interpreter",
        [k.split(".")[-1] for k in keys], {label: [med[k] for k in keys] for label, med in series.items()},
        ylabel="median over rounds", fmt="{:.2f}", note=note, horizontal=True,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", action="append", required=True, help="LABEL=[NAME=VALUE ...] PATH")
    ap.add_argument("--rounds", type=int, default=3, help="runs of the script per interpreter")
    ap.add_argument("--keys", default="", help="comma-separated substrings: the numbers shown (all)")
    ap.add_argument("--plot-keys", default="", help="the keys plotted (default: --keys)")
    ap.add_argument("--label", default="", help="the plot's name (default: the script's)")
    add_plot_options(ap)
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- script.py [its options]")
    args = ap.parse_args()
    bench = [b for b in args.bench if b != "--"]
    if not bench:
        ap.error("name the benchmark after --, e.g. -- search_threads.py --rounds 2")
    pythons = [parse_python(s) for s in args.python]
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in pythons}
    gil: dict[str, set[bool]] = {label: set() for label, _, _ in pythons}
    for r in range(args.rounds):
        for label, python, env in pythons if r % 2 == 0 else pythons[::-1]:
            raw, took = run(python, env, bench)
            runs[label].append(flatten(raw))
            gil[label].add(bool(raw.get("gil", True)))
            print(f"round {r + 1}/{args.rounds} {label}: {took:.0f} s", file=sys.stderr, flush=True)
    keys = sorted(set.intersection(*(set(n) for rs in runs.values() for n in rs)))
    keys = [k for k in keys if not any(part.isdigit() for part in k.split("."))]  # not per-round lists
    wanted = [s for s in args.keys.split(",") if s]
    keys = [k for k in keys if not wanted or any(s in k.split(".")[-1] for s in wanted)]
    labels = [label for label, _, _ in pythons]
    first = labels[0]
    med = {label: {k: statistics.median(n[k] for n in runs[label]) for k in keys} for label in labels}
    words = {frozenset({True}): "on", frozenset({False}): "off"}
    gil_on = {label: words.get(frozenset(gil[label]), "mixed") for label in labels}
    print(f"\n| {bench[0]} (median of {args.rounds} runs each, alternated) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    print("| GIL in the child | " + " | ".join(gil_on[label] for label in labels) + " |")
    for k in keys:
        cells = []
        for label in labels:
            v, base = med[label][k], med[first][k]
            cell = f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
            if label != first and base:
                cell += f" ({v / base:.2f}×)"
            cells.append(cell)
        print(f"| {k} | " + " | ".join(cells) + " |")
    plotted = [s for s in (args.plot_keys or args.keys).split(",") if s]
    shown = [k for k in keys if not plotted or any(s == k.split(".")[-1] for s in plotted)]
    name = args.label or Path(bench[0]).stem
    if shown:
        note = f"{args.rounds} runs per interpreter, alternated; {' '.join(bench)}"
        draw(args, name, shown, {f"{label} (GIL {gil_on[label]})": med[label] for label in labels}, note)
    head = {"bench": " ".join(bench), "rounds": args.rounds}
    pys = {label: {"python": python, "env": env, "gil": gil_on[label]} for label, python, env in pythons}
    print(json.dumps({**head, "pythons": pys, "median": med, "runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
