"""HTTP service benchmark: memory add and search through a real ``hivemem serve --http``.

    HIVEMEM_HOME=/tmp/hm1 python benchmarks/http_api.py            # 10k memories, 32 clients
    HIVEMEM_HOME=/tmp/hm1 python benchmarks/http_api.py --quick    # smaller

(Not ``http.py``: a script of that name would shadow the standard library's ``http``.)

The service runs as its own process (uvicorn on 127.0.0.1, the service's engine shared by the
memory routes); the clients are ``--clients`` asyncio tasks in this process, each in a closed loop
(send, wait for the reply, send the next) with its own ``httpx.AsyncClient``. The store is
pre-populated with ``--memories`` memories through the storage layer (random unit vectors:
embedding 10k texts would take minutes and the search cost does not depend on the vectors'
values), spread over ``--users`` users. Every add and every "new query" search uses a text no other
request used, so the model embeds each one; the "cached" search row repeats queries already in the
service's embedding cache, which isolates HTTP + search from the model. ``/health`` is the HTTP
floor; the engine row (the service stopped) is the embedding ceiling. Each row also gives (``Meter``)
the CPU milliseconds per request of the service process (all its threads), of its event loop (its
main thread) and of this process (the clients: they share the cores), and the engine's mean batch
and share of the wall time it ran (``/metrics``); ``*_cpu_bound`` is the ratio to the engine that
both cores kept busy would give. The "lean client" rows repeat the new-text rows with a client of
pre-encoded HTTP/1.1 requests (``lean_load``, ~0.1 ms of CPU a request instead of httpx's ~0.7).
Prints a table and, last, one JSON line (docs/http.md#where-a-requests-cpu-goes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hivemem.embed.corpus import sentences  # noqa: E402
from hivemem.embed.engine import Embedder  # noqa: E402
from hivemem.memory.records import prepare  # noqa: E402
from hivemem.memory.store import Memory  # noqa: E402

TARGET_SEARCH_P50_MS = 30.0


def fill(path: Path, n: int, users: int) -> None:
    """``n`` memories over ``users`` users, random unit vectors, through the storage layer."""
    emb = Embedder(cache=False)
    m = Memory(path, embedder=emb)  # binds the store to the service's model id
    rng = np.random.default_rng(0)
    for start in range(0, n, 5000):
        size = min(5000, n - start)
        new = []
        for i in range(start, start + size):
            new.extend(prepare(f"synthetic memory {i}", user_id=f"user{i % users}"))
        vecs = rng.standard_normal((size, emb.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        m._storage.insert(new, vecs)
    m.close()
    emb.close()


def engine_ceiling(texts: list[str]) -> tuple[float, float]:
    """Texts/s of the bare engine (in this process, the service idle), batches of 32, as many
    model threads as the service uses: the most any embedding request mix can reach; and its CPU
    milliseconds per text (all threads of this process)."""
    from hivemem.embed.onnx_backend import default_threads

    emb = Embedder(cache=False, threads=default_threads())
    emb.embed(texts[:8])
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(texts), 32):
        emb.embed(texts[i : i + 32])
    rate = len(texts) / (time.perf_counter() - t0)
    cpu_ms = 1000 * (time.process_time() - cpu0) / len(texts)
    emb.close()
    return rate, cpu_ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(tmp: Path, memory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HIVEMEM_SOCKET": str(tmp / "s.sock"),
        "HIVEMEM_CACHE": str(tmp / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    cmd = [
        sys.executable,
        "-m",
        "hivemem",
        "serve",
        "--http",
        f"127.0.0.1:{port}",
        "--memory-path",
        str(memory),
    ]
    # cwd=ROOT: ``python -m`` puts the working directory first on sys.path, so the service is this
    # script's tree whatever directory it was started from (before_after.py runs one per tree)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the service did not start") from None
            time.sleep(0.1)


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds so far of process ``pid`` (all its threads) or of one ``thread``."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_counters(url: str) -> tuple[float, float, float]:
    """(batches, texts, model seconds) the service's engine ran so far (``/metrics``)."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("hivemem_batch_size_count", "hivemem_batch_size_sum", "hivemem_batch_seconds_sum"):
            values[name] = float(value)
    return (
        values["hivemem_batch_size_count"],
        values["hivemem_batch_size_sum"],
        values["hivemem_batch_seconds_sum"],
    )


class Meter:
    """What one row cost: the service's CPU (all its threads, and its event loop's: the main
    thread), this process's CPU (the clients, on the same cores) and the engine's batches, texts
    and model seconds (``/metrics``). ``server_pid`` None: latency and rate only."""

    def __init__(self, url: str, server_pid: int | None) -> None:
        self.url, self.pid = url, server_pid
        self.start: tuple[float, ...] = ()
        self.used: tuple[float, ...] = ()

    def _cpu(self) -> tuple[float, ...]:
        assert self.pid is not None
        return cpu_seconds(self.pid), cpu_seconds(self.pid, self.pid), time.process_time()

    def __enter__(self) -> Meter:
        if self.pid:  # the /metrics scrapes stay out of the CPU counted: before it here, after it below
            self.start = (*model_counters(self.url), *self._cpu())
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        if self.pid and exc[0] is None:
            cpu = self._cpu()
            end = (*model_counters(self.url), *cpu)
            self.used = tuple(b - a for a, b in zip(self.start, end, strict=True))

    def row(self, latencies: list[float]) -> dict[str, float]:
        """Requests, req/s, p50/p95 latency; measured: CPU ms per request of the service, of its
        event loop and of the clients, the mean engine batch and the share of the wall the model
        ran."""
        latencies.sort()
        n = len(latencies)
        out = {
            "requests": n,
            "rps": n / self.wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * latencies[int(0.95 * (n - 1))],
        }
        if self.used:
            batches, texts, model_s, server, loop, client = self.used
            out.update(server_cpu_ms=1000 * server / n, loop_cpu_ms=1000 * loop / n)
            out["client_cpu_ms"] = 1000 * client / n
            if batches > 0:
                out.update(batch_mean=texts / batches, model_busy=model_s / self.wall)
        return out


async def load(
    url: str, clients: int, requests: list[tuple[str, str, Any]], server_pid: int | None = None
) -> dict[str, float]:
    """Run ``requests`` (method, path, json) from ``clients`` closed-loop clients; with ``server_pid``
    also the CPU milliseconds per request of the service and of this (the clients') process."""
    latencies: list[float] = []
    queue = list(reversed(requests))

    async def client(c: httpx.AsyncClient) -> None:
        while queue:
            method, path, body = queue.pop()
            t0 = time.perf_counter()
            r = await c.request(method, path, json=body)
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")

    # One AsyncClient (one keep-alive connection) per client: a single shared client's connection
    # pool cost ~3 ms of client CPU per request at 32 connections (measured), more than the server.
    cs = [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.get("/health") for c in cs))  # open the connections
        with Meter(url, server_pid) as meter:
            await asyncio.gather(*(client(c) for c in cs))
    finally:
        await asyncio.gather(*(c.aclose() for c in cs))
    return meter.row(latencies)


async def lean_load(
    url: str, clients: int, requests: list[tuple[str, str, Any]], server_pid: int | None = None
) -> dict[str, float]:
    """``load`` with a lean client: each of ``clients`` keep-alive connections writes pre-encoded
    HTTP/1.1 requests and reads each reply by its Content-Length (``httpx`` costs ~0.6–0.8 ms of
    client CPU per request, on the same cores as the service: this measures the service with
    less of its CPU taken by the load generator)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    encoded = []
    for method, path, body in requests:
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        encoded.append(f"{head}content-length: {len(data)}\r\n\r\n".encode() + data)
    queue = list(reversed(encoded))
    latencies: list[float] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            request = queue.pop()
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            reply = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{request[:60]!r}: {head[:40]!r} {reply[:200]!r}")

    conns = [await asyncio.open_connection(host, int(port)) for _ in range(clients)]
    try:
        with Meter(url, server_pid) as meter:
            await asyncio.gather(*(client(r, w) for r, w in conns))
    finally:
        for _, w in conns:
            w.close()
    return meter.row(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=640, help="requests per measured row")
    ap.add_argument("--quick", action="store_true", help="2,000 memories, 160 requests per row")
    args = ap.parse_args()
    if args.quick:
        args.memories, args.requests = 2000, 160
    n, users = args.requests, args.users
    tmp = Path(tempfile.mkdtemp(prefix="hm-http-bench"))
    texts = sentences(3 * n + 64, seed=4242)
    adds, cold, hot = texts[:n], texts[n : 2 * n], texts[2 * n : 2 * n + 64]
    lean_texts = sentences(2 * n, seed=4343)  # new texts for the lean client's rows
    proc = None
    try:
        t0 = time.perf_counter()
        fill(tmp / "memory.sqlite", args.memories, users)
        print(f"pre-populated {args.memories:,} memories over {users} users (storage layer) "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        proc, url = start_service(tmp, tmp / "memory.sqlite")

        def search(q: str, i: int) -> tuple[str, str, Any]:
            return (
                "POST",
                "/v1/memories/search",
                {"query": q, "user_id": f"user{(i * 37) % users}", "top_k": 20},
            )

        rows: dict[str, dict[str, float]] = {}
        run = lambda reqs, clients=args.clients: asyncio.run(load(url, clients, reqs, proc.pid))  # noqa: E731
        rows["health (HTTP floor)"] = run([("GET", "/health", None)] * n)
        asyncio.run(load(url, 1, [search(q, i) for i, q in enumerate(hot)]))  # warm matrix + cache
        rows["search, cached query embedding"] = run([search(hot[i % len(hot)], i) for i in range(n)])
        rows["search, new query each time"] = run([search(q, i) for i, q in enumerate(cold)])
        rows["add (one new text each)"] = run(
            [
                ("POST", "/v1/memories", {"messages": t, "user_id": f"user{i % users}"})
                for i, t in enumerate(adds)
            ]
        )
        lean = lambda reqs: asyncio.run(lean_load(url, args.clients, reqs, proc.pid))  # noqa: E731
        rows["search, new query, lean client"] = lean([search(q, i) for i, q in enumerate(lean_texts[:n])])
        rows["add, lean client"] = lean(
            [
                ("POST", "/v1/memories", {"messages": t, "user_id": f"user{i % users}"})
                for i, t in enumerate(lean_texts[n:])
            ]
        )
        rows["search, single client, new query"] = run(
            [search(f"{q} again", i) for i, q in enumerate(cold[:64])], 1
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc = None
        ceiling, engine_cpu_ms = engine_ceiling([f"{t} (engine)" for t in cold])
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.clients} concurrent clients, {args.memories:,} memories, top_k=20, loopback HTTP")
    print("(CPU ms per request: the service process with its model threads, its event loop thread,")
    print(" this process's clients)")
    print("(model: the mean texts per engine batch, and the share of the wall time the model ran)")
    print("| row | requests | req/s | p50 ms | p95 ms | service CPU ms | event loop | client CPU ms ", end="")
    print("| batch | model busy |\n|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        model = f"{r['batch_mean']:.1f} | {r['model_busy']:.0%}" if "batch_mean" in r else " | "
        print(
            f"| {name} | {r['requests']} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {r['server_cpu_ms']:.2f} | {r['loop_cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} | {model} |"
        )
    engine_row = f"| engine alone, batches of 32 (texts/s) | {len(cold)} | {ceiling:,.0f} | | |"
    print(f"{engine_row} {engine_cpu_ms:.2f} | | | 32 | |")
    cold_row = rows["search, new query each time"]

    def cpu_bound(row: str) -> float:
        return round(engine_cpu_ms / (rows[row]["server_cpu_ms"] + rows[row]["client_cpu_ms"]), 3)

    out = {
        "bench": "http",
        "memories": args.memories,
        "users": users,
        "clients": args.clients,
        **{f"{k.split(',')[0].split(' ')[0]}_{tag}_{m}": round(v, 2) for k, tag in (
            ("add (one new text each)", "new"), ("search, new query each time", "new"),
            ("search, cached query embedding", "cached"), ("health (HTTP floor)", "floor"),
            ("search, single client, new query", "single"), ("search, new query, lean client", "lean"),
            ("add, lean client", "lean"))
           for m, v in rows[k].items() if m != "requests"},
        "engine_texts_per_s": round(ceiling, 1),
        "engine_cpu_ms_per_text": round(engine_cpu_ms, 2),
        "search_new_vs_engine": round(cold_row["rps"] / ceiling, 3),
        "add_new_vs_engine": round(rows["add (one new text each)"]["rps"] / ceiling, 3),
        # What the ratio would be with both cores busy: the engine's CPU per text over a request's
        # CPU (service + clients). Above the measured ratio: cores idle (waits, not work).
        "search_new_cpu_bound": cpu_bound("search, new query each time"),
        "add_new_cpu_bound": cpu_bound("add (one new text each)"),
        "search_lean_vs_engine": round(rows["search, new query, lean client"]["rps"] / ceiling, 3),
        "add_lean_vs_engine": round(rows["add, lean client"]["rps"] / ceiling, 3),
        "target_search_p50_ms": TARGET_SEARCH_P50_MS,
        "target_met": cold_row["p50_ms"] <= TARGET_SEARCH_P50_MS,
    }  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
