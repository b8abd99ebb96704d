"""One benchmark, two versions of hivemem, in one run: is a change within noise?

Runs a benchmark script of this tree against a checkout of an earlier revision (a temporary git
worktree, first on ``PYTHONPATH``) and this tree, alternating ``before, after, before, after…``
so that both see the same machine weather, then compares every number the two runs' final JSON
lines share (the median of the rounds; after / before). The script that runs is the one in this
tree in both cases, so both versions are measured the same way (``--script-from each`` runs each
tree's own copy, for a script that imports internal modules which moved in between).

    python benchmarks/before_after.py --before 964e1c4 --rounds 2 -- memory.py --quick --no-mem0

``--env-before``/``--env-after NAME=VALUE``: a setting for one side only; with ``--before HEAD`` the
same code under two settings, e.g. the service's event loop::

    python benchmarks/before_after.py --before HEAD --env-before HIVEMEM_EVENT_LOOP=asyncio \
        --script-from each -- http_api.py

Prints a table, a final JSON line, and a plot (docs/img/before_after_<bench>.png).
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

ROOT = Path(__file__).resolve().parents[1]


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number of a JSON value, keyed by its dotted path (lists by index; booleans left out)."""
    out: dict[str, float] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix.rstrip(".")] = float(value)
    return out


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise SystemExit("the benchmark printed no JSON line")


def run(
    tree: Path, bench: list[str], env: dict[str, str], script_root: Path
) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    cmd = [sys.executable, str(script_root / "benchmarks" / bench[0]), *bench[1:]]
    # cwd=tree: a ``python -m hivemem …`` or ``python -c`` the script starts puts its working directory
    # before PYTHONPATH on sys.path; from ROOT, the "before" run's children imported this tree
    proc = subprocess.run(cmd, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{bench[0]} failed on {tree} (exit {proc.returncode})")
    return flatten(last_json(proc.stdout)), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each version, alternating")
    parser.add_argument("--script-from", choices=("after", "each"), default="after")
    parser.add_argument("--keep", default="", help="comma-separated substrings: compare only these keys")
    parser.add_argument("--label", default="", help="the plot's name (default: the script's)")
    parser.add_argument("--plot-dir", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--env-before", action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for the before runs only (repeatable); with --before HEAD: "
        "one tree, two settings (e.g. --env-before HIVEMEM_EVENT_LOOP=asyncio)",
    )  # fmt: skip
    parser.add_argument("--env-after", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="-- script.py [its options]")
    args = parser.parse_args()
    bench = [b for b in args.bench if b != "--"]
    if not bench:
        parser.error("name the benchmark after --, e.g. -- memory.py --quick")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="hivemem-before-") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(old), args.before], cwd=ROOT, check=True
        )
        try:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for label, tree in (("before", old), ("after", ROOT)):
                    script_root = ROOT if args.script_from == "after" else tree
                    extra = dict(v.split("=", 1) for v in getattr(args, f"env_{label}"))
                    numbers, took = run(tree, bench, {**env, **extra}, script_root)
                    runs[label].append(numbers)
                    print(f"round {r + 1}/{args.rounds} {label}: {took:.0f} s", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    keys = sorted(set.intersection(*(set(n) for n in runs["before"] + runs["after"])))
    if args.keep:
        keys = [k for k in keys if any(s in k for s in args.keep.split(","))]
    rows = []
    for key in keys:
        before = statistics.median(n[key] for n in runs["before"])
        after = statistics.median(n[key] for n in runs["after"])
        rows.append(
            {"key": key, "before": before, "after": after, "ratio": after / before if before else None}
        )
    width = max([len(r["key"]) for r in rows] + [6])
    print(f"{'metric':<{width}}  {'before':>12}  {'after':>12}  {'after/before':>12}")
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        print(f"{r['key']:<{width}}  {r['before']:>12.4g}  {r['after']:>12.4g}  {ratio:>12}")
    name = args.label or Path(bench[0]).stem
    if not args.no_plots and rows:
        plot(rows, name, Path(args.plot_dir) / f"before_after_{name}.png", args.before)
    head = {"bench": " ".join(bench), "before": args.before, "rounds": args.rounds}
    print(json.dumps({**head, "env_before": args.env_before, "env_after": args.env_after, "rows": rows}))
    return 0


def plot(rows: list[dict[str, Any]], name: str, path: Path, before: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["ratio"] is not None][:40]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(shown) + 1.2))
    ax.barh([r["key"] for r in shown], [r["ratio"] for r in shown], color="#4c72b0")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"after / before ({before})")
    ax.set_title(f"{name}: this tree vs {before}, one run")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
