"""Warm worker pool vs a process per request, for an agent that takes 1.5 s to build.

Modes: ``per-request`` (a fresh process builds the agent for every request, as a naive chat
backend does), ``pool-process`` and ``pool-thread`` (``hivemem.WorkerPool`` with size 4). Each
mode answers 20 sequential and then 20 concurrent requests (at most 4 at a time for per-request,
all 20 submitted at once to the size-4 pools). The request itself does no work, so its latency is
pure overhead. Prints a table, then one JSON line. Run: ``python benchmarks/pool.py`` (~1 min).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from hivemem.pool import WorkerPool
from hivemem.pool._examples import echo, echo_stream, make_echo_agent

INIT_S = 1.5
SIZE = 4
N = 20


def _one_shot(conn, message: str) -> None:
    agent = make_echo_agent(INIT_S)
    conn.send(echo(agent, message))
    conn.close()


def per_request(ctx, message: str) -> str:
    """What a naive backend does: start a process, build the agent, answer, exit."""
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_one_shot, args=(child, message))
    proc.start()
    child.close()
    reply = parent.recv()
    proc.join()
    return reply


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def measure(call, submit) -> dict[str, float]:
    """20 sequential requests (``call``), then 20 submitted at once (``submit`` returns a future);
    a concurrent request's latency runs from the common submit time to its own completion."""
    t = time.perf_counter()
    seq = [_timed(call, f"hello {i}") for i in range(N)]
    seq_wall = time.perf_counter() - t
    t = time.perf_counter()
    conc: list[float] = []
    futures = [submit(f"hi {i}") for i in range(N)]
    for f in futures:
        f.add_done_callback(lambda _f: conc.append(time.perf_counter() - t))
    for f in futures:
        f.result()
    conc_wall = time.perf_counter() - t
    return {
        "seq_p50_ms": statistics.median(seq) * 1e3,
        "seq_p95_ms": _pct(seq, 0.95) * 1e3,
        "seq_wall_s": seq_wall,
        "conc_p50_ms": statistics.median(conc) * 1e3,
        "conc_p95_ms": _pct(conc, 0.95) * 1e3,
        "conc_wall_s": conc_wall,
    }


def bench_pool(kind: str) -> dict[str, float]:
    t = time.perf_counter()
    with WorkerPool(functools.partial(make_echo_agent, INIT_S), size=SIZE, kind=kind) as pool:
        pool.wait_ready()
        row = {"startup_s": time.perf_counter() - t}
        row |= measure(lambda msg: pool.submit(echo, msg).result(), lambda msg: pool.submit(echo, msg))
        first = []
        for i in range(N):
            t = time.perf_counter()
            stream = pool.stream(echo_stream, f"stream {i} a b c", 0.0)
            next(stream)
            first.append(time.perf_counter() - t)
            list(stream)
        row["stream_first_item_p50_ms"] = statistics.median(first) * 1e3
        stats = pool.stats()
        row["factory_runs"] = stats["factory_runs"]
        row["calls"] = stats["calls"]
        row["rss_mb"] = (
            sum(w["rss_bytes"] or 0 for w in stats["workers"]) / 2**20
            if kind == "process"
            else stats["workers"][0]["rss_bytes"] / 2**20
        )
    return row


def bench_per_request(ctx) -> dict[str, float]:
    """At most 4 requests in flight, like a size-4 pool (a 4-thread executor starts the processes)."""
    call = functools.partial(per_request, ctx)
    with ThreadPoolExecutor(SIZE) as ex:
        row = {"startup_s": 0.0} | measure(call, lambda msg: ex.submit(call, msg))
    return row | {"factory_runs": 2 * N, "calls": 2 * N}


def main() -> None:
    ctx = multiprocessing.get_context("forkserver")
    rows = {
        "pool-process": bench_pool("process"),
        "pool-thread": bench_pool("thread"),
        "per-request": bench_per_request(ctx),
    }
    cols = [
        ("startup_s", "startup s", "{:.2f}"),
        ("seq_p50_ms", "seq p50 ms", "{:.2f}"),
        ("seq_p95_ms", "seq p95 ms", "{:.2f}"),
        ("seq_wall_s", "seq wall s", "{:.2f}"),
        ("conc_p50_ms", "conc p50 ms", "{:.1f}"),
        ("conc_p95_ms", "conc p95 ms", "{:.1f}"),
        ("conc_wall_s", "conc wall s", "{:.2f}"),
        ("stream_first_item_p50_ms", "1st item p50 ms", "{:.2f}"),
        ("factory_runs", "factory runs", "{}"),
        ("rss_mb", "RSS MB", "{:.0f}"),
    ]
    print(f"agent init {INIT_S} s, size {SIZE}, {N} sequential + {N} concurrent requests (forkserver)")
    print("| mode | " + " | ".join(c[1] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for mode, row in rows.items():
        cells = [fmt.format(row[k]) if k in row else "–" for k, _, fmt in cols]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    pr, pp, pt = rows["per-request"], rows["pool-process"], rows["pool-thread"]
    summary = {
        "bench": "pool",
        "init_s": INIT_S,
        "size": SIZE,
        "requests": N,
        "modes": {m: {k: round(v, 4) for k, v in r.items()} for m, r in rows.items()},
        "speedup_seq_p50_process": round(pr["seq_p50_ms"] / pp["seq_p50_ms"], 1),
        "speedup_seq_p50_thread": round(pr["seq_p50_ms"] / pt["seq_p50_ms"], 1),
        "speedup_conc_wall_process": round(pr["conc_wall_s"] / pp["conc_wall_s"], 1),
        "pool_overhead_p50_ms_ok": pp["seq_p50_ms"] <= 20 and pt["seq_p50_ms"] <= 20,
        "factory_runs_equal_size": pp["factory_runs"] == SIZE and pt["factory_runs"] == SIZE,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
