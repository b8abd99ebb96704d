"""PostgreSQL's re-score of the int8 copy's candidates: the join it was against ``rescore_sql`` now.

    python benchmarks/pg_rescore.py                      # 30,000 memories, 200 statements each
    python benchmarks/pg_rescore.py --size 100000

One store of ``--size`` memories in one scope (random unit vectors of 384 floats written through
the storage layer; no model: the statement is what is timed), 1% of them expired. Each round
draws 256 candidate row ids and a query and runs both statements one after the other, for two
filters: the scope alone, and the scope with ``Memory``'s "not expired" test (what a search sends
while expired memories wait to be purged). ``join``: the statement before 2026-12-06 (the
candidates ``unnest``-ed and joined to ``memories`` under the filter), kept here as the
reference; ``by rid``: ``postgres.rescore_sql``. The table gives each p50 (the first 20 rounds
left out: PostgreSQL prepares a statement after five runs) and ``by rid / join``. The server is
the test suite's throwaway one (``tests/pgtemp.py``) unless ``HIVEMEM_BENCH_PG_DSN`` names one.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from plots import add_plot_options, bars

from hivemem.memory import filters as flt
from hivemem.memory.records import prepare
from hivemem.memory.storage.locate import PostgresLocation, resolve
from hivemem.memory.storage.postgres import PostgresStorage, rescore_sql
from hivemem.memory.storage.rows import FIELDS
from hivemem.memory.storage.sqlcompile import unexpired

ROOT = Path(__file__).resolve().parents[1]
DIM = 384
SKIP = 20  # rounds left out of each p50


def joined(ns: str, where: str) -> str:
    """The re-score statement before 2026-12-06 (same parameters as ``rescore_sql``)."""
    return (
        f"SELECT {FIELDS}, (vec <#> %b) FROM unnest(%s::bigint[]) AS c(rid)"
        f" JOIN {ns}.memories USING (rid) WHERE {where} ORDER BY vec <#> %b, rid LIMIT %s"
    )


def measure(dsn: str, size: int, rounds: int) -> dict[str, dict[str, float]]:
    where = resolve(f"{dsn}{'&' if '?' in dsn else '?'}schema=bench_{uuid.uuid4().hex[:8]}")
    assert isinstance(where, PostgresLocation)
    storage = PostgresStorage(where.conninfo, schema=where.schema)
    try:
        storage.bind_model("bench/random", DIM)
        rng = np.random.default_rng(5)
        ids: list[str] = []
        for start in range(0, size, 5000):
            n = min(5000, size - start)
            v = rng.standard_normal((n, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            rows = [x for i in range(start, start + n) for x in prepare(f"memory {i}", user_id="bench")]
            ids += [mid for mid, _ in storage.insert(rows, v)]
        expired = [(mid, "2000-01-01T00:00:00.000000+00:00") for mid in ids[::100]]
        storage._transact(lambda tx: tx.set_expiry(expired, "2026-01-01T00:00:00.000000+00:00"))
        scope = flt.parse({"user_id": "bench"})
        assert isinstance(scope, flt.Logic)
        filters = {"scope": scope, "scope + not expired": flt.Logic("AND", (*scope.items, unexpired(None)))}
        ns, out = storage._ns, {}
        with storage._read() as conn:
            high = int(conn.execute(f"SELECT max(rid) FROM {ns}.memories").fetchone()[0])
            for label, node in filters.items():
                c = storage.compile(node)
                statements = {"join": joined(ns, c.sql), "by rid": rescore_sql(ns, c.sql)}
                times: dict[str, list[float]] = {k: [] for k in statements}
                for _ in range(rounds + SKIP):
                    rids = [int(r) for r in rng.choice(high, 256, replace=False) + 1]
                    q = rng.standard_normal(DIM).astype(np.float32)
                    for name, sql in statements.items():
                        t0 = time.perf_counter()
                        conn.execute(sql, [q, rids, *c.params, q, 10]).fetchall()
                        times[name].append(time.perf_counter() - t0)
                out[label] = {k: statistics.median(v[SKIP:]) * 1000 for k, v in times.items()}
                print(
                    f"  {label}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in out[label].items()), flush=True
                )
    finally:
        storage.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=200)
    add_plot_options(parser)
    args = parser.parse_args(argv)
    server, dsn = None, os.environ.get("HIVEMEM_BENCH_PG_DSN", "").strip()
    if not dsn:
        sys.path.insert(0, str(ROOT / "tests"))
        from pgtemp import TempPostgres

        server = TempPostgres({"shared_buffers": "1GB"})
        dsn = server.start()
    try:
        found = measure(dsn, args.size, args.rounds)
    finally:
        if server is not None:
            server.stop()
    print()
    print(f"| filter ({args.size:,} memories, 1% expired) | join p50 | by rid p50 | by rid / join |")
    print("|---|---|---|---|")
    result: dict[str, Any] = {"benchmark": "pg_rescore", "size": args.size, "rounds": args.rounds}
    for label, x in found.items():
        print(f"| {label} | {x['join']:.2f} ms | {x['by rid']:.2f} ms | {x['by rid'] / x['join']:.2f}× |")
        result[label] = {k: round(v, 3) for k, v in x.items()}
    labels = list(found)
    bars(args, "pg_rescore", f"re-score of 256 candidates, {args.size:,} memories (1% expired)", labels,
         {k: [found[f][k] for f in labels] for k in ("join", "by rid")}, ylabel="p50 ms", fmt="{:.2f}",
         note="PostgreSQL 16 + pgvector; shared machine")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
