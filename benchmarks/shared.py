"""W worker processes embedding single texts: each with its own engine (a) vs one shared service (b).

    HIVEMEM_HOME=/tmp/hm1 python benchmarks/shared.py [--quick] [--workers 1,5,25] [-n 40]

Every worker embeds N distinct texts one at a time (texts are distinct across workers and the caches
are fresh, so the service's cache cannot flatter (b)). Workers are held at a barrier once warm — all
alive, first vector computed — and PSS (``/proc/PID/smaps_rollup``) of the workers plus the service
is summed there; then all are released at once and the wall time to the last text is measured.
(a) workers use ``Embedder(cache=False, batching=False, threads=1)``: with W processes on a 2-core
machine one thread each is the fair setting (more only fights). (b) workers use ``hivemem.connect()``
against a service started before them (warm). ``--replicas`` runs (b) at the largest W again with a
service of 2 replicas × 1 thread instead of 1 × 2. Prints a table and a final JSON line.
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

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))  # this checkout's hivemem, not an installed one

from plots import add_plot_options, lines  # noqa: E402


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for {pid}")


# ---- worker side ---------------------------------------------------------------------------------


def worker(mode: str, spawned: float, seed: int, index: int, n: int, total: int) -> None:
    import hivemem
    from hivemem.embed.corpus import sentences

    texts = sentences(total, seed=seed)[index * n : (index + 1) * n]
    if mode == "a":
        emb = hivemem.Embedder(cache=False, batching=False, threads=1)
    else:
        emb = hivemem.connect(autostart=False)
    emb.embed_one(f"warm-up {seed} {index}: the first vector of worker {index}")
    first = time.time() - spawned
    print(json.dumps({"ready": first}), flush=True)
    sys.stdin.readline()  # the barrier: parent measures PSS, then says go
    start = time.time()
    for text in texts:
        emb.embed_one(text)
    print(json.dumps({"start": start, "end": time.time()}), flush=True)
    sys.stdin.readline()  # stay alive until the parent is done


# ---- parent side ---------------------------------------------------------------------------------


def run_workers(mode: str, w: int, n: int, seed: int, env: dict[str, str], extra_pids: list[int]) -> dict:
    total = w * n
    procs = []
    for i in range(w):
        spawned = time.time()
        procs.append(
            subprocess.Popen(
                [PY, __file__, "--worker", mode, str(spawned), str(seed), str(i), str(n), str(total)],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        firsts = [json.loads(p.stdout.readline())["ready"] for p in procs]
        time.sleep(0.5)  # let the last starters settle
        worker_pss = [pss_mb(p.pid) for p in procs]
        extra_pss = [pss_mb(pid) for pid in extra_pids]
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = [json.loads(p.stdout.readline()) for p in procs]
        for p in procs:
            p.stdin.write("exit\n")
            p.stdin.flush()
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return {
        "mode": mode,
        "workers": w,
        "n": n,
        "pss_total_mb": round(sum(worker_pss) + sum(extra_pss), 1),
        "pss_worker_mean_mb": round(statistics.mean(worker_pss), 1),
        "pss_service_mb": round(sum(extra_pss), 1) if extra_pids else None,
        "first_vector_median_s": round(statistics.median(firsts), 3),
        "first_vector_max_s": round(max(firsts), 3),
        "wall_s": round(wall, 3),
        "texts_per_s": round(total / wall, 1),
    }


def start_service(env: dict[str, str], *args: str) -> subprocess.Popen:
    from hivemem.service.client import ServiceClient
    from hivemem.service.spawn import can_connect

    proc = subprocess.Popen(
        [PY, "-m", "hivemem", "serve", *args], env=env, cwd=ROOT, stderr=subprocess.DEVNULL
    )
    while not can_connect(Path(env["HIVEMEM_SOCKET"])):
        if proc.poll() is not None:
            raise RuntimeError("service failed to start")
        time.sleep(0.05)
    with ServiceClient(env["HIVEMEM_SOCKET"], autostart=False) as client:  # warm: a few batches
        from hivemem.embed.corpus import sentences

        client.embed(sentences(64, seed=999_001))
    return proc


def stop_service(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def bare_numpy_pss() -> float:
    p = subprocess.Popen(
        [PY, "-c", "import numpy, sys; print(1, flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    p.stdout.readline()
    value = pss_mb(p.pid)
    p.communicate("x\n")
    return value


def batch_throughput(env: dict[str, str], total: int, seed: int) -> float:
    code = (
        "import time, hivemem\nfrom hivemem.embed.corpus import sentences\n"
        f"t = sentences({total}, seed={seed})\ne = hivemem.Embedder(cache=False)\n"
        "e.embed(t[:64])\ns = time.perf_counter()\ne.embed(t)\nprint(len(t) / (time.perf_counter() - s))\n"
    )
    out = subprocess.run([PY, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip()), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,5,25")
    ap.add_argument("-n", type=int, default=40, help="texts per worker")
    ap.add_argument("--quick", action="store_true", help="n=16 per worker, no replicas run")
    ap.add_argument(
        "--replicas", action="store_true", help="also run (b) at max W with 2 replicas × 1 thread"
    )
    ap.add_argument(
        "--service-args", default="", help='extra `hivemem serve` options for (b), e.g. "--threads 1"'
    )
    add_plot_options(ap)
    args = ap.parse_args()
    n = 16 if args.quick else args.n
    widths = [int(x) for x in args.workers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hmb", dir="/tmp"))
    base = {**os.environ, "PYTHONPATH": str(ROOT), "HIVEMEM_SOCKET": str(work / "s.sock")}
    rows = []
    seed = int(time.time()) % 100_000  # fresh texts every run
    try:
        numpy_pss = bare_numpy_pss()
        for w in widths:
            env_a = {**base, "HIVEMEM_CACHE": str(work / f"a{w}.sqlite")}
            rows.append(run_workers("a", w, n, seed + w, env_a, []))
            env_b = {**base, "HIVEMEM_CACHE": str(work / f"b{w}.sqlite")}
            service = start_service(env_b, *args.service_args.split())
            try:
                rows.append(run_workers("b", w, n, seed + 1000 + w, env_b, [service.pid]))
            finally:
                stop_service(service)
        if args.replicas and not args.quick:
            w = max(widths)
            env_r = {**base, "HIVEMEM_CACHE": str(work / "r.sqlite")}
            service = start_service(env_r, "--replicas", "2", "--threads", "1")
            try:
                row = run_workers("b", w, n, seed + 2000, env_r, [service.pid])
                row["mode"] = "b 2×1"
                rows.append(row)
            finally:
                stop_service(service)
        batch = batch_throughput(
            base | {"HIVEMEM_CACHE": str(work / "x.sqlite")}, max(widths) * n, seed + 3000
        )
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, numpy_pss, batch)
    plot(args, rows, n)


def plot(args: argparse.Namespace, rows: list[dict], n: int) -> None:
    """Total PSS against the number of workers: own engine each (a) vs the shared service (b)."""
    series = {}
    for mode, label in (("a", "each worker loads its own engine (a)"), ("b", "one shared service (b)")):
        got = sorted((r["workers"], r["pss_total_mb"]) for r in rows if r["mode"] == mode)
        if got:
            series[label] = got
    widths = sorted({w for points in series.values() for w, _ in points})
    if len(widths) < 2:
        return
    lines(
        args,
        "service_pss_by_workers",
        "Memory (PSS) of W workers embedding, plus the service",
        widths,
        {label: [v for _, v in points] for label, points in series.items()},
        xlabel="worker processes (W)",
        ylabel="total PSS, MB",
        logx=True,
        note=f"/proc/PID/smaps_rollup summed at a barrier once all workers are warm; {n} texts per worker",
    )


def print_table(rows: list[dict], numpy_pss: float, batch: float) -> None:
    head = f"{'mode':7} {'W':>3} {'PSS total':>10} {'per worker':>10} {'service':>8} "
    head += f"{'first vec med/max':>18} {'wall s':>7} {'texts/s':>8}"
    print(head)
    for r in rows:
        service = f"{r['pss_service_mb']:.0f}" if r["pss_service_mb"] is not None else "-"
        print(
            f"{r['mode']:7} {r['workers']:>3} {r['pss_total_mb']:>8.0f}MB {r['pss_worker_mean_mb']:>8.1f}MB "
            f"{service:>6}MB {r['first_vector_median_s']:>8.3f}/{r['first_vector_max_s']:<8.3f} "
            f"{r['wall_s']:>7.2f} {r['texts_per_s']:>8.1f}"
        )
    summary: dict = {"bare_numpy_pss_mb": round(numpy_pss, 1), "in_process_batch_texts_per_s": batch}
    top = max(r["workers"] for r in rows)
    a = next((r for r in rows if r["mode"] == "a" and r["workers"] == top), None)
    b = next((r for r in rows if r["mode"] == "b" and r["workers"] == top), None)
    if a and b:
        summary.update(
            {
                "W": top,
                "pss_ratio_a_over_b": round(a["pss_total_mb"] / b["pss_total_mb"], 2),
                "service_pss_mb": b["pss_service_mb"],
                "client_over_numpy_mb": round(b["pss_worker_mean_mb"] - numpy_pss, 1),
                "throughput_ratio_b_over_a": round(b["texts_per_s"] / a["texts_per_s"], 2),
                "throughput_b_over_batch": round(b["texts_per_s"] / batch, 2),
            }
        )
    print(f"bare `python -c 'import numpy'`: {numpy_pss:.1f} MB PSS; in-process batch: {batch:.1f} texts/s")
    print(json.dumps({"rows": rows, **summary}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        mode, spawned, seed, index, n, total = sys.argv[2:8]
        worker(mode, float(spawned), int(seed), int(index), int(n), int(total))
    else:
        main()
