"""What the memory tests share besides fixtures: the backends, a fresh store of one, and the hash
embedder. A module of its own (not ``conftest``): ``from conftest import …`` finds whichever
conftest.py pytest imported last, which differs between a full run and a chosen file."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hash_embedder import HashEmbedder  # tests/hash_embedder.py

from hivemem import Memory

BACKENDS = ["sqlite", "postgres"]
T = TypeVar("T")


def new_location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty store of ``backend``: a file path or a ``postgresql://`` URL."""
    if backend == "sqlite":
        return str(tmp_path / f"memory-{len(list(tmp_path.iterdir()))}.sqlite")
    pg_url: Callable[[], str] = request.getfixturevalue("pg_url")
    return pg_url()


# A short talk of two runs of user u and one line of user v: (user_id, run_id, text); words that
# SQLite's and PostgreSQL's stemmers stem alike, for the cross-backend ranking tests
TALK = [
    ("u", "r1", "Melanie painted a sunrise over the lake"),
    ("u", "r1", "Caroline asked where she painted it"),
    ("u", "r1", "Melanie said at the lake near her home"),
    ("u", "r1", "They talked about the pottery class"),
    ("u", "r2", "Caroline went hiking in the mountains"),
    ("u", "r2", "Melanie asked about the weather there"),
    ("u", "r2", "It rained the whole weekend"),
    ("v", "r1", "Another user painted the lake too"),
    ("u", "r1", "Caroline joined the pottery class later"),
    ("u", "r1", "The class meets every Tuesday at the lake house"),
]
# searches over TALK: scoped to a run, to the user, with a metadata filter, to the other run
TALK_SEARCHES: list[dict[str, Any]] = [
    {"query": "lake", "user_id": "u", "run_id": "r1"},
    {"query": "lake pottery", "user_id": "u"},
    {"query": "painted lake", "user_id": "u", "filters": {"n": {"gte": 2}}},
    {"query": "weather weekend", "user_id": "u", "run_id": "r2"},
]


def around_windows(rows: Iterable[tuple[int, str, T]]) -> dict[int, list[T]]:
    """The keyword context's windows, rebuilt in Python (no SQL of the library): for ``rows``
    ``(rid, scope, member)`` in rid order, each rid's window is the members of the 2 rows before
    it, it, and the 2 after it in its scope, in rid order (``ftscontext``, docs/memory.md)."""
    by_scope: dict[str, list[tuple[int, T]]] = {}
    for rid, scope, member in rows:
        by_scope.setdefault(scope, []).append((rid, member))
    out: dict[int, list[T]] = {}
    for mine in by_scope.values():
        for i, (rid, _) in enumerate(mine):
            out[rid] = [member for _, member in mine[max(0, i - 2) : i + 3]]
    return out


def writes_keep_equal(m: Memory, seed: int, steps: int, *states: Callable[[Memory], Any]) -> int:
    """``random_writes`` on ``m``; after every step each of ``states`` (``m`` → ``(now, rebuilt)``:
    derived data as stored and as rebuilt from scratch) must agree. Returns the last rebuilt size
    (a test checks the sequence left a store to compare)."""
    size = 0
    for what in random_writes(m, seed, steps):
        for state in states:
            now, rebuilt = state(m)
            assert now == rebuilt, what
            size = len(rebuilt)
    m.close()
    return size


def kill_after(child: subprocess.Popen[str], seconds: float) -> None:
    """SIGKILL ``child`` ``seconds`` after it prints ``ready`` (and in any case: never left behind)."""
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(seconds)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def add_dated_talk(m: Memory) -> None:
    """``TALK``, each message with its own day of 2023 as ``timestamp`` (the date words' tests)."""
    m.add_batch([{"messages": t, "user_id": u, "run_id": r, "timestamp": f"2023-{1 + i % 12:02d}-{1 + i:02d}"}
                 for i, (u, r, t) in enumerate(TALK)])  # fmt: skip


def open_killed_at_step(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, steps: int, opening: Callable[[], object]
) -> list[Any]:
    """Run ``opening()`` with ``module.name`` (a step function: ``ftscontext.backfill_context``)
    raising ``KeyboardInterrupt`` at its ``steps``-th call, as a process killed there (the steps
    before it ran and committed); the open must end in that interrupt. ``module.name`` is then
    restored. Returns the list of the calls' batch arguments."""
    calls: list[Any] = []
    real = getattr(module, name)

    def step_then_die(db: Any, batch: int | None = None) -> Any:
        calls.append(batch)
        if len(calls) == steps:
            raise KeyboardInterrupt
        return real(db, batch)

    monkeypatch.setattr(module, name, step_then_die)
    with pytest.raises(KeyboardInterrupt):
        opening()
    monkeypatch.setattr(module, name, real)
    return calls


def talk_rewrite(m: Memory) -> None:
    """Rewrite the first memory of TALK's run r2 (a change of text inside a window)."""
    m.update(m.get_all(user_id="u", run_id="r2")["results"][0]["id"], "Caroline went hiking by the lake")


SCOPES: list[dict[str, str]] = [{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a", "run_id": "r1"}]


def random_writes(m: Memory, seed: int, steps: int) -> Iterator[str]:
    """Adds, batches, updates, deletes, batch updates and deletes and (now and then) delete_all in
    three scopes (user a, user b, user a's run r1), in random order; yields after each step a label
    of what it did, for the caller to check its derived state against a rebuild."""
    rng = random.Random(seed)
    ids: dict[int, list[str]] = {0: [], 1: [], 2: []}
    n = 0
    for step in range(steps):
        s = rng.randrange(3)
        op = rng.choice(["add", "batch", "batch", "update", "delete", "batch_update", "batch_delete", "all"])
        mine = ids[s]
        if op == "add" or (not mine and op != "batch"):
            n += 1
            mine.append(m.add(f"note {n} word{n % 7}", **SCOPES[s])["results"][0]["id"])
        elif op == "batch":
            texts = [f"note {n + i} batch{step} word{(n + i) % 5}" for i in range(1, rng.randint(2, 6))]
            n += len(texts)
            mine += [r["id"] for r in m.add_batch([{"messages": t, **SCOPES[s]} for t in texts])["results"]]
        elif op == "update":
            n += 1
            m.update(rng.choice(mine), f"rewritten {n} word{n % 3}")
        elif op == "delete":
            m.delete(mine.pop(rng.randrange(len(mine))))
        elif op == "batch_update":
            chosen = rng.sample(mine, min(len(mine), 3))
            m.batch_update([{"memory_id": i, "text": f"batch rewrite {n} {j}"} for j, i in enumerate(chosen)])
            n += 1
        elif op == "batch_delete":
            chosen = rng.sample(mine, min(len(mine), 2))
            m.batch_delete([{"memory_id": i} for i in chosen])
            ids[s] = [i for i in mine if i not in chosen]
        elif rng.random() < 0.3:  # delete_all of one scope, now and then
            m.delete_all(**SCOPES[s])
            ids[s] = []
            if s == 0:  # user a without run_id also holds the run's memories
                ids[2] = []
        yield f"step {step}: {op} in scope {SCOPES[s]}"


def hold_first_fail_one(real: Callable[..., Any], poison: Any) -> tuple[Callable[..., Any], Any, Any]:
    """A stand-in for ``hybrid.rank`` (``real``) → (it, ``first``, ``go``): the first search it runs
    sets ``first`` and waits for ``go`` (its group holds while the others queue); the search whose
    query vector equals ``poison`` raises ``RuntimeError("this search fails")``."""
    first, go = threading.Event(), threading.Event()

    def rank(storage: Any, mode: str, vector: Any, *args: Any) -> Any:
        if not first.is_set():
            first.set()
            assert go.wait(60)
        if vector is not None and np.array_equal(vector, poison):
            raise RuntimeError("this search fails")
        return real(storage, mode, vector, *args)

    return rank, first, go


def search_while_held(m: Memory, searches: list[Callable[[], Any]], first: Any, go: Any) -> list[Any]:
    """One thread per search: the first one's search starts (and sets ``first``, then waits for
    ``go``: the patched ``hybrid.rank`` holds it), the others queue behind it; once all are in
    the line, ``go`` releases them → each search's answer, or what it raised."""
    combiner = m._searches._combiner
    assert combiner is not None
    got: list[Any] = [None] * len(searches)

    def run(i: int) -> None:
        try:
            got[i] = searches[i]()
        except BaseException as exc:  # returned to the test
            got[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(searches))]
    threads[0].start()
    assert first.wait(60)
    for t in threads[1:]:
        t.start()
    while len(combiner) < len(searches) - 1:  # the others are in the line
        threading.Event().wait(0.01)
    go.set()
    for t in threads:
        t.join(60)
    return got


__all__ = [
    "BACKENDS",
    "SCOPES",
    "TALK",
    "TALK_SEARCHES",
    "HashEmbedder",
    "hold_first_fail_one",
    "new_location",
    "random_writes",
    "search_while_held",
    "talk_rewrite",
]
