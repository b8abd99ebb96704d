"""Where the service process's memory goes: PSS after each stage of its life, in one process.

    python benchmarks/service_memory.py [--calls 40] [--size 25] [--before /tmp/main-ref]

Stages: the runtime (interpreter, numpy, ONNX Runtime, tokenizers, the service's modules), the
engine as ``hivemem serve`` builds it (``replicas.build_engine``, cache off: no SQLite file), then
``--calls`` calls of ``--size`` new texts (what 25 single-text workers hand the queue), then
``malloc_trim`` (what the service does once nothing is in flight, ``server.TRIM_AFTER_S``), then
one call of 1,000 texts and ``malloc_trim`` again. Also the largest anonymous mapping (the fp32
word-embedding table of the model when it is copied), the table's file mapping (size, resident)
and the CPU per text of the calls: run it with glibc's ``MALLOC_*`` variables to weigh an
allocator setting (docs/service.md, "Round 2"). Each tree runs in a home of its own
(``model_homes.py``).
``--before TREE``: also a real service of this tree and of TREE, in turn, ``--rounds`` times:
PSS when it listens, right after one call of 1,000 new texts through the socket, and 1 s later
(where the service trims once idle). Prints tables, one JSON line and bar charts.
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

from model_homes import table_mapping, tree_home
from plots import add_plot_options, bars
from procstat import pss_mb, wait_for_socket

ROOT = Path(__file__).resolve().parents[1]


_CALL = (
    "import hivemem\nfrom hivemem.embed.corpus import sentences\n"
    "hivemem.connect(autostart=False).embed(sentences(1000, seed={seed}))\n"
)


def service_round(tree: Path, seed: int, home: Path) -> dict[str, float]:
    """PSS of a fresh service of ``tree``: listening, right after one 1,000-text call, 1 s later."""
    work = Path(tempfile.mkdtemp(prefix="hmsm", dir="/tmp"))
    sock = work / "s.sock"
    env = {**os.environ, "PYTHONPATH": str(tree), "HIVEMEM_SOCKET": str(sock), "HIVEMEM_HOME": str(home),
           "HIVEMEM_CACHE": str(work / "c.sqlite"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    # cwd=tree: ``python -m``/``-c`` put the working directory before PYTHONPATH on sys.path
    service = subprocess.Popen(
        [sys.executable, "-m", "hivemem", "serve"], env=env, cwd=tree, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_socket(service, sock, f"the service of {tree}")
        time.sleep(0.5)
        out = {"listening": pss_mb(service.pid)}
        subprocess.run([sys.executable, "-c", _CALL.format(seed=seed)], env=env, cwd=tree, check=True)
        out["after 1,000 texts"] = pss_mb(service.pid)
        time.sleep(1.0)
        out["1 s later"] = pss_mb(service.pid)
        return out
    finally:
        service.terminate()
        service.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def compare_services(args: argparse.Namespace, work: Path) -> dict[str, dict[str, float]]:
    trees = [("after", ROOT), ("before", args.before.resolve())]
    homes = {label: tree_home(work, label, tree) for label, tree in trees}
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
    seed = int(time.time()) % 100_000
    for r in range(args.rounds):
        for label, tree in trees if r % 2 == 0 else trees[::-1]:
            seed += 1
            runs[label].append(service_round(tree, seed, homes[label]))
            print(f"  round {r} {label:6} " + "  ".join(f"{k} {v:.1f}" for k, v in runs[label][-1].items()))
    medians = {}
    for label, rows in runs.items():
        medians[label] = {key: statistics.median(x[key] for x in rows) for key in rows[0]}
    print(f"\n| service PSS MB (median of {args.rounds}) | after | before |\n|---|---|---|")
    for key in medians["after"]:
        print(f"| {key} | {medians['after'][key]:.1f} | {medians['before'][key]:.1f} |")
    bars(
        args,
        "service_memory_trim",
        "The service's PSS around one 1,000-text call",
        list(medians["after"]),
        {label: list(values.values()) for label, values in medians.items()},
        ylabel="PSS, MB",
        fmt="{:.0f}",
        note=f"benchmarks/service_memory.py --before, median of {args.rounds} interleaved rounds",
    )
    return medians


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--size", type=int, default=25)
    ap.add_argument("--before", type=Path, help="a checkout of the old code: compare real services")
    ap.add_argument("--rounds", type=int, default=3)
    add_plot_options(ap)
    args = ap.parse_args()
    stages: dict[str, float] = {"interpreter": pss_mb()}
    work = Path(tempfile.mkdtemp(prefix="hmsm-homes", dir="/tmp"))
    try:
        run(args, work, stages)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, stages: dict[str, float]) -> None:
    os.environ["HIVEMEM_HOME"] = str(tree_home(work, "in-process", ROOT))  # never the developer's home
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    import hivemem.service.server  # noqa: F401
    from hivemem.embed.corpus import sentences
    from hivemem.service.metrics import ServiceMetrics
    from hivemem.service.replicas import build_engine, release_free_memory

    stages["runtime"] = pss_mb()
    engine = build_engine(metrics=ServiceMetrics(), cache=False)
    stages["engine"] = pss_mb()
    texts = sentences(args.calls * args.size + 1000, seed=5)
    engine.embed(texts[-1050:-1000])  # warm-up
    cpu0 = time.process_time()
    for i in range(args.calls):
        engine.embed(texts[i * args.size : (i + 1) * args.size])
    cpu_ms = (time.process_time() - cpu0) * 1000 / (args.calls * args.size)
    stages[f"{args.calls} calls of {args.size}"] = pss_mb()
    release_free_memory()
    stages["trimmed"] = pss_mb()
    engine.embed(texts[-1000:])
    stages["1,000-text call"] = pss_mb()
    release_free_memory()
    stages["trimmed again"] = pss_mb()
    table = table_mapping()
    engine.close()
    print("| stage | PSS MB |\n|---|---|")
    for stage, mb in stages.items():
        print(f"| {stage} | {mb:.1f} |")
    print(f"| (largest anonymous mapping: the table, before round 5) | {table['largest_anon_mb']:.1f} |")
    print(f"| (the table's file mapping: size / resident at the end) | {table['data_size_mb']:.1f} / "
          f"{table['data_rss_mb']:.1f} |")  # fmt: skip
    print(f"| (CPU per text of the {args.calls} calls, ms) | {cpu_ms:.3f} |")
    result = {"stages_pss_mb": stages, **table, "cpu_ms_per_text": cpu_ms}
    result |= {
        "calls": args.calls,
        "size": args.size,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }
    if args.before:
        result["services_pss_mb"] = compare_services(args, work)
    print(json.dumps(result))
    bars(
        args,
        "service_memory",
        "The service's memory (PSS) through its life",
        list(stages),
        {"PSS MB": list(stages.values())},
        ylabel="PSS, MB",
        fmt="{:.0f}",
        note="benchmarks/service_memory.py; one process, the engine hivemem serve builds",
    )


if __name__ == "__main__":
    main()
