"""The one way the benchmarks time "N threads × single calls": shares, a common start, errors out.

``in_threads(lambda part: [emb.embed_one(t) for t in part], texts, 16)`` is the seconds 16 threads
took, each over its share of ``texts``, timed from the moment all of them were started.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def in_threads(work: Callable[[list[T]], object], items: Sequence[T], threads: int) -> float:
    """Seconds for ``threads`` threads, released together, each running ``work`` on its share
    (``items[k::threads]``); the first error a thread raised is raised here, after all have ended."""
    parts = [list(items[k::threads]) for k in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def run(part: list[T]) -> None:
        barrier.wait()
        try:
            work(part)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(p,)) for p in parts]
    for thread in pool:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed
