"""Pre-allocation: a deterministic plan giving each worker its own task ids.

Why: when every worker samples on its own, two workers can draw the same task and the run
evaluates it twice while others are never run. A plan computed once from a seed (by the launcher,
or identically by every worker from the same seed) hands out disjoint sets instead.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def plan_allocation(
    ids: Sequence[str], workers: int, per_worker: int, seed: int | str | None = None, replace: bool = False
) -> list[list[str]]:
    """Split ``ids`` into ``workers`` lists of ``per_worker`` ids each, shuffled by ``seed``.

    The lists are disjoint when ``workers * per_worker <= len(ids)``; otherwise it is an error,
    unless ``replace=True``: then ids are dealt from successive reshuffles, so every id is used
    as evenly as possible (a worker may get an id twice only when ``per_worker > len(ids)`` or
    at the seam between two reshuffles).
    """
    for name, value, least in (("workers", workers, 1), ("per_worker", per_worker, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    need = workers * per_worker
    if need and not ids:
        raise ValueError("there are no tasks to allocate")
    rng = random.Random(seed)
    if need <= len(ids):
        dealt = rng.sample(list(ids), need)
    elif not replace:
        raise ValueError(
            f"{workers} workers x {per_worker} tasks = {need} distinct tasks, but only {len(ids)} are "
            "available; lower the counts or pass replace=True (--replace) to let workers share tasks"
        )
    else:
        dealt = []
        while len(dealt) < need:
            dealt.extend(rng.sample(list(ids), len(ids)))
        del dealt[need:]
    return [dealt[w * per_worker : (w + 1) * per_worker] for w in range(workers)]
