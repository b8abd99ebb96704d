"""``make demo`` / ``hivemem demo``: what hivemem is for — a fleet of worker processes sharing one
embedding model, one cache, one task library and one memory store — and what that saves.

1. It starts the machine's embedding service (or uses the one already running: that one is left
   as it was; one it started is stopped at the end).
2. It converts a synthetic task library (``hivemem.tasks.synth``, shaped like a harness's
   ``*_with_workflows.json``) once, into the task library file every worker reads.
3. ``--workers`` processes (default 8) each sample tasks from the library and work through them
   one at a time: look the task up by the start of its description (one text, micro-batched in
   the service with the other workers' texts), keep two memories for the task's user, and write
   the memories with ``Memory.add_batch`` every 25 tasks into one SQLite store — all embedding
   through the shared service. Tasks sampled by several workers give the same texts: the service
   computes a look-up once (its cache), the store keeps one copy of a memory per user.
4. For comparison, ``--baseline`` processes (default 2: measured, not modelled) each load the model
   and the library's JSON themselves, as workers do without hivemem.
5. It prints memory (PSS: shared pages counted once per process sharing them) per worker and in
   total against that baseline, the throughput, the service's cache hits, and a few scoped searches.

Everything runs in a temporary directory that is removed at the end; no process is left behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

USERS = ["alice", "bob", "chen", "dana"]
QUESTIONS = [
    ("alice", "Which foods must I avoid?"),
    ("bob", "How do I fix my home network?"),
    ("chen", "Was any payment sent back to a customer?"),
]
CORPUS = 4000  # natural sentences (hivemem.embed.corpus) that tasks' memories are drawn from


@dataclass
class Plan:
    """The size of one demo run."""

    workers: int = 8
    tasks: int = 630  # in the synthetic library (as many as the real one it imitates)
    per_worker: int = 150  # tasks each worker samples (two memories each)
    description_words: int = 300  # the library's size: ~2 KB of description per task, plus workflow
    steps: int = 8
    baseline: int = 2

    @classmethod
    def quick(cls, workers: int) -> Plan:
        """A small run for tests: seconds, not tens of seconds."""
        return cls(workers=workers, tasks=40, per_worker=15, description_words=40, steps=2, baseline=1)


# ---- the worker processes ------------------------------------------------------------------------


def memories(task: dict[str, Any], sentences: list[str]) -> list[dict[str, Any]]:
    """The two memories a worker keeps after a task, for the task's user — the same for every
    worker that samples this task (so the store keeps them once)."""
    number = int(str(task["id"]).rsplit("-", 1)[-1])
    meta = {"task": task["id"], "steps": len(task["workflow"]["steps"])}
    user = USERS[number % len(USERS)]
    return [
        {"messages": sentences[(2 * number + k) % len(sentences)], "user_id": user, "metadata": meta}
        for k in (0, 1)
    ]


def worker(spec: str) -> None:
    """One worker (a separate process): ready → wait for go → sample, embed, add_batch → report."""
    args = json.loads(spec)
    started = time.perf_counter()
    import hivemem
    from hivemem.embed.corpus import sentences

    corpus = sentences(CORPUS, seed=42)
    library = hivemem.TaskLibrary(args["library"])
    embedder = hivemem.connect(args["socket"], autostart=False)  # the shared model, queue and cache
    memory = hivemem.Memory(args["memory"], embedder=embedder)
    print(json.dumps({"ready": time.perf_counter() - started}), flush=True)
    sys.stdin.readline()  # the barrier: every worker starts at once
    t0 = time.time()
    fields = ["id", "description", "workflow"]
    tasks = library.sample(None, args["per_worker"], seed=args["index"], fields=fields)
    results: list[dict[str, Any]] = []
    learned: list[dict[str, Any]] = []
    for k, task in enumerate(tasks):  # one task at a time, as an agent worker would
        # look the task up: one text, micro-batched in the service with the other workers' texts;
        # a task another worker has looked up already is a hit in the service's cache
        embedder.embed_one(" ".join(task["description"].split()[:20]))
        learned += memories(task, corpus)
        if len(learned) >= 50 or k == len(tasks) - 1:  # memories are written in batches
            results += memory.add_batch(learned)["results"]
            learned = []
    memory.search(QUESTIONS[args["index"] % len(QUESTIONS)][1], user_id=USERS[0], top_k=3)
    added = sum(r["event"] == "ADD" for r in results)
    report = {"start": t0, "end": time.time(), "added": added, "items": len(results), "tasks": len(tasks)}
    del tasks, results  # done with them: what stays is what a worker holds between tasks
    gc.collect()
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # stay alive until the parent has measured our memory
    memory.close()


def baseline(spec: str) -> None:
    """What a worker costs without hivemem: its own model and its own parsed copy of the library."""
    args = json.loads(spec)
    import hivemem

    with open(args["source"], encoding="utf-8") as f:
        tasks = json.load(f)  # the whole library, parsed in this process
    engine = hivemem.Embedder(cache=False, threads=1)  # its own copy of the model
    engine.embed([t["description"][:200] for t in tasks[:16]])
    print(json.dumps({"ready": len(tasks)}), flush=True)
    sys.stdin.readline()
    engine.close()


# ---- the parent ----------------------------------------------------------------------------------


def pss_mb(pid: int) -> float:
    """Proportional set size of a process in MB (``/proc/PID/smaps_rollup``; Linux)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss for pid {pid}")


def _spawn(function: str, spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    code = f"from hivemem.app.demo import {function}; import sys; {function}(sys.argv[1])"
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _line(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise RuntimeError(f"a demo {what} process failed:\n{err[-2000:]}")
    return dict(json.loads(line))


def _say(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


@contextlib.contextmanager
def _service(sock: Path, env: dict[str, str], cache: Path) -> Any:
    """The machine's service on ``sock``: the running one (left alone), else one started here —
    with its embedding cache in ``cache``, so that every run computes its texts afresh — and
    stopped at the end. Yields ``(client, started_here)``."""
    from hivemem.errors import ServiceError
    from hivemem.service.client import ServiceClient
    from hivemem.service.spawn import can_connect

    proc = None
    if not can_connect(sock):
        from hivemem.embed.model import prepared_manifest

        prepared_manifest()  # a fresh machine: the one-time export, its progress on our terminal
        sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        command = [sys.executable, "-m", "hivemem.service", "--socket", str(sock), "--idle-timeout", "0"]
        proc = subprocess.Popen(
            command,
            env={**env, "HIVEMEM_CACHE": str(cache)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = ServiceClient(sock, autostart=False, timeout=60)
                break
            except ServiceError:
                if proc is not None and proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr is not None else ""
                    raise RuntimeError(f"the service did not start: {err[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with client:
            yield client, proc is not None
    finally:
        if proc is not None:  # ours: SIGTERM drains its queue and removes the socket
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("bye\n")
                proc.stdin.flush()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(plan: Plan, echo: Any = print) -> dict[str, Any]:
    """Run the demo (see the module docstring); print as it goes; return the figures."""
    from hivemem.memory.store import Memory
    from hivemem.service import paths
    from hivemem.tasks.convert import convert_tasks
    from hivemem.tasks.synth import iter_tasks, write_library

    started = time.perf_counter()
    sock = paths.socket_path()
    env = {**os.environ}
    with tempfile.TemporaryDirectory(prefix="hivemem-demo-") as tmp:
        work = Path(tmp)
        source = work / "tasks_with_workflows.json"
        tasks = iter_tasks(plan.tasks, 6, steps=plan.steps, description_words=plan.description_words, seed=7)
        write_library(source, tasks)
        t = time.perf_counter()
        convert_tasks(source, work / "tasks.db", progress=False)
        converted = time.perf_counter() - t
        library_mb = (work / "tasks.db").stat().st_size / 1e6
        echo(
            f"task library: {plan.tasks} tasks, {source.stat().st_size / 1e6:.1f} MB of JSON converted once "
            f"in {converted:.2f} s into {library_mb:.1f} MB that every worker reads"
        )
        procs: list[subprocess.Popen[str]] = []
        with _service(sock, env, work / "embeddings.sqlite") as (client, started_here):
            info = client.stats()
            echo(
                f"service: {'started' if started_here else 'reusing'} pid {info['pid']} "
                f"({info['model_id']}) on {sock}"
                + ("" if started_here else " (its cache may know this demo's texts from an earlier run)")
            )
            before = info
            try:
                # the baseline: each process loads the model and parses the library itself
                base = [_spawn("baseline", {"source": str(source)}, env) for _ in range(plan.baseline)]
                procs += base
                for proc in base:
                    _line(proc, "baseline")
                base_pss = [pss_mb(p.pid) for p in base]
                _stop(base)
                # the fleet
                spec = {
                    "library": str(work / "tasks.db"),
                    "memory": str(work / "memory.sqlite"),
                    "socket": str(sock),
                }
                fleet = [
                    _spawn("worker", {**spec, "index": i, "per_worker": plan.per_worker}, env)
                    for i in range(plan.workers)
                ]
                procs += fleet
                ready = [_line(p, "worker")["ready"] for p in fleet]
                for proc in fleet:
                    _say(proc)
                reports = [_line(p, "worker") for p in fleet]
                worker_pss = [pss_mb(p.pid) for p in fleet]
                service_pss = pss_mb(int(info["pid"]))
                _stop(fleet)
            finally:
                _stop(procs)
            after = client.stats()
            searcher = Memory(work / "memory.sqlite", embedder=client)
            try:
                stored = searcher.get_all(top_k=1_000_000)["results"]
                answers = [
                    (user, question, searcher.search(question, filters={"user_id": user}, top_k=3)["results"])
                    for user, question in QUESTIONS
                ]
            finally:
                searcher.close()
    figures = _figures(plan, reports, worker_pss, service_pss, base_pss, before, after, len(stored))
    figures["first_vector_s"] = round(statistics.median(ready), 2)
    _table(plan, figures, echo)
    for user, question, hits in answers:
        echo(f"\n[{user}] {question}")
        for hit in hits:
            echo(f"  {hit['score']:.3f}  {hit['memory']}")
    echo(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return figures


def _figures(
    plan: Plan,
    reports: list[dict[str, Any]],
    worker_pss: list[float],
    service_pss: float,
    base_pss: list[float],
    before: dict[str, Any],
    after: dict[str, Any],
    stored: int,
) -> dict[str, Any]:
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    items = sum(r["items"] for r in reports)

    def delta(section: str, *keys: str) -> int:
        return sum(
            int(after.get(section, {}).get(k, 0)) - int(before.get(section, {}).get(k, 0)) for k in keys
        )

    fleet_total = sum(worker_pss) + service_pss
    baseline_each = statistics.mean(base_pss)
    return {
        "workers": plan.workers,
        "memories_written": items,
        "memories_stored": stored,
        "seconds": round(wall, 2),
        "memories_per_s": round(items / wall, 1),
        "texts_embedded": delta("cache", "hits_memory", "hits_disk", "hits_shared", "misses"),
        "cache_hits": delta("cache", "hits_memory", "hits_disk", "hits_shared"),
        "computed_once_in_batch": delta("queue", "texts_deduplicated"),
        "texts_computed": delta("queue", "texts_computed"),
        "pss_worker_mean_mb": round(statistics.mean(worker_pss), 1),
        "pss_service_mb": round(service_pss, 1),
        "pss_fleet_total_mb": round(fleet_total, 1),
        "pss_baseline_each_mb": round(baseline_each, 1),
        "baseline_processes": len(base_pss),
        "pss_baseline_total_mb": round(baseline_each * plan.workers, 1),
        "saving": round(baseline_each * plan.workers / fleet_total, 2),
    }


def _table(plan: Plan, f: dict[str, Any], echo: Any) -> None:
    n = plan.workers
    each = f["pss_worker_mean_mb"]
    rows = [
        ("PSS (MB)", "processes", "each", "total"),
        ("workers sharing the service", f"{n}", f"{each:.0f}", f"{each * n:,.0f}"),
        ("  + the service", "1", f"{f['pss_service_mb']:.0f}", f"{f['pss_service_mb']:,.0f}"),
        ("  = shared, in all", f"{n + 1}", "", f"{f['pss_fleet_total_mb']:,.0f}"),
        (
            "each loading model + library",
            f"{n} ({f['baseline_processes']} measured)",
            f"{f['pss_baseline_each_mb']:.0f}",
            f"{f['pss_baseline_total_mb']:,.0f}",
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    echo("")
    for k, row in enumerate(rows):
        cells = enumerate(zip(row, widths, strict=True))
        echo("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in cells))
        if k == 0:
            echo("  ".join("-" * w for w in widths))
    echo(f"memory: {f['saving']:.1f}x less with {n} workers sharing one model and one library")
    echo(
        f"add_batch: {f['memories_written']:,} memories for {len(USERS)} users by {n} workers in "
        f"{f['seconds']:.2f} s ({f['memories_per_s']:,.0f}/s, task look-ups included); "
        f"{f['memories_stored']:,} stored: a text already stored for its user is kept once"
    )
    echo(
        f"service: {f['texts_embedded']:,} texts asked for, {f['texts_computed']:,} computed by the model "
        f"({f['cache_hits']:,} cache hits, {f['computed_once_in_batch']:,} identical texts from "
        "several workers computed once in a batch)"
    )


def demo(
    workers: int = typer.Option(8, min=1, max=64, help="Worker processes sharing the service."),
    baseline: int = typer.Option(None, min=1, max=8, help="Processes measured loading model and library."),
    quick: bool = typer.Option(False, "--quick", help="A small run (tests): small library, few tasks."),
) -> None:
    """Show the fleet: worker processes sharing one service, one task library and one memory store,
    and the memory they save against processes that each load the model and the library."""
    plan = Plan.quick(workers) if quick else Plan(workers=workers)
    if baseline is not None:
        plan.baseline = baseline
    run_demo(plan, echo=typer.echo)
