"""Errors a pool call can end with.

Every failure that is the pool's doing (not the user's function's) has its own class, so a caller
can tell "my agent raised ValueError" from "the worker process died under my call" and retry only
the latter. The classes are part of hivemem's one error tree (``hivemem.errors``, under
``PoolError``); this module adds what the pool needs to build and carry them across processes.
"""

from __future__ import annotations

from hivemem.errors import (
    CallTimeout,
    PoolClosed,
    PoolError,
    RemoteError,
    WorkerCrashed,
    WorkerExited,
    WorkerInitError,
)

__all__ = [
    "CallTimeout",
    "PoolClosed",
    "PoolError",
    "RemoteError",
    "RemoteTraceback",
    "WorkerCrashed",
    "WorkerExited",
    "WorkerInitError",
    "worker_exited",
]


def worker_exited(exc: BaseException, fn_name: str, worker: str) -> WorkerExited:
    """The :class:`WorkerExited` standing for ``exc`` (not an ``Exception``) raised by ``fn_name``."""
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            exitcode, what = 0, "exit code 0"
        elif isinstance(code, int):
            exitcode, what = code, f"exit code {code}"
        else:  # sys.exit("message") prints the message and exits with 1
            exitcode, what = 1, f"exit code 1 ({code!r})"
        raised = f"called sys.exit ({what})"
    else:
        exitcode = None
        detail = f": {exc}" if str(exc) else ""
        raised = f"raised {type(exc).__name__}{detail}"
    return WorkerExited(
        f"{fn_name} {raised} in {worker}; a pooled call cannot stop its worker or the caller, so this "
        "call failed and the worker was replaced",
        exitcode=exitcode,
    )


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text; set as ``__cause__`` of an exception re-raised here."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
