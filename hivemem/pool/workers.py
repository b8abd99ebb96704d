"""The pool's worker slots: each one owns a worker (a process or a thread) and serves calls from
the pool's shared queue, one at a time.

A process slot is a small thread in the caller's process that owns exactly one child process and
its pipe. Because each slot owns its child, a child that dies (``kill -9``, segfault, OOM) only
fails the call it was running: the slot notices through the process sentinel, reports
:class:`WorkerCrashed`, and starts a replacement — unlike ``ProcessPoolExecutor``, where one death
breaks the whole executor.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from types import FrameType
from typing import Any

from hivemem.errors import CallTimeout, PoolClosed, WorkerCrashed, WorkerInitError
from hivemem.pool import _child
from hivemem.pool.calls import Call
from hivemem.pool.failures import RemoteTraceback, worker_exited

STOP = object()  # queue marker: one per slot, put behind pending calls by close()
# Exit status of a process that was asked to start a pool while importing the main module as a
# worker (see refuse_while_bootstrapping); the parent turns it into a WorkerInitError naming the fix.
EXIT_NO_MAIN_GUARD = 86
_STOP_GRACE_S = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (Linux ``/proc``; psutil elsewhere when installed)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:
        return None


def kill_group(pgid: int) -> None:
    """SIGKILL every process left in a worker's process group (``_child.main`` made it, with the
    worker's pid as its id): children of the user's code die with their worker instead of living
    on under pid 1. Called right after the worker was joined: while any process of the group
    lives, its id stays in use and names no other group; only an empty group's id could have been
    handed to a new group leader, which needs the pid counter to wrap around in between. A child
    that made a session of its own (a daemon) has left the group and is not reached."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _main_file() -> str:
    main = sys.modules.get("__main__")
    return str(getattr(main, "__file__", None) or "the main module")


def no_main_guard_message(main_file: str) -> str:
    return (
        f"every worker process imports the main module {main_file}, and that module creates a "
        "WorkerPool when imported, so each worker would start a pool of its own. Create the pool "
        f'(and run the program) under `if __name__ == "__main__":` in {main_file}'
    )


def refuse_while_bootstrapping() -> None:
    """Stop a worker process that is creating a pool while it imports the main module.

    Under ``spawn``/``forkserver`` a worker imports the main module to find the functions it runs;
    a script without ``if __name__ == "__main__":`` then creates a pool in every worker (and in the
    forkserver), which made the caller wait forever while multiprocessing printed tracebacks. The
    stdlib marks that import with ``_inheriting`` (its own check, ``_check_not_importing_main``,
    only fires later, inside the pool's threads). Exits at once with ``EXIT_NO_MAIN_GUARD``
    (``os._exit``: a forkserver child turns any ``SystemExit`` into status 1), which the parent
    reports as a WorkerInitError naming the fix.
    """
    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    frame: FrameType | None = sys._getframe(1)
    main_file = "the main module"
    while frame is not None:  # the module being imported as __mp_main__ is on the stack
        if frame.f_globals.get("__name__") == "__mp_main__":
            main_file = str(frame.f_globals.get("__file__") or main_file)
            break
        frame = frame.f_back
    sys.stderr.write(f"hivemem: not starting a WorkerPool here: {no_main_guard_message(main_file)}\n")
    sys.stderr.flush()
    os._exit(EXIT_NO_MAIN_GUARD)


def _forkserver_exit_code() -> int | None:
    """Exit code of this process's forkserver if it has exited, without reaping it (best effort)."""
    try:
        from multiprocessing import forkserver

        pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]  # the stdlib's own singleton
        if pid is None:
            return None
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except Exception:
        return None
    if info is None or info.si_code != os.CLD_EXITED:
        return None
    return info.si_status


def _start_failed(exc: BaseException, method: str) -> WorkerInitError:
    main_file = _main_file()
    if method == "forkserver" and _forkserver_exit_code() == EXIT_NO_MAIN_GUARD:
        return WorkerInitError(f"cannot start worker processes: {no_main_guard_message(main_file)}")
    hint = (
        " The forkserver exited while importing the main module: if it creates a WorkerPool or does "
        f'other work when imported, move that under `if __name__ == "__main__":` in {main_file}.'
        if method == "forkserver"
        else ""
    )
    return WorkerInitError(f"could not start a worker process ({type(exc).__name__}: {exc}).{hint}")


def _with_remote_tb(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class Slot:
    """State and bookkeeping shared by both kinds; subclasses implement ``_loop``."""

    kind = ""

    def __init__(self, index: int, calls: queue.SimpleQueue[Call | object]) -> None:
        self.index = index
        self._calls = calls
        self.pid: int | None = None
        self.ready = threading.Event()  # first init attempt finished (ok or not)
        self.init_error: BaseException | None = None
        self.init_where = f"worker {index}"  # where the last factory run happened (process, host)
        self.serving = False  # the object is built and the worker takes calls
        self.busy = False
        self.calls_served = 0
        self.factory_runs = 0
        self.factory_seconds: float | None = None  # how long the last successful factory call took
        self.crashes = 0
        self.timeouts = 0
        self.exits = 0  # calls that raised SystemExit & co. (the worker was replaced)
        self.thread = threading.Thread(target=self._guarded_loop, name=f"hivemem-pool-{index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        finally:
            self.ready.set()

    def _loop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _next_call(self) -> Call | None:
        """Block for the next runnable call; None means stop."""
        while True:
            call = self._calls.get()
            if not isinstance(call, Call):  # STOP
                return None
            if call.future.set_running_or_notify_cancel():
                return call

    def init_failure(self) -> BaseException:
        """The error that stands for the last failed factory run, naming where it ran; its
        ``__cause__`` is the factory's own exception (with the worker-side traceback)."""
        err = self.init_error
        if isinstance(err, PoolClosed | WorkerInitError):  # the pool's own words: as they are
            return type(err)(str(err))
        exc = WorkerInitError(
            f"{self.init_where}: the factory failed: {type(err).__name__}: {err}", where=self.init_where
        )
        exc.__cause__ = err
        return exc

    def _fail_init(self, call: Call) -> None:
        """Fail ``call`` with the error of the factory run made for it (kept: the next call retries)."""
        call.fail(self.init_failure())

    def abort_start(self) -> None:
        """``close(cancel_pending=True)``: stop waiting for a factory that is still running."""

    def abort_call(self) -> None:
        """``close(kill_running=True)``: end the running call now (a process worker is killed)."""

    @property
    def in_factory(self) -> bool:
        """Whether the factory is running right now (a worker being built)."""
        return False

    def stats(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "kind": self.kind,
            "pid": self.pid,
            "ready": self.serving,
            "busy": self.busy,
            "calls": self.calls_served,
            "factory_runs": self.factory_runs,
            "factory_seconds": self.factory_seconds,
            "crashes": self.crashes,
            "timeouts": self.timeouts,
            "exits": self.exits,
            "rss_bytes": rss_bytes(self.pid) if self.pid is not None else None,
        }


class ProcessSlot(Slot):
    """Owns one worker process, started from a forkserver/spawn context, and its pipe."""

    kind = "process"

    def __init__(
        self, index: int, calls: queue.SimpleQueue[Any], ctx: BaseContext, factory_blob: bytes
    ) -> None:
        super().__init__(index, calls)
        self._ctx = ctx
        self._factory_blob = factory_blob
        self._proc: Any = None
        self._conn: Any = None
        self._send_lock = threading.Lock()
        self._start_lock = threading.Lock()  # orders a starting worker against abort_start()
        self._starting = False
        self._aborted = False

    # -- process lifecycle ------------------------------------------------------------------
    @property
    def in_factory(self) -> bool:
        return self._starting

    def abort_start(self) -> None:
        with self._start_lock:
            self._aborted = True
            proc = self._proc if self._starting else None
        if proc is not None:
            proc.kill()  # _spawn sees EOF and reports PoolClosed

    def abort_call(self) -> None:
        proc = self._proc
        if self.busy and proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()  # _serve sees the death: the call fails with WorkerCrashed, nobody waits for it

    def _spawn(self) -> None:
        """Start a worker process and wait for its factory to finish (or fail)."""
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(  # type: ignore[attr-defined]  # every concrete context has it
            target=_child.main, args=(child, self._factory_blob), name=f"hivemem-worker-{self.index}"
        )
        proc.daemon = True
        with self._start_lock:
            if self._aborted:
                parent.close()
                child.close()
                self.init_error = PoolClosed("the pool was closed before this worker started")
                return
            try:
                proc.start()
            except Exception as exc:  # e.g. the forkserver died importing the main module
                parent.close()
                child.close()
                self.init_error = _start_failed(exc, self._ctx.get_start_method())
                return
            self._proc, self._conn, self._starting = proc, parent, True
        child.close()
        self.pid, self.serving = proc.pid, False
        self.init_where = f"worker {self.index} (process {proc.pid} on {socket.gethostname()})"
        self.factory_runs += 1
        try:
            kind, _, blob = parent.recv()  # blocks until the factory is done; EOF if it died
        except (EOFError, OSError):
            proc.join()
            err: BaseException = WorkerCrashed(
                f"worker process {proc.pid} died while running the factory ({_describe_exit(proc.exitcode)})",
                pid=proc.pid,
                exitcode=proc.exitcode,
            )
            if self._aborted:
                err = PoolClosed("the pool was closed while this worker's factory was running")
            elif proc.exitcode == EXIT_NO_MAIN_GUARD:
                err = WorkerInitError(f"cannot start worker processes: {no_main_guard_message(_main_file())}")
            self._discard()
            self.init_error = err
            return
        finally:
            with self._start_lock:
                self._starting = False
        if kind == "ready":
            self.init_error, self.serving = None, True
            self.factory_seconds = pickle.loads(blob)
        else:
            error, tb = pickle.loads(blob)
            self._discard()
            self.init_error = _with_remote_tb(error, tb)

    def _discard(self, kill: bool = False) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self.pid, self.serving = None, False
        if proc is None:
            return
        if kill and proc.is_alive():
            proc.kill()
        proc.join(_STOP_GRACE_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
        kill_group(proc.pid)  # what the user's code started dies with the worker
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(Exception):
            proc.close()

    def _send(self, msg: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _cancel_hook(self, call_id: int, conn: Any) -> Callable[[], None]:
        def hook() -> None:
            with self._send_lock, contextlib.suppress(Exception):
                conn.send(("cancel", call_id))

        return hook

    # -- serving ----------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                if self._proc is None and self.init_error is None:  # first start, or a replacement
                    self._spawn()
                    self.ready.set()
                call = self._next_call()
                if call is None:
                    return
                if self.init_error is not None and not self._aborted:
                    # The last factory run failed: run it again now, for this call, so the call gets
                    # today's outcome (a fixed factory serves it), never an earlier attempt's error.
                    self._spawn()
                if self.init_error is not None:
                    self._fail_init(call)
                    continue
                # Died while idle? An idle worker never writes, so a readable pipe means EOF; this
                # also sees a death that the forkserver has not reported through the sentinel yet.
                if not self._proc.is_alive() or self._conn.poll():
                    self.crashes += 1
                    self._discard()
                    self._spawn()
                    if self.init_error is not None:
                        self._fail_init(call)
                        continue
                self.busy = True
                try:
                    self._serve(call)
                except Exception as exc:  # a bug here must not strand callers: fail, start afresh
                    call.fail(exc)
                    self._discard(kill=True)
                finally:
                    self.busy = False
                    self.calls_served += 1
        finally:
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    self._send(("stop",))
                self._discard()

    def _crashed(self, call: Call) -> None:
        proc = self._proc
        proc.join(_STOP_GRACE_S)
        pid, code = proc.pid, proc.exitcode
        self.crashes += 1
        self._discard(kill=True)
        call.fail(
            WorkerCrashed(
                f"worker process {pid} died ({_describe_exit(code)}) while running {_fn_name(call.fn)}; "
                "it has been replaced",
                pid=pid,
                exitcode=code,
            )
        )

    def _serve(self, call: Call) -> None:
        conn, proc = self._conn, self._proc
        try:
            self._send(("call", call.id, call.streaming, call.payload))
        except OSError:
            self._crashed(call)
            return
        if call.streaming:
            call.on_cancel(self._cancel_hook(call.id, conn))
        deadline = None if call.timeout is None else time.monotonic() + call.timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait([conn, proc.sentinel], remaining)
            if not ready:
                pid = proc.pid
                self.timeouts += 1
                self._discard(kill=True)
                call.cancelled.set()
                call.fail(
                    CallTimeout(
                        f"{_fn_name(call.fn)} ran longer than {call.timeout} s; "
                        f"worker process {pid} was killed and replaced"
                    )
                )
                return
            if conn not in ready:
                self._crashed(call)
                return
            try:
                kind, call_id, blob = conn.recv()
            except (EOFError, OSError):
                self._crashed(call)
                return
            if call_id != call.id:
                continue
            try:
                value = pickle.loads(blob)
            except Exception as exc:  # e.g. a class the parent cannot import
                call.fail(TypeError(f"could not unpickle what {_fn_name(call.fn)} sent back: {exc}"))
                if kind == "item":
                    call.request_cancel()
                    continue
                return
            if kind == "item":
                call.emit(value)
            elif kind == "done":
                call.finish(value)
                return
            elif kind == "exit":  # SystemExit & co. in the function: the worker is exiting
                error, tb = value
                self.exits += 1
                self._discard()  # joined (killed after a grace period); the loop starts a new one
                call.fail(_with_remote_tb(error, tb))
                return
            else:  # "error"
                error, tb = value
                call.fail(_with_remote_tb(error, tb))
                return


class ThreadSlot(Slot):
    """A worker thread that builds its own object (one per thread) and runs calls in place.

    Threads cannot be killed: a timed-out call is failed for the caller and a stream is stopped at
    its next item, but the thread stays busy until the function returns.
    """

    kind = "thread"

    def __init__(self, index: int, calls: queue.SimpleQueue[Any], factory: Callable[[], Any]) -> None:
        super().__init__(index, calls)
        self._factory = factory
        self.pid = os.getpid()
        self.init_where = f"worker {index} (a thread of process {self.pid} on {socket.gethostname()})"
        self._building = False

    @property
    def in_factory(self) -> bool:
        return self._building

    def _build(self) -> tuple[bool, Any]:
        """Run the factory once: ``(True, obj)``, or ``(False, None)`` with ``init_error`` set."""
        self.factory_runs += 1
        started = time.perf_counter()
        self._building = True
        try:
            obj = self._factory()
        except BaseException as exc:
            self.init_error = exc
            return False, None
        finally:
            self._building = False
        self.init_error, self.serving = None, True
        self.factory_seconds = time.perf_counter() - started
        return True, obj

    def _loop(self) -> None:
        obj: Any = None
        built = False
        while True:
            if not built and self.init_error is None:  # first start, or a replacement
                built, obj = self._build()
                self.ready.set()
            call = self._next_call()
            if call is None:
                return
            if not built:  # the last factory run failed: run it again now, for this call
                built, obj = self._build()
                if not built:
                    self._fail_init(call)
                    continue
            self.busy = True
            timer = None
            if call.timeout is not None:
                timer = threading.Timer(call.timeout, self._time_out, (call,))
                timer.daemon = True
                timer.start()
            try:
                if not self._run(obj, call, self.index):
                    self.exits += 1
                    obj, built, self.serving = None, False, False  # replaced: the factory runs again
            finally:
                if timer is not None:
                    timer.cancel()
                self.busy = False
                self.calls_served += 1

    def _time_out(self, call: Call) -> None:
        if not call.future.done():
            self.timeouts += 1
            call.cancelled.set()
            call.fail(
                CallTimeout(
                    f"{_fn_name(call.fn)} ran longer than {call.timeout} s; the worker thread cannot be "
                    "killed and finishes it in the background"
                )
            )

    @staticmethod
    def _run(obj: Any, call: Call, index: int) -> bool:
        """Run one call; False when its object must be replaced (it raised SystemExit & co.)."""
        try:
            result = _child.call_fn(
                call.fn,
                obj,
                call.args,
                streaming=call.streaming,
                emit=call.emit,
                cancelled=call.cancelled.is_set,
            )
        except Exception as exc:
            call.fail(exc)
        except BaseException as exc:  # never hand SystemExit/KeyboardInterrupt to the caller
            err = worker_exited(exc, _fn_name(call.fn), f"worker thread {index}")
            err.__cause__ = exc
            call.fail(err)
            return False
        else:
            call.finish(result)
        return True
