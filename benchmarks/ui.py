"""The dashboard's two targets (issue 24), in one run.

    HIVEMEM_HOME=/tmp/hm1 python benchmarks/ui.py [--memories 100000] [--requests 30] [--workers 5 -n 40]

(1) Server time of the pages with 100k memories in the store: the app of ``hivemem serve --http``
(``create_app``, the real model as its engine) driven in-process, each request timed from the moment
the app receives it to its last byte (an ASGI wrapper: server time, no client or socket). The fleet
rows get a STATS dict shaped as the service's, so they count the 100k store as they do in a service. The store
is filled through the storage layer with corpus sentences and RANDOM unit vectors
(``benchmarks/memory.py``'s ``build``: embedding 100k texts would take ~10 minutes); every search
embeds its own new query with the model, so the model's time is in the search rows.
(2) What an open fleet page costs the service: ``benchmarks/shared.py``'s W workers (mode b, one text
at a time through ``hivemem.connect()``) against ``hivemem serve --http``, with and without a
"page" polling it, alternated (off, on, off, on). The poller sends what the page's scripts send
(``/ui/fleet/series.json`` every 2 s, ``/ui/fleet/panel`` every 10 s, signed in with a key) over
real HTTP from this process; a browser's own rendering is not the service's cost and is left out.
Both ways are reported: the throughput A/B (noisy on a shared box: its closed runs' spread is
printed beside it) and, from (1), the share of time an open page keeps the service busy (its
requests' server time per second: series.json every 2 s, the panel every 10 s).
Prints a table and a final JSON line, and draws two charts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's hivemem, not an installed one
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from memory import build  # noqa: E402  (the storage-layer fill of benchmarks/memory.py)
from plots import add_plot_options, bars  # noqa: E402
from shared import run_workers, start_service, stop_service  # noqa: E402

KEYS = {"bench-user-key": {"user_id": "user0"}, "bench-admin-key": {"admin": True}}


# ---- (1) server time at 100k memories -------------------------------------------------------------


class Timed:
    """ASGI wrapper: seconds from receiving each request to sending its last body byte."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()

        async def sent(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.last = time.perf_counter() - start

        await self.app(scope, receive, sent)


def sign_in(client: Any, key: str) -> None:
    page = client.get("/ui/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = client.post("/ui/login", data={"key": key, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303, r.text


def page_times(n_memories: int, requests: int, work: Path) -> list[dict[str, Any]]:
    from fastapi.testclient import TestClient

    from hivemem import Embedder, Memory
    from hivemem.embed.corpus import sentences
    from hivemem.http.app import create_app
    from hivemem.http.keys import Scope
    from hivemem.service.metrics import ServiceMetrics

    engine = Embedder(cache=False)
    memory = Memory(work / "ui.sqlite", embedder=engine)
    t0 = time.perf_counter()
    build(memory._storage, n_memories, users=100)  # user0 … user99: 1% of the store each
    print(
        f"filled {n_memories:,} memories (random vectors, storage layer) in {time.perf_counter() - t0:.1f} s"
    )
    keys = {k: Scope(admin=True) if v.get("admin") else Scope(user_id=v["user_id"]) for k, v in KEYS.items()}
    metrics = ServiceMetrics()

    def status() -> dict[str, Any]:  # what the service's STATS holds, so the fleet rows do real work
        return {
            "pid": os.getpid(), "socket": str(work / "none.sock"), "model_id": engine.model_id,
            "dim": engine.dim, "uptime_s": time.time() - metrics.started, "clients": 0, "threads": 2,
            "queue": engine.stats().get("queue"), "cache": None, "metrics": metrics.snapshot(),
            "memory_path": str(work / "ui.sqlite"),
        }  # fmt: skip

    app = create_app(engine, keys=keys, memory=memory, host="127.0.0.1", metrics=metrics, status=status)
    timed = Timed(app)
    queries = iter(sentences(4 * requests + 8, seed=424242))
    rows = []
    cases: list[tuple[str, str, Any]] = [
        ("list, first page, user key (its 1% of the store)", "bench-user-key", lambda: "/ui/memories"),
        ("list, first page, admin (every user)", "bench-admin-key", lambda: "/ui/memories"),
        ("list, page 20, user key", "bench-user-key", lambda: "/ui/memories?page=20"),
        ("list, first page, admin picks a user", "bench-admin-key", lambda: "/ui/memories?user_id=user42"),
        ("search, user key, new query (model included)", "bench-user-key",
         lambda: f"/ui/memories?q={next(queries)}"),
        ("search, admin, new query (model included)", "bench-admin-key",
         lambda: f"/ui/memories?q={next(queries)}"),
        ("search fragment (htmx), user key", "bench-user-key", lambda: f"/ui/memories?q={next(queries)}"),
        ("fleet page, admin", "bench-admin-key", lambda: "/ui/fleet"),
        ("fleet series.json (every 2 s)", "bench-admin-key", lambda: "/ui/fleet/series.json"),
        ("fleet panel (every 10 s)", "bench-admin-key", lambda: "/ui/fleet/panel"),
    ]  # fmt: skip
    clients: dict[str, Any] = {}
    try:
        for key in KEYS:
            clients[key] = TestClient(timed, base_url="http://127.0.0.1:8080")
            sign_in(clients[key], key)
        clients["bench-user-key"].get("/ui/memories?q=warm+up+the+index")  # first search builds the index
        clients["bench-admin-key"].get("/ui/memories?q=warm+up+the+index")
        for name, key, path in cases:
            headers = {"HX-Request": "true"} if "fragment" in name else {}
            times = []
            for _ in range(requests):
                r = clients[key].get(path(), headers=headers)
                assert r.status_code == 200, (name, r.status_code, r.text[:300])
                times.append(timed.last * 1000)
            times.sort()
            rows.append(
                {
                    "page": name,
                    "requests": requests,
                    "p50_ms": round(statistics.median(times), 1),
                    "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
                    "max_ms": round(times[-1], 1),
                }
            )
            print(f"  {name:<52} p50 {rows[-1]['p50_ms']:>7.1f} ms  p95 {rows[-1]['p95_ms']:>7.1f} ms")
    finally:
        for c in clients.values():
            c.close()
        memory.close()
        engine.close()
    return rows


# ---- (2) the fleet page's polling cost ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Poller(threading.Thread):
    """What an open fleet page requests: series.json every 2 s and the panel every 10 s."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.stop = threading.Event()
        self.requests = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            sign_in(client, self.key)
            client.get("/ui/fleet")
            tick = 0
            while not self.stop.wait(2.0 if tick else 0):
                client.get("/ui/fleet/series.json").raise_for_status()
                self.requests += 1
                if tick % 5 == 0:
                    client.get("/ui/fleet/panel").raise_for_status()
                    self.requests += 1
                tick += 1


def polling_cost(workers: int, n: int, rounds: int, work: Path) -> list[dict[str, Any]]:
    rows = []
    (work / "keys.json").write_text(json.dumps(KEYS))
    seed = int(time.time()) % 100_000
    for i, polled in enumerate([False, True] * rounds):
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HIVEMEM_SOCKET": str(work / f"s{i}.sock"),
            "HIVEMEM_CACHE": str(work / f"c{i}.sqlite"),
        }
        service = start_service(
            env, "--http", f"127.0.0.1:{port}", "--keys", str(work / "keys.json"),
            "--memory-url", str(work / f"m{i}.sqlite"),
        )  # fmt: skip
        poller = None
        try:
            url = f"http://127.0.0.1:{port}"
            while True:
                try:
                    httpx.get(f"{url}/health", timeout=5)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            if polled:
                poller = Poller(url, "bench-admin-key")
                poller.start()
            time.sleep(
                3
            )  # both ways alike: the page (if any) is open and has polled before the workers start
            row = run_workers("b", workers, n, seed + 100 * i, env, [service.pid])
            row["page_polling"] = polled
            row["poll_requests"] = poller.requests if poller else 0
            rows.append(row)
            state = "open" if polled else "closed"
            print(f"  round {i // 2 + 1}, page {state}: {row['texts_per_s']:.1f} texts/s")
        finally:
            if poller is not None:
                poller.stop.set()
                poller.join(30)
            stop_service(service)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memories", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=30, help="requests per page row")
    ap.add_argument("--workers", type=int, default=5, help="W of the polling-cost runs")
    ap.add_argument("-n", type=int, default=80, help="texts per worker in the polling-cost runs")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs of the polling-cost runs")
    ap.add_argument("--skip-pages", action="store_true")
    ap.add_argument("--skip-polling", action="store_true")
    add_plot_options(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hmui", dir="/tmp"))
    pages: list[dict[str, Any]] = []
    polls: list[dict[str, Any]] = []
    try:
        if not args.skip_pages:
            print(f"(1) server time of the dashboard's pages, {args.memories:,} memories")
            pages = page_times(args.memories, args.requests, work)
        if not args.skip_polling:
            print(f"(2) {args.workers} workers × {args.n} texts, with and without a fleet page open")
            polls = polling_cost(args.workers, args.n, args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {"memories": args.memories}
    if pages:
        print(f"\n{'page':<52} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for r in pages:
            print(f"{r['page']:<52} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f}")
        summary["worst_p95_ms"] = max(r["p95_ms"] for r in pages)
        by = {r["page"]: r for r in pages}
        series, panel = by["fleet series.json (every 2 s)"], by["fleet panel (every 10 s)"]
        share = series["p50_ms"] / 2000 + panel["p50_ms"] / 10_000  # server ms per ms of an open page
        print(
            f"an open fleet page keeps the service busy {share:.2%} of the time (its requests' server time)"
        )
        summary["poll_server_share"] = round(share, 5)
        bars(
            args, "ui_page_server_time", f"Dashboard server time, {args.memories:,} memories",
            [r["page"].replace(" (", "\n(") for r in pages],
            {"p50": [r["p50_ms"] for r in pages], "p95": [r["p95_ms"] for r in pages]},
            ylabel="ms", fmt="{:.0f}", horizontal=True,
            note="in-process ASGI timing; random stored vectors, real model for queries; shared 2-core box",
        )  # fmt: skip
    if polls:
        off = [r["texts_per_s"] for r in polls if not r["page_polling"]]
        on = [r["texts_per_s"] for r in polls if r["page_polling"]]
        print(f"\n{'fleet page':<12} {'texts/s by round':<30} {'mean':>8}")
        print(f"{'closed':<12} {', '.join(f'{x:.1f}' for x in off):<30} {statistics.mean(off):>8.1f}")
        print(f"{'open':<12} {', '.join(f'{x:.1f}' for x in on):<30} {statistics.mean(on):>8.1f}")
        cost = 1 - statistics.mean(on) / statistics.mean(off)
        spread = (max(off) - min(off)) / statistics.mean(off)
        print(
            f"cost of an open fleet page: {cost:+.1%} of throughput (spread of the closed runs: {spread:.1%})"
        )
        summary |= {"polling_cost": round(cost, 4), "closed_run_spread": round(spread, 4)}
        bars(
            args, "ui_polling_cost", "Service throughput with a fleet page open",
            [f"round {i + 1}" for i in range(len(off))],
            {"page closed": off, "page open": on},
            ylabel="texts/s", fmt="{:.0f}",
            note=f"{args.workers} workers × {args.n} texts, one at a time (connect()); shared 2-core box",
        )  # fmt: skip
    print(json.dumps({"pages": pages, "polling": polls, **summary}))


if __name__ == "__main__":
    main()
