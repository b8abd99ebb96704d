"""How fast a run with a broken setup stops, and what the rerun after the fix does (issue 20).

A user's project in a temp folder: ``job.py`` whose factory takes ``--factory-s`` seconds and then
raises while a flag file is missing (a model file this host lacks), and 200 items. For each place
(``local``: ``hivemem run --workers 2``; ``cluster``: ``--cluster`` on a Dask scheduler and two
workers started outside the project with only hivemem on ``PYTHONPATH``) it times, from process
start to exit: the broken run (its exit code and the records it left), then, after creating the
flag, the plain rerun (items ok). ``--root`` runs another hivemem checkout (e.g. the code before
the fix) with the same project and servers. Prints a table, one JSON line and a chart.
Run: ``python benchmarks/run_setup.py`` (~1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cluster"))  # the real-server helpers the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_helpers import DaskCluster  # noqa: E402
from plots import add_plot_options, bars  # noqa: E402

JOB = """
import os
import time

FLAG = {flag!r}


def make():
    time.sleep({factory_s})  # a model load
    if not os.path.exists(FLAG):
        raise FileNotFoundError("model.bin is missing on this host")
    return os.getpid()


def work(pid, item):
    return {{"double": 2 * item["x"], "pid": pid}}
"""


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - started, done.returncode, done.stderr


def scenario(name: str, root: Path, project: Path, flag: Path, n: int, extra: list[str]) -> dict:
    out = project / f"out-{name}.jsonl"
    for stale in (out, Path(f"{out}.lock"), flag):
        stale.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "hivemem.app.cli", "run", "job:work", "--factory", "job:make"]
    cmd += ["--items", "items.jsonl", "--results", out.name, "--no-progress", *extra]
    broken_s, broken_rc, stderr = _timed(cmd, env, project)
    left = _records(out)
    flag.touch()
    fixed_s, fixed_rc, _ = _timed(cmd, env, project)
    after = _records(out)
    latest = {r["key"]: r for r in after}
    return {
        "broken_s": broken_s,
        "broken_rc": broken_rc,
        "recorded_failed": sum(1 for r in left if not r["ok"]),
        "error_lines": stderr.count("FileNotFoundError: model.bin is missing on this host"),
        "rerun_s": fixed_s,
        "rerun_rc": fixed_rc,
        "rerun_ok": sum(1 for r in latest.values() if r["ok"]),
        "items": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="hivemem checkout to run (default: this one)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--factory-s", type=float, default=1.5)
    parser.add_argument("--label", default="this checkout", help="names the code in the chart")
    add_plot_options(parser)
    args = parser.parse_args()
    root = args.root.resolve()
    with tempfile.TemporaryDirectory(prefix="hm-setup-") as tmp:
        project, flag = Path(tmp) / "project", Path(tmp) / "model.bin"
        project.mkdir()
        (project / "job.py").write_text(JOB.format(flag=str(flag), factory_s=args.factory_s))
        items = "".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(args.items))
        (project / "items.jsonl").write_text(items)
        rows = {"local": scenario("local", root, project, flag, args.items, ["--workers", "2"])}
        cluster = DaskCluster(workers=2, outside=True)
        try:
            rows["cluster"] = scenario(
                "cluster", root, project, flag, args.items, ["--cluster", cluster.address]
            )
        finally:
            cluster.close()
    cols = [
        ("broken_s", "broken run s", "{:.1f}"),
        ("broken_rc", "exit", "{}"),
        ("recorded_failed", "items recorded failed", "{}"),
        ("error_lines", "error printed (times)", "{}"),
        ("rerun_s", "plain rerun s", "{:.1f}"),
        ("rerun_rc", "rerun exit", "{}"),
        ("rerun_ok", "rerun ok", "{}"),
    ]
    print(f"{args.items} items, factory {args.factory_s} s then raises; 2 workers; code: {root}")
    print("| where | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for where, row in rows.items():
        print(f"| {where} | " + " | ".join(fmt.format(row[k]) for k, _, fmt in cols) + " |")
    summary = {
        "bench": "run_setup",
        "root": str(root),
        "items": args.items,
        "factory_s": args.factory_s,
        "rows": {
            w: {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for w, r in rows.items()
        },
        "stops_within_15s": all(r["broken_s"] <= 15 and r["broken_rc"] != 0 for r in rows.values()),
        "nothing_recorded": all(r["recorded_failed"] == 0 for r in rows.values()),
        "rerun_does_all": all(r["rerun_ok"] == args.items for r in rows.values()),
    }
    print(json.dumps(summary))
    where = list(rows)
    bars(
        args,
        "run_setup",
        f"A broken factory ({args.factory_s} s, then raises), {args.items} items: {args.label}",
        where,
        {
            "broken run: s to exit": [rows[w]["broken_s"] for w in where],
            "plain rerun after the fix: s": [rows[w]["rerun_s"] for w in where],
        },
        ylabel="seconds",
        fmt="{:.1f}",
        note="items recorded as failed by the broken run: "
        + ", ".join(f"{w} {rows[w]['recorded_failed']}" for w in where)
        + "; ok after the plain rerun: "
        + ", ".join(f"{w} {rows[w]['rerun_ok']}" for w in where),
    )


if __name__ == "__main__":
    main()
