"""What an old SQLite store's keyword context costs at its next open: its windows re-made in the
current layout (``ftscontext.ensure_context`` / ``backfill_context``: ``NEXT_TABLE`` filled in
steps of ``CONTEXT_BATCH`` rows beside the old windows, then swapped in), which any process that
opens the store pays once, with the option or without.

    python benchmarks/context_migration.py                      # 20,000 memories, one scope
    python benchmarks/context_migration.py --sizes 5000 20000 100000 --rounds 3

Each size: a store of that many memories (corpus sentences, random unit vectors: the storage
layer, no model) with the keyword context, copied each round; in one copy the context's mark is
set to another layout (what an older version's store has: the migration reads the rows, never
the old windows, so their content does not change its cost), the other is left as it is; the
two opens alternate within a round. Rows: the median open of each (s), the migration's cost a
row (µs), and the file before and after it (MB: the old windows' pages are freed at the swap,
not returned, so the file keeps the peak of both tables). Prints a table, one JSON line and a
plot. Timings on a shared machine: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from memory import build  # the sibling script: bulk insert through the storage layer
from plots import add_plot_options, bars

from hivemem.memory.storage import ftscontext
from hivemem.memory.storage.sqlite import SQLiteStorage


def base_store(path: Path, size: int) -> None:
    storage = SQLiteStorage(path)
    storage.bind_model("bench-random", 384)
    build(storage, size)
    storage.enable_context()  # the table, at this layout
    storage.close()


def open_s(path: Path) -> float:
    t0 = time.perf_counter()
    SQLiteStorage(path).close()
    return time.perf_counter() - t0


def mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    ap.add_argument("--rounds", type=int, default=3)
    add_plot_options(ap)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hm-ctx-migration-") as tmp:
        for size in args.sizes:
            base = Path(tmp) / f"base{size}" / "m.sqlite"
            base.parent.mkdir()
            base_store(base, size)
            migrate, plain, before, after = [], [], [], []
            for r in range(args.rounds):
                for kind in ("old", "current") if r % 2 == 0 else ("current", "old"):
                    copy = Path(tmp) / f"{kind}{size}-{r}" / "m.sqlite"
                    shutil.copytree(base.parent, copy.parent)
                    if kind == "old":
                        db = sqlite3.connect(copy)
                        db.execute("UPDATE meta SET value = 'an older layout' WHERE key = 'fts_ctx'")
                        db.commit()
                        db.close()
                        before.append(mb(copy))
                        migrate.append(open_s(copy))
                        after.append(mb(copy))
                        db = sqlite3.connect(copy)
                        mark = db.execute("SELECT value FROM meta WHERE key = 'fts_ctx'").fetchone()[0]
                        db.close()
                        assert mark == ftscontext.CONTEXT_LAYOUT, mark  # migrated, whole
                    else:
                        plain.append(open_s(copy))
                    shutil.rmtree(copy.parent)
            m, p = statistics.median(migrate), statistics.median(plain)
            rows.append(
                {"memories": size, "open_migrating_s": m, "open_s": p, "us_per_row": (m - p) / size * 1e6,
                 "file_mb_before": statistics.median(before), "file_mb_after": statistics.median(after),
                 "migrating_s_rounds": migrate, "open_s_rounds": plain}
            )  # fmt: skip
    print(f"{'memories':>9} {'open, migrating':>16} {'open':>8} {'µs a row':>9} {'file before → after':>22}")
    for r in rows:
        print(
            f"{r['memories']:>9,} {r['open_migrating_s']:>14.2f} s {r['open_s']:>6.3f} s"
            f" {r['us_per_row']:>9.1f} {r['file_mb_before']:>10.1f} → {r['file_mb_after']:.1f} MB"
        )
    print(json.dumps({"benchmark": "context_migration", "batch": ftscontext.CONTEXT_BATCH,
                      "rounds": args.rounds, "rows": rows}))  # fmt: skip
    bars(
        args,
        "context_migration",
        "Opening an old SQLite store: its keyword context re-made",
        [f"{r['memories']:,}" for r in rows],
        {"open, migrating": [r["open_migrating_s"] for r in rows], "open": [r["open_s"] for r in rows]},
        ylabel="s (median)",
        fmt="{:.2f}",
        note="one scope; storage layer, random vectors; a shared box",
    )


if __name__ == "__main__":
    main()
