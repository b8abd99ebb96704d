"""A lone client's latency when its calls come ~0.3 s apart: does the service's idle trim
(``malloc_trim`` once nothing is in flight for ``server.TRIM_AFTER_S``) slow the next call?

    python benchmarks/service_trim.py [--calls 40] [--gap 0.3] [--rounds 3] [--every 10]

Each round, for each setting in turn (the order alternates between rounds): a fresh bare service
of this tree (``python -m hivemem.service``, its own socket and cache file, the real model) with
``server.TRIM_AFTER_S`` / ``server.TRIM_EVERY_S`` set for the run, then one client that embeds
``--calls`` new texts one at a time, ``--gap`` seconds apart; per call the client's wall time,
and the service's CPU time over the calls (the ticks of ``/proc/PID/stat``: pages given back and
faulted in again cost CPU even where latency hides it).
Settings: ``trim each idle`` (a trim 0.2 s after every call, the behaviour before
``TRIM_EVERY_S``), ``at most every N s`` (``--every``), ``never`` (no trim). Also the service's PSS
after the run and its trim count. Prints a table (medians over rounds), one JSON line and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plots import add_plot_options, bars
from procstat import cpu_s, pss_mb, wait_for_socket

ROOT = Path(__file__).resolve().parents[1]

_SERVICE = (
    "import sys, runpy\nimport hivemem.service.server as s\n"
    "s.TRIM_AFTER_S = float(sys.argv[1]); s.TRIM_EVERY_S = float(sys.argv[2])\n"
    "sys.argv = ['hivemem.service']\nrunpy.run_module('hivemem.service', run_name='__main__')\n"
)


def one_run(after: float, every: float, calls: int, gap: float, seed: int) -> dict[str, float]:
    """A fresh service with these trim settings and one client's ``calls`` calls ``gap`` apart."""
    import hivemem
    from hivemem.embed.corpus import sentences

    work = Path(tempfile.mkdtemp(prefix="hmtrim", dir="/tmp"))
    sock = work / "s.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HIVEMEM_SOCKET": str(sock),
           "HIVEMEM_CACHE": str(work / "c.sqlite"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    service = subprocess.Popen(
        [sys.executable, "-c", _SERVICE, str(after), str(every)], env=env, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_socket(service, sock, "the service")
        texts = sentences(calls + 5, seed=seed)
        with hivemem.connect(sock, autostart=False, timeout=60) as client:
            for text in texts[calls:]:  # warm-up: the first runs of the model
                client.embed_one(text)
            times = []
            cpu0 = cpu_s(service.pid)
            for text in texts[:calls]:
                time.sleep(gap)
                t0 = time.perf_counter()
                client.embed_one(text)
                times.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.5)  # the last call's trim, if any
            service_cpu = cpu_s(service.pid) - cpu0
            trims = client.stats()["memory_trims"]
        times.sort()
        return {
            "p50_ms": statistics.median(times),
            "p90_ms": times[int(0.9 * (len(times) - 1))],
            "service_cpu_ms_per_call": service_cpu * 1000 / calls,
            "trims": float(trims),
            "pss_mb": pss_mb(service.pid),
        }
    finally:
        service.terminate()
        service.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--gap", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--every", type=float, default=10.0)
    add_plot_options(ap)
    args = ap.parse_args()
    settings = {
        "trim each idle": (0.2, 0.0),
        f"at most every {args.every:g} s": (0.2, args.every),
        "never": (1e9, 0.0),
    }
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in settings}
    seed = int(time.time()) % 100_000
    order = list(settings)
    for r in range(args.rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            seed += 1
            runs[label].append(one_run(*settings[label], args.calls, args.gap, seed))
            print(f"  round {r} {label:18} " + "  ".join(f"{k} {v:.1f}" for k, v in runs[label][-1].items()))
    medians = {
        label: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for label, rows in runs.items()
    }
    head = "p50 ms | p90 ms | service CPU ms/call | trims | PSS MB after"
    print(f"\n| setting (median of {args.rounds}) | {head} |")
    print("|---|---|---|---|---|---|")
    for label, m in medians.items():
        print(
            f"| {label} | {m['p50_ms']:.2f} | {m['p90_ms']:.2f} | {m['service_cpu_ms_per_call']:.2f} "
            f"| {m['trims']:.0f} | {m['pss_mb']:.1f} |"
        )
    print(json.dumps({"calls": args.calls, "gap_s": args.gap, "rounds": args.rounds, "medians": medians}))
    bars(
        args,
        "service_trim",
        f"A lone client's latency, one text every {args.gap:g} s",
        ["p50", "p90"],
        {label: [m["p50_ms"], m["p90_ms"]] for label, m in medians.items()},
        ylabel="ms per call",
        fmt="{:.1f}",
        note=f"benchmarks/service_trim.py, median of {args.rounds} interleaved rounds",
    )


if __name__ == "__main__":
    main()
