"""Warm workers: build an expensive object once per worker and reuse it for every call
(:class:`WorkerPool`), and a resumable parallel runner on top (:func:`run_parallel`).
"""

from hivemem.errors import (
    CallTimeout,
    PoolClosed,
    PoolError,
    RemoteError,
    RunSetupError,
    WorkerCrashed,
    WorkerExited,
    WorkerInitError,
)
from hivemem.pool.pool import WorkerPool
from hivemem.pool.results import read_results
from hivemem.pool.runner import RunSummary, run_parallel

__all__ = [
    "CallTimeout",
    "PoolClosed",
    "PoolError",
    "RemoteError",
    "RunSetupError",
    "RunSummary",
    "WorkerCrashed",
    "WorkerExited",
    "WorkerInitError",
    "WorkerPool",
    "read_results",
    "run_parallel",
]
