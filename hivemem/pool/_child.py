"""The loop a process worker runs: build the object once, then serve calls until told to stop.

Kept free of heavy imports because it is the first thing every worker process loads. Every
message the worker sends is ``(kind, call_id, blob)`` with the value pickled *separately*, so a
value that fails to pickle here, or to unpickle in the parent, is reported against its own call
instead of desynchronising the pipe.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import pickle
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from hivemem.errors import RemoteError, WorkerInitError
from hivemem.pool.failures import user_traceback, worker_exited


def _exc_blob(exc: BaseException) -> bytes:
    """Pickle ``(exception, traceback text)``, degrading to RemoteError if the exception can't travel.
    The text starts at the user's code (:func:`user_traceback`): this loop's frames are noise."""
    tb = user_traceback(exc)
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt (custom __init__)
    except Exception:
        exc = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return pickle.dumps((exc, tb))


def _cancel_requested(conn: Connection, call_id: int) -> bool:
    """Drain control messages that arrived while streaming; True if this call was cancelled."""
    cancelled = False
    while conn.poll():
        msg = conn.recv()
        if msg[0] == "cancel" and msg[1] == call_id:
            cancelled = True
    return cancelled


def call_fn(
    fn: Callable[..., Any],
    obj: Any,
    args: tuple[Any, ...],
    *,
    streaming: bool,
    emit: Callable[[Any], None],
    cancelled: Callable[[], bool],
) -> Any:
    """Run ``fn(obj, *args)`` the same way in a process or a thread worker.

    Streaming calls hand each item to ``emit`` as it is produced and stop (closing the generator)
    once ``cancelled()`` says the caller went away; their result is None. A generator returned to
    a plain call is drained into a list, so ``submit`` of a generator function still gets its items.
    """
    result = fn(obj, *args)
    if not streaming:
        return list(result) if inspect.isgenerator(result) else result
    try:
        iterator = iter(result)
    except TypeError:
        raise TypeError(
            f"stream() needs a function that returns an iterable, {fn!r} returned {type(result).__name__}"
        ) from None
    try:
        for item in iterator:
            emit(item)
            if cancelled():
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    return None


def _run(conn: Connection, obj: Any, call_id: int, streaming: bool, payload: tuple[bytes, bytes]) -> bool:
    """Serve one call; False when the worker must exit (the call raised SystemExit and the like).

    The function and the arguments are unpickled apart: a function that cannot be loaded here is
    the worker's setup failing (:class:`WorkerInitError`, every call would fail the same way), an
    argument that cannot is that call's own error."""
    fn: Any = None
    fn_blob, args_blob = payload
    try:
        fn = pickle.loads(fn_blob)
    except Exception as exc:
        where = f"worker process {os.getpid()} on {socket.gethostname()}"
        init = WorkerInitError(
            f"{where} cannot load the function it was asked to run ({type(exc).__name__}: {exc}); "
            "functions must be importable by module and name from the worker process",
            where=where,
        )
        conn.send(("error", call_id, pickle.dumps((init, user_traceback(exc)))))  # the cause's traceback
        return True
    try:
        try:
            args = pickle.loads(args_blob)
        except Exception as exc:
            raise RuntimeError(
                f"the worker could not load the arguments of this call ({type(exc).__name__}: {exc})"
            ) from exc
        result = call_fn(
            fn,
            obj,
            args,
            streaming=streaming,
            emit=lambda item: conn.send(("item", call_id, pickle.dumps(item))),
            cancelled=lambda: _cancel_requested(conn, call_id),
        )
        blob = pickle.dumps(result)
    except Exception as exc:
        conn.send(("error", call_id, _exc_blob(exc)))
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, …: this worker stops, not the caller
        name = getattr(fn, "__qualname__", None) or repr(fn)
        err = worker_exited(exc, name, f"worker process {os.getpid()}")
        tb = user_traceback(exc)
        conn.send(("exit", call_id, pickle.dumps((err, tb))))
        return False
    else:
        conn.send(("done", call_id, blob))
    return True


def die_with_parent() -> bool:
    """Kill this worker's process group (the worker and whatever its user code started) when the
    process that started it dies, even by ``kill -9`` while a call hangs in user code → whether
    it is watched. A daemon thread waits on ``multiprocessing``'s parent sentinel (a pipe whose
    write end only the parent holds, under ``forkserver`` and ``spawn``; EOF when it dies).

    Not ``PR_SET_PDEATHSIG``: the worker's parent is the forkserver, which lives on while any
    worker holds its "alive" pipe, and the signal would follow the death of the parent's
    *thread*. Once its workers are gone, the forkserver exits by itself (that pipe reads EOF).
    Limit: user code holding the GIL without a break (a C call that never releases it) keeps
    the thread from running until it does. No sentinel (a context without one): not watched."""
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return False

    def watch() -> None:
        wait([sentinel])
        os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="hivemem-parent-watch", daemon=True).start()
    return True


def main(conn: Connection, factory_blob: bytes) -> None:
    """Entry point of a worker process (started with the forkserver or spawn context)."""
    # Its own session and process group, whose id is this pid: whatever the user's code starts
    # (subprocesses, forks) joins it, and the pool kills the whole group with the worker — on a
    # call timeout, a crash, or close() (``workers.kill_group``). A new session, not only a group:
    # no controlling terminal, so a worker writing to one is never stopped by job control.
    os.setsid()
    die_with_parent()  # outside the driver's process group: a kill -9 of it would not reach us
    # Ctrl-C reaches the terminal's process group; the parent decides what stops, not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.perf_counter()
    try:
        factory = pickle.loads(factory_blob)
        obj = factory()
    except BaseException as exc:
        conn.send(("init_error", 0, _exc_blob(exc)))
        return
    conn.send(("ready", 0, pickle.dumps(time.perf_counter() - started)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent went away: nothing left to serve
            return
        if msg[0] == "stop":
            return
        if msg[0] == "call":
            try:
                if not _run(conn, obj, *msg[1:]):
                    return  # the parent starts a replacement
            except OSError:  # broken pipe while answering: the parent is gone
                return
        # anything else is a stale "cancel" for a call that already ended
