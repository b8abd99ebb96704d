"""Every error hivemem raises on purpose, in one tree: ``except hivemem.HivememError`` catches them all.

Why one tree: callers — and the HTTP application, which turns errors into status codes — tell
failures apart by their *type*, never by their message text (a reworded message once turned a 404
into a 500). Each part raises its own subclasses; all of them are defined here so the whole tree
can be read in one place, and every one is importable from ``hivemem``::

    HivememError
    ├── ModelNotPrepared         (RuntimeError)     the ONNX export is missing and cannot be made here
    │   └── ModelDamaged                            a prepared model file is missing, truncated or changed
    ├── QueueFull                (RuntimeError)     the engine's queue holds max_pending texts
    ├── QueueClosed              (RuntimeError)     the engine was closed
    ├── EmbedderUnavailable      (ConnectionError)  no remote embedding host answered in time
    ├── ServiceError             (RuntimeError)     the machine's embedding service failed or is absent
    │   ├── ServiceUnavailable                      none listens and none could be started
    │   ├── ServiceBusy                             its queue stayed full for the whole wait
    │   ├── UntrustedService                        it runs as another user
    │   ├── AlreadyRunning                          another service holds the socket's pid lock
    │   └── ProtocolError                           a frame broke the wire format
    │       └── FrameTooLarge                       a frame is over the size limit
    ├── MemoryNotFound           (ValueError)       no memory has this id (Mem0's type and message)
    ├── LimitExceeded            (ValueError)       an input is over a documented limit
    ├── LLMError                 (RuntimeError)     infer=True: the LLM gave no usable answer
    ├── PgVectorMissing          (RuntimeError)     the PostgreSQL database has no pgvector
    ├── DiskFull                 (OSError)          a write found no space left (the message names the file)
    ├── GroupLeaderFailed        (RuntimeError)     the thread running a group with this call in it failed
    ├── NoPostgres               (RuntimeError)     no PostgreSQL could be found or started
    ├── PoolError                (RuntimeError)     the worker pool's own failures
    │   ├── WorkerCrashed / WorkerExited / WorkerInitError / PoolClosed / RemoteError
    │   ├── RunSetupError                           run_parallel stopped: a worker could not set up
    │   └── CallTimeout          (TimeoutError)
    ├── TaskLibraryError                            a task library file is missing, foreign or corrupt
    ├── TaskSourceError          (ValueError)       a source JSON cannot be converted
    │   └── BigIntegerError                         (hivemem.tasks.source)
    ├── UnknownTaskTypeError     (ValueError)       no such task type in the library
    └── TaskNotFoundError        (KeyError)         no task with that id

The built-in base in parentheses is kept where callers already rely on it: Mem0 raises
``ValueError`` for an unknown memory id, ``dict``-like lookups raise ``KeyError``, and code written
before this tree caught ``RuntimeError`` / ``ValueError`` / ``ConnectionError``. Plain ``TypeError``
and ``ValueError`` remain the answer to a malformed argument (wrong type, bad value): those are
the caller's bug, named with the argument, not a condition to handle.
"""

from __future__ import annotations

from typing import Any


class HivememError(Exception):
    """The root of every error hivemem raises on purpose."""


# ---- the embedding engine (hivemem.embed) ---------------------------------------------------------


class ModelNotPrepared(HivememError, RuntimeError):
    """The ONNX export is missing and cannot be made here (torch is not installed)."""


class ModelDamaged(ModelNotPrepared):
    """A prepared model file is missing, truncated or changed since ``prepare`` wrote it (checked
    against the manifest before ONNX Runtime maps it); the message says how to prepare it again."""


class QueueFull(HivememError, RuntimeError):
    """More texts are waiting than ``max_pending`` allows (backpressure)."""


class QueueClosed(HivememError, RuntimeError):
    """The embedder was closed; no new requests are taken."""


class EmbedderUnavailable(HivememError, ConnectionError):
    """No host could answer the call within its timeout; the message names each URL and its error."""


# ---- the machine's embedding service (hivemem.service) ---------------------------------------------


class ServiceError(HivememError, RuntimeError):
    """The service answered with an error, or could not be reached or started."""


class ServiceUnavailable(ServiceError):
    """No service is listening and none could be started (see the log file named in the message)."""


class ServiceBusy(ServiceError):
    """The service's queue stayed full for the whole wait (backpressure): retry later or add replicas."""


class UntrustedService(ServiceError):
    """The process listening on the socket runs as another user than this one (checked with
    ``SO_PEERCRED``): it would receive every text and could return anything. Pass its uid in
    ``trust_uids`` (or ``HIVEMEM_TRUST_UIDS``) to allow it on purpose."""


class AlreadyRunning(ServiceError):
    """Another service holds this socket's pid lock."""


class ProtocolError(ServiceError):
    """A frame broke the wire format (bad magic, version, type, length or payload)."""


class FrameTooLarge(ProtocolError):
    """A frame announced more payload bytes than the receiver's limit."""


# ---- the memory store (hivemem.memory) -------------------------------------------------------------


class MemoryNotFound(HivememError, ValueError):
    """No memory has this id (update/delete). A ``ValueError`` with Mem0's message, as Mem0 raises."""


class LimitExceeded(HivememError, ValueError):
    """An input is over one of the documented limits (docs/security.md); the message names it.

    ``limit_name`` is the constant (e.g. ``"MAX_FILTER_DEPTH"``), ``limit`` its value and ``field``
    the input it concerns. A ``ValueError``, so callers that catch those keep working; HTTP maps
    it to 422.
    """

    def __init__(self, message: str, *, limit_name: str, limit: int, field: str | None = None) -> None:
        super().__init__(message)
        self.limit_name = limit_name
        self.limit = limit
        self.field = field

    @classmethod
    def count(
        cls, where: str, size: int, unit: str, limit: int, limit_name: str, field: str
    ) -> LimitExceeded:
        """The common case: ``"<where> has <size> <unit>; the limit is <limit> (<limit_name>)"``."""
        message = f"{where} has {size} {unit}; the limit is {limit} ({limit_name})"
        return cls(message, limit_name=limit_name, limit=limit, field=field)

    def __reduce__(self) -> Any:  # keep the fields when the error crosses a process boundary
        return (_rebuild_limit, (str(self), self.limit_name, self.limit, self.field))


def _rebuild_limit(message: str, limit_name: str, limit: int, field: str | None) -> LimitExceeded:
    return LimitExceeded(message, limit_name=limit_name, limit=limit, field=field)


class LLMError(HivememError, RuntimeError):
    """The LLM could not be reached or gave no usable answer (after one retry); nothing was written."""


class PgVectorMissing(HivememError, RuntimeError):
    """The database has no pgvector and this role may not create it."""


class NoPostgres(HivememError, RuntimeError):
    """No PostgreSQL with pgvector could be found or started (the message says what to install)."""


# ---- every part that writes files ------------------------------------------------------------------


class DiskFull(HivememError, OSError):
    """A write found no space left on the device (SQLite's SQLITE_FULL, or ENOSPC): the message names
    the file. Nothing of the failed write was stored; what was committed before is intact. An
    ``OSError`` (errno ENOSPC), so callers that catch those keep working; HTTP maps it to 507."""

    def __init__(self, message: str) -> None:
        super().__init__(28, message)  # errno.ENOSPC

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> Any:  # keep the message when the error crosses a process boundary
        return (DiskFull, (str(self),))


# ---- calls run in groups (hivemem.infra.grouping) ------------------------------------------------


class GroupLeaderFailed(HivememError, RuntimeError):
    """This call ran in a group led by another thread, and that thread failed (interrupted, or a
    bug) before it could report this call's outcome. A write may or may not have taken effect; a
    read can simply be retried (grouped searches retry on their own, alone). The leader's own call
    gets the original exception."""


# ---- warm workers (hivemem.pool) -------------------------------------------------------------------


class PoolError(HivememError, RuntimeError):
    """Base class of the errors raised by the pool itself (not by the pooled function)."""


class WorkerCrashed(PoolError):
    """The worker running this call died (segfault, OOM killer, ``kill -9``) before answering.

    The pool has already started a replacement; only this call is lost.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> Any:  # keep pid/exitcode when the error crosses a process boundary
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

    def __reduce__(self) -> Any:  # keep exitcode when the error crosses a process boundary
        return (_rebuild_exited, (str(self), self.exitcode))


def _rebuild_exited(message: str, exitcode: int | None) -> WorkerExited:
    return WorkerExited(message, exitcode=exitcode)


class CallTimeout(PoolError, TimeoutError):
    """The call ran longer than its ``timeout``.

    With ``kind="process"`` the worker was killed and replaced; with ``kind="thread"`` the thread
    cannot be killed, so the call is abandoned (a streaming call stops at its next item).
    """


class WorkerInitError(PoolError):
    """A worker could not set up: the factory raised while building the worker's object, or the
    called function could not be loaded (imported) in the worker process. The cause holds the
    worker-side traceback; ``where`` names the worker (its process and host) when known.

    The worker retries the factory when it next takes a call, so a transient failure heals.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where

    def __reduce__(self) -> Any:  # keep where when the error crosses a process boundary
        return (_rebuild_init, (str(self), self.where))


def _rebuild_init(message: str, where: str) -> WorkerInitError:
    return WorkerInitError(message, where=where)


class RunSetupError(PoolError):
    """``run_parallel`` stopped because a worker could not set up (its factory failed, or the job
    cannot be loaded where it runs): an error of the run, not of one item, so no item was recorded
    for it and a plain rerun after the fix processes every item.

    The message names where it happened (worker, pid, host) and ends with the traceback of the
    user's code as the worker saw it; ``where`` and ``remote_traceback`` hold those two parts.
    """

    def __init__(self, message: str, *, where: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> Any:  # keep the fields when the error crosses a process boundary
        return (_rebuild_setup, (str(self), self.where, self.remote_traceback))


def _rebuild_setup(message: str, where: str, remote_traceback: str) -> RunSetupError:
    return RunSetupError(message, where=where, remote_traceback=remote_traceback)


class PoolClosed(PoolError):
    """The pool was closed before this call could run."""


class RemoteError(PoolError):
    """Stands in for an exception raised in a worker process that could not be sent back as is
    (it failed to pickle); its message names the original type."""


# ---- the task library (hivemem.tasks) --------------------------------------------------------------


class TaskLibraryError(HivememError):
    """The library file is missing, not a hivemem task library, of an unknown version, or corrupt."""


class TaskSourceError(HivememError, ValueError):
    """The source JSON cannot be converted: malformed JSON, a task without id/type, duplicate ids.

    ``line``/``column`` (1-based) and ``offset`` (0-based byte) locate malformed JSON where known;
    ``position`` names the offending task (``[17]``, ``['web'][3]``, ``line 18``) for task-level
    problems.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        offset: int | None = None,
        position: str | None = None,
    ) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.offset = offset
        self.position = position


class UnknownTaskTypeError(HivememError, ValueError):
    """A task type that the library does not contain; the message lists the known ones."""


class TaskNotFoundError(HivememError, KeyError):
    """No task with that id. A ``KeyError`` (mapping semantics) whose message reads normally."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"
