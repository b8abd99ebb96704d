"""Reply slots (shared memory + eventfd) against reply frames, one service, the modes alternated.

    python benchmarks/service_slots.py [--callers 1 25] [-n 400] [--rounds 4]

One service of this tree (``hivemem serve``, its own socket and cache). Each run: W client
processes, all of one mode (``ServiceClient(slots=True)``: vectors through the connection's
shared-memory slot, woken by its eventfd; ``slots=False``: reply frames, as before), each calls
``embed_one`` n times on 40 texts the service has in its in-process LRU, so no model runs and what
is measured is the protocol: the service's CPU per call (``/proc``), the clients' CPU per call
(``time.process_time`` in each, summed) and calls/s. Prints a table (medians) and a JSON line.
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

from plots import add_plot_options, bars  # noqa: E402
from procstat import cpu_s, wait_for_socket  # noqa: E402

TEXTS = [f"a cached text, number {i}, for the protocol's cost" for i in range(40)]


def worker(mode: str, n: int) -> None:
    from hivemem.service.client import ServiceClient

    client = ServiceClient(autostart=False, slots=mode == "slots")
    for text in TEXTS:
        client.embed_one(text)
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(n):
        client.embed_one(TEXTS[i % len(TEXTS)])
    print(json.dumps({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0}), flush=True)


def one_run(service_pid: int, env: dict[str, str], mode: str, w: int, n: int) -> dict[str, float]:
    procs = [
        subprocess.Popen(
            [PY, __file__, "--worker", mode, str(n)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(w)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        cpu0, wall0 = cpu_s(service_pid), time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        wall, service = time.perf_counter() - wall0, cpu_s(service_pid) - cpu0
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    calls = w * n
    return {
        "service_us_per_call": service / calls * 1e6,
        "client_us_per_call": sum(o["cpu"] for o in outs) / calls * 1e6,
        "calls_per_s": calls / wall,
        "p50_us": statistics.median(o["wall"] / n for o in outs) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, nargs="+", default=[1, 25])
    ap.add_argument("-n", type=int, default=400, help="calls per client process")
    ap.add_argument("--rounds", type=int, default=4)
    add_plot_options(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hmsl", dir="/tmp"))
    sock = work / "s.sock"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}",
        "HIVEMEM_SOCKET": str(sock),
        "HIVEMEM_CACHE": str(work / "c.sqlite"),
        "HF_HUB_OFFLINE": "1",
    }
    service = subprocess.Popen([PY, "-m", "hivemem", "serve", "--no-mcp"], env=env, stderr=subprocess.DEVNULL)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        wait_for_socket(service, sock, "the service")
        for r in range(args.rounds):
            for w in args.callers:
                modes = ("slots", "frames") if r % 2 == 0 else ("frames", "slots")
                for mode in modes:
                    n = max(40, args.n * max(args.callers) // (w * 5)) if w == 1 else args.n
                    row = one_run(service.pid, env, mode, w, n)
                    runs.setdefault(f"{mode} W={w}", []).append(row)
                    print(
                        f"  round {r} {mode:6} W={w:3} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items())
                    )
    finally:
        service.terminate()
        service.wait(60)
    keys = ("service_us_per_call", "client_us_per_call", "calls_per_s", "p50_us")
    result: dict = {"rounds": args.rounds, "n": args.n, "loadavg_end": os.getloadavg()[0]}
    print(f"\n| cached single texts (median of {args.rounds}) | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, rows in runs.items():
        med = {k: statistics.median(x[k] for x in rows) for k in keys}
        result[label] = med
        print(f"| {label} | " + " | ".join(f"{med[k]:.1f}" for k in keys) + " |")
    result["runs"] = runs
    print(json.dumps(result))
    labels = list(runs)
    bars(
        args,
        "service_slots",
        "Reply slots vs reply frames: CPU per cached call",
        labels,
        {
            "service": [result[label]["service_us_per_call"] for label in labels],
            "client": [result[label]["client_us_per_call"] for label in labels],
        },
        ylabel="µs of CPU per call",
        fmt="{:.0f}",
        note=f"benchmarks/service_slots.py, median of {args.rounds} rounds; load {result['loadavg_end']:.1f}",
        horizontal=True,
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]))
    else:
        main()
