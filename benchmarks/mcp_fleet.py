"""hivemem over MCP with N agents (issue 21): memory per agent, throughput, latency, and the usual
design side by side. (Not named ``mcp.py``: a script there would shadow the ``mcp`` SDK for
everything run from benchmarks/, or that puts it on ``sys.path`` as tests/benchmarks does.)

    python benchmarks/mcp_fleet.py                       # N = 1, 5, 25; the usual design at N = 5
    python benchmarks/mcp_fleet.py --usual 5 25          # the usual design measured at 25 too (~5 GB)

For each N: a fresh service (``python -m hivemem serve``) and store; N agents, each the official
SDK client driving its own ``hivemem mcp`` relay process (``python -m hivemem.mcp``, what ``hivemem
mcp`` runs). Measured: PSS (``/proc/PID/smaps_rollup``) of every relay and of the service once all
have added; aggregate adds/s of the agents' single ``add_memories`` calls, all agents at once (each
one call after the other, as an agent does), against in-process ``Memory.add_batch`` of as many
fresh texts in the same run (the benchmark's own engine); ``search_memory`` p50 from one agent
against in-process ``Memory.search`` p50 on the same store, queries and scope, the two interleaved
query by query (and how often they return the same ids is reported). The usual design:
N processes of ``benchmarks/mcp_usual_server.py`` (the SDK's ``MCPServer`` + its own engine), PSS
after one add and one search each. Prints a table, one JSON line, and two charts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psutil
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from plots import add_plot_options, bars

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def children(word: str) -> list[int]:
    """Our child processes whose command line contains ``word`` (the SDK client starts them)."""
    return [p.pid for p in psutil.Process().children() if word in " ".join(p.cmdline())]


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content[0].text}")
    return result.structured_content


def start_service(env: dict[str, str]) -> subprocess.Popen:
    from hivemem.service.spawn import can_connect

    proc = subprocess.Popen(
        [sys.executable, "-m", "hivemem", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not can_connect(Path(env["HIVEMEM_SOCKET"])):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    return proc


async def hivemem_run(
    n: int, adds: int, searches: int, tmp: Path, texts: list[str], queries: list[str], engine: Any
) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HIVEMEM_SOCKET": str(tmp / "s.sock"),
        "HIVEMEM_CACHE": str(tmp / "cache.sqlite"),
        "HIVEMEM_MEMORY_URL": str(tmp / "memory.sqlite"),
    }
    service = start_service(env)
    out: dict[str, Any] = {"n": n, "adds": n * adds}
    try:
        async with AsyncExitStack() as stack:
            clients = []
            for i in range(n):
                params = StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "hivemem.mcp", "--user-id", "bench", "--agent-id", f"a{i}"],
                    env=env,
                )
                clients.append(await stack.enter_async_context(Client(params, read_timeout_seconds=300)))
            await asyncio.gather(
                *(call(c, "add_memories", {"text": f"warm up {i}"}) for i, c in enumerate(clients))
            )

            async def one(i: int) -> None:
                for text in texts[i * adds : (i + 1) * adds]:
                    await call(clients[i], "add_memories", {"text": text})

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n)))
            out["adds_per_s"] = n * adds / (time.perf_counter() - t0)
            relays = [pss_mb(pid) for pid in children("hivemem.mcp")]
            assert len(relays) == n, relays
            out["relay_pss_mb"] = statistics.mean(relays)
            out["relay_pss_max_mb"] = max(relays)
            out["service_pss_mb"] = pss_mb(service.pid)
            out["total_pss_mb"] = sum(relays) + out["service_pss_mb"]
            from hivemem import Memory

            lat: dict[str, list[float]] = {"mcp": [], "inproc": []}
            same = 0  # queries where MCP and in-process returned the same ids in the same order
            with Memory(tmp / "memory.sqlite", embedder=engine) as memory:  # the same store, in process
                for k, query in enumerate(queries[: searches + 3]):  # interleaved: the same moments
                    t0 = time.perf_counter()
                    mcp_hits = await call(clients[0], "search_memory", {"query": query, "top_k": 10})
                    t1 = time.perf_counter()
                    own = memory.search(query, user_id="bench", agent_id="a0", top_k=10)
                    t2 = time.perf_counter()
                    same += [h["id"] for h in mcp_hits["results"]] == [h["id"] for h in own["results"]]
                    if k >= 3:  # the first three warm up
                        lat["mcp"].append(1000 * (t1 - t0))
                        lat["inproc"].append(1000 * (t2 - t1))
            out["search_p50_ms"] = statistics.median(lat["mcp"])
            out["inproc_search_p50_ms"] = statistics.median(lat["inproc"])
            out["search_same_results"] = same / (searches + 3)
    finally:
        service.terminate()
        service.wait(60)
    return out


def add_batch_rate(n_adds: int, tmp: Path, texts: list[str], engine: Any) -> float:
    """In-process ``add_batch`` of as many fresh texts (right after the MCP adds of the same N)."""
    from hivemem import Memory

    with Memory(tmp / "batch.sqlite", embedder=engine) as memory:
        memory.add("warm up", user_id="bench")
        t0 = time.perf_counter()
        memory.add_batch([{"messages": t, "user_id": "bench"} for t in texts[:n_adds]])
        return n_adds / (time.perf_counter() - t0)


async def usual_run(n: int, tmp: Path) -> dict:
    """N agents, each its own SDK server with its own engine (benchmarks/mcp_usual_server.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HIVEMEM_CACHE": str(tmp / "usual-cache.sqlite")}
    store = str(tmp / "usual.sqlite")
    async with AsyncExitStack() as stack:
        clients = []
        for i in range(n):
            params = StdioServerParameters(
                command=sys.executable, args=[str(HERE / "mcp_usual_server.py"), store, f"u{i}"], env=env
            )
            clients.append(await stack.enter_async_context(Client(params, read_timeout_seconds=600)))
        for i, client in enumerate(clients):  # one after the other: 25 model loads at once thrash 2 cores
            await call(client, "add_memories", {"text": f"usual warm up {i}"})
            await call(client, "search_memory", {"query": "warm up"})
        pss = [pss_mb(pid) for pid in children("mcp_usual_server.py")]
        assert len(pss) == n, pss
    return {"n": n, "pss_mb": statistics.mean(pss), "total_pss_mb": sum(pss)}


def plot(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    names = [f"N={r['n']}" for r in runs]
    bars(
        args,
        "mcp_memory",
        "PSS of N agents' memory tools: hivemem vs a server + model each",
        names,
        {
            "hivemem": [r["total_pss_mb"] for r in runs],
            "usual design": [r.get("usual_total_mb", 0) for r in runs],
        },
        ylabel="MB PSS",
        note="usual design: SDK MCPServer + its own engine per agent; unmeasured N = N × per-process PSS",
    )
    bars(
        args,
        "mcp_speed",
        "MCP vs in-process: aggregate single adds / add_batch, and search p50",
        names,
        {
            "adds/s ÷ add_batch/s (×100)": [100 * r["adds_ratio"] for r in runs],
            "search p50 MCP (ms)": [r["search_p50_ms"] for r in runs],
            "search p50 in-process (ms)": [r["inproc_search_p50_ms"] for r in runs],
        },
        ylabel="percent / ms",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 5, 25])
    parser.add_argument("--usual", type=int, nargs="*", default=[5], help="N for the usual design")
    parser.add_argument("--adds", type=int, default=200, help="single adds per run, shared by the agents")
    parser.add_argument("--searches", type=int, default=30)
    parser.add_argument("--replot", type=Path, help="only redraw the charts from a saved JSON line")
    add_plot_options(parser)
    args = parser.parse_args()
    if args.replot:
        plot(args, json.loads(args.replot.read_text().strip().splitlines()[-1])["runs"])
        return

    from hivemem import Embedder
    from hivemem.embed.corpus import sentences

    texts = sentences(4 * args.adds + 100, seed=2100)
    queries = sentences(args.searches + 3, seed=2101)
    runs, usual = [], {}
    with Embedder(cache=False) as engine:
        engine.embed(["warm up"])
        for n in args.agents:
            tmp = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
            try:
                per = max(1, args.adds // n)
                batch = texts[2 * args.adds :]  # fresh texts for add_batch, never embedded before
                run = asyncio.run(hivemem_run(n, per, args.searches, tmp, texts, queries, engine))
                run["add_batch_per_s"] = add_batch_rate(run["adds"], tmp, batch, engine)
                runs.append(run)
                print(f"N={n}: {json.dumps(run)}", file=sys.stderr)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    for n in args.usual:
        tmp = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
        try:
            usual[n] = asyncio.run(usual_run(n, tmp))
            print(f"usual N={n}: {json.dumps(usual[n])}", file=sys.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    per_usual = statistics.mean(u["pss_mb"] for u in usual.values()) if usual else None

    print("| N agents | relay PSS (mean / max) | service PSS | hivemem total | usual design total | "
          "adds/s (MCP, concurrent singles) | in-process add_batch/s | ratio | search p50 MCP | "
          "in-process search p50 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        n = r["n"]
        if n in usual:
            r["usual_total_mb"], r["usual_measured"] = usual[n]["total_pss_mb"], True
        elif per_usual is not None:
            r["usual_total_mb"], r["usual_measured"] = n * per_usual, False
        r["adds_ratio"] = r["adds_per_s"] / r["add_batch_per_s"]
        r["memory_ratio"] = r.get("usual_total_mb", 0) / r["total_pss_mb"]
        usual_cell = "–"
        if "usual_total_mb" in r:
            how = "" if r["usual_measured"] else f" (N × per-process at N={','.join(map(str, usual))})"
            usual_cell = f"{r['usual_total_mb']:.0f} MB{how}"
        print(
            f"| {n} | {r['relay_pss_mb']:.1f} / {r['relay_pss_max_mb']:.1f} MB | "
            f"{r['service_pss_mb']:.0f} MB | "
            f"{r['total_pss_mb']:.0f} MB | {usual_cell} ({r['memory_ratio']:.1f}×) | {r['adds_per_s']:.0f} | "
            f"{r['add_batch_per_s']:.0f} | {r['adds_ratio']:.2f}× | {r['search_p50_ms']:.1f} ms | "
            f"{r['inproc_search_p50_ms']:.1f} ms |"
        )
    result = {"bench": "mcp", "runs": runs, "usual": usual, "cpus": os.cpu_count(),
              "load_avg": os.getloadavg()[0]}  # fmt: skip
    print(json.dumps(result))
    plot(args, runs)


if __name__ == "__main__":
    main()
