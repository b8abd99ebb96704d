"""Errors a pool call can end with.

Every failure that is the pool's doing (not the user's function's) has its own class, so a caller
can tell "my agent raised ValueError" from "the worker process died under my call" and retry only
the latter. The classes are part of hivemem's one error tree (``hivemem.errors``, under
``PoolError``); this module adds what the pool needs to build and carry them across processes.
"""

from __future__ import annotations

import os
import sysconfig
import traceback

from hivemem.errors import (
    RunSetupError,
    WorkerExited,
)

__all__ = ["RemoteTraceback", "callable_name", "setup_stopped", "user_traceback", "worker_exited"]


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


def _dirs(*paths: str) -> tuple[str, ...]:
    return tuple(sorted({os.path.join(os.path.abspath(p), "") for p in paths}))


_PATHS = sysconfig.get_paths()
# The machinery around the user's code: hivemem itself, Dask, and the standard library (pickle,
# importlib, threading); installed packages other than Dask's are the user's code (their factory
# may be one).
_HIVEMEM = _dirs(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DASK = _dirs(
    *(os.path.join(_PATHS["purelib"], n) for n in ("distributed", "dask", "tornado", "cloudpickle"))
)
_SITE = _dirs(_PATHS["purelib"], _PATHS["platlib"])
_STDLIB = _dirs(_PATHS["stdlib"], _PATHS["platstdlib"])


def _is_machinery(filename: str) -> bool:
    if filename.startswith("<frozen "):
        return True
    path = os.path.abspath(filename)
    if path.startswith(_HIVEMEM + _DASK):
        return True
    return path.startswith(_STDLIB) and not path.startswith(_SITE)


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    frames = list(te.stack)
    while frames and _is_machinery(frames[0].filename):
        frames.pop(0)
    te.stack = traceback.StackSummary.from_list(frames)
    for linked in (te.__cause__, te.__context__):
        if linked is not None:
            _trim(linked, seen)


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from the first frame of the user's code on: the leading frames of
    hivemem, the standard library and Dask (how the worker called the user's code) are dropped.
    An error raised inside that machinery (a module that cannot be imported while unpickling the
    job) keeps no frame at all, just its ``Type: message`` line."""
    te = traceback.TracebackException.from_exception(exc)
    _trim(te, set())
    return "".join(te.format())


def callable_name(fn: object) -> str:
    """``module:qualname`` of a function (of the function inside a ``functools.partial``)."""
    inner = getattr(fn, "func", fn)
    qualname = getattr(inner, "__qualname__", None)
    module = getattr(inner, "__module__", None)
    return f"{module}:{qualname}" if module and qualname else repr(fn)


def setup_stopped(what: str, where: str, tb: str) -> RunSetupError:
    """The error that stops a run whose worker could not set up: what failed, where, and the
    traceback of the user's code (its last line is the user's own exception and message)."""
    return RunSetupError(
        f"the run stopped: {what} in {where}; no item was recorded for this, so after the fix a plain "
        f"rerun processes every item.\n{tb}".rstrip("\n"),
        where=where,
        remote_traceback=tb,
    )
