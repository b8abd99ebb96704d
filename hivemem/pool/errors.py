"""Errors a pool call can end with.

Every failure that is the pool's doing (not the user's function's) has its own class, so a caller
can tell "my agent raised ValueError" from "the worker process died under my call" and retry only
the latter.
"""

from __future__ import annotations


class PoolError(RuntimeError):
    """Base class of the errors raised by the pool itself."""


class WorkerCrashed(PoolError):
    """The worker running this call died (segfault, OOM killer, ``kill -9``) before answering.

    The pool has already started a replacement; only this call is lost.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self):  # keep pid/exitcode when the error crosses a process boundary
        return (_rebuild_crashed, (str(self), self.pid, self.exitcode))


def _rebuild_crashed(message: str, pid: int | None, exitcode: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode)


class WorkerExited(PoolError):
    """The pooled function raised ``SystemExit`` (``sys.exit()``), ``KeyboardInterrupt`` or another
    ``BaseException`` that is not an ``Exception``.

    Such an exception asks the *worker* to stop; it must not stop the caller (a ``SystemExit``
    reaching an HTTP service's event loop stopped the whole service). The call fails with this
    error, naming the exit code; the worker is replaced (a process worker exits, a thread worker
    rebuilds its object with the factory). ``exitcode``: the code ``sys.exit`` was given (0 for
    none, 1 for a message), None for other exceptions; ``__cause__``: the original exception.
    """

    def __init__(self, message: str, *, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self):  # keep exitcode when the error crosses a process boundary
        return (_rebuild_exited, (str(self), self.exitcode))


def _rebuild_exited(message: str, exitcode: int | None) -> WorkerExited:
    return WorkerExited(message, exitcode=exitcode)


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


class CallTimeout(PoolError, TimeoutError):
    """The call ran longer than its ``timeout``.

    With ``kind="process"`` the worker was killed and replaced; with ``kind="thread"`` the thread
    cannot be killed, so the call is abandoned (a streaming call stops at its next item).
    """


class WorkerInitError(PoolError):
    """The factory raised while building the worker's object; the cause holds its traceback.

    The worker retries the factory when it next takes a call, so a transient failure heals.
    """


class PoolClosed(PoolError):
    """The pool was closed before this call could run."""


class RemoteError(PoolError):
    """Stands in for an exception raised in a worker process that could not be sent back as is
    (it failed to pickle); its message names the original type."""


class RemoteTraceback(Exception):
    """Carries the worker-side traceback text; set as ``__cause__`` of an exception re-raised here."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
