"""``WorkerPool``: build an expensive object (agent, model, client) once per worker, reuse it for
every call, and survive workers that crash or hang.

Why not ``concurrent.futures.ProcessPoolExecutor``: its initializer runs per process too, but one
worker dying marks the whole executor broken, and it has no per-call timeout or streaming. Here
each worker is owned by its own slot (see :mod:`hivemem.pool.workers`), so a crash or timeout
costs exactly the call that was running.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal

from hivemem.errors import PoolClosed
from hivemem.pool.calls import AsyncStream, Call, Stream
from hivemem.pool.workers import STOP, ProcessSlot, Slot, ThreadSlot, refuse_while_bootstrapping

Kind = Literal["process", "thread"]
_READY_POLL_S = 0.05  # wait_ready: how often it looks for a worker whose factory failed


def _default_start_method() -> str:
    # Never "fork": the pool's own slot threads (and often a web server's) live in the parent,
    # and forking a threaded process can deadlock the child on a lock held by another thread.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _picklable(what: str, obj: Any) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception as exc:
        raise TypeError(
            f"cannot send {what} to a worker process: {type(exc).__name__}: {exc}. Process workers need "
            "module-level (importable) functions and picklable arguments; lambdas, local functions, "
            "open files, locks and sockets cannot travel. Use kind='thread' for those."
        ) from None


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


def _stop_slots(calls: queue.SimpleQueue[Any], n: int) -> None:
    for _ in range(n):
        calls.put(STOP)


class WorkerPool:
    """A fixed set of warm workers, each holding one object built by ``factory()``.

    ``kind="process"``: one process per worker (started with ``forkserver``, or ``spawn`` where
    that is missing), so CPU-bound agents run in parallel and a crash is contained; ``factory``,
    functions and arguments must be picklable. ``kind="thread"``: one thread per worker, one object
    per thread; for I/O-bound clients and for objects that cannot be pickled.

    Every call runs ``fn(obj, *args)`` in a worker, where ``obj`` is that worker's object::

        with WorkerPool(make_agent, size=4) as pool:
            reply = pool.submit(answer, "hello").result()
            for token in pool.stream(chat, "hello"):  # generator functions stream
                print(token, end="")

    Workers start in the background at construction; calls queue until one is ready. Call
    :meth:`wait_ready` to block until every factory has run (e.g. before taking traffic).
    """

    def __init__(
        self,
        factory: Callable[[], Any],
        size: int | None = None,
        kind: Kind = "process",
        *,
        start_method: str | None = None,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be callable (it builds each worker's object), got {factory!r}")
        if size is None:
            size = os.cpu_count() or 1
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if kind not in ("process", "thread"):
            raise ValueError(f"kind must be 'process' or 'thread', got {kind!r}")
        self.kind: Kind = kind
        self.size = size
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._slots: list[Slot]
        if kind == "process":
            refuse_while_bootstrapping()  # a worker importing a main module that has no main guard
            method = start_method or _default_start_method()
            if method == "fork":
                raise ValueError(
                    "start_method='fork' is not supported: the pool runs threads in this process and "
                    "forking a threaded process can deadlock; use 'forkserver' or 'spawn'"
                )
            ctx = multiprocessing.get_context(method)
            blob = _picklable(f"the factory {factory!r}", factory)
            self._slots = [ProcessSlot(i, self._calls, ctx, blob) for i in range(size)]
        else:
            self._slots = [ThreadSlot(i, self._calls, factory) for i in range(size)]
        for slot in self._slots:
            slot.start()
        # A pool dropped without close() still stops its workers once garbage-collected.
        self._finalizer = weakref.finalize(self, _stop_slots, self._calls, size)

    # -- calls ------------------------------------------------------------------------------
    def _make_call(self, fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> Call:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        timeout = _check_timeout(timeout)
        payload = None
        if self.kind == "process":
            name = getattr(fn, "__qualname__", repr(fn))
            payload = (_picklable(name, fn), _picklable(f"{name} and its arguments", args))
        return Call(fn, args, timeout=timeout, payload=payload)

    def _enqueue(self, call: Call) -> None:
        with self._lock:
            if self._closed:
                raise PoolClosed("the pool is closed")
            self._calls.put(call)

    def submit(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None) -> Future[Any]:
        """Run ``fn(obj, *args)`` in a worker; returns a ``concurrent.futures.Future``.

        ``timeout`` counts from the moment a worker starts the call. The future fails with
        :class:`WorkerCrashed` if the worker dies, :class:`CallTimeout` on timeout, or with the
        exception ``fn`` raised (same type and message; the worker traceback is its ``__cause__``).
        A generator function's items are returned as a list; use :meth:`stream` to get them live.
        """
        call = self._make_call(fn, args, timeout)
        self._enqueue(call)
        return call.future

    def call(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None) -> Any:
        """``submit(...).result()``: run and wait."""
        return self.submit(fn, *args, timeout=timeout).result()

    async def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None) -> Any:
        """Await ``fn(obj, *args)`` from asyncio without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(fn, *args, timeout=timeout))

    def stream(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None) -> Stream:
        """Iterate over the items ``fn(obj, *args)`` yields, each delivered as soon as it is produced.

        Closing the iterator early stops the worker's generator at its next item.
        """
        call = self._make_call(fn, args, timeout)
        stream = Stream(call)
        self._enqueue(call)
        return stream

    def astream(self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None) -> AsyncStream:
        """``async for`` version of :meth:`stream`; call it from a running event loop."""
        call = self._make_call(fn, args, timeout)
        stream = AsyncStream(call)
        self._enqueue(call)
        return stream

    # -- lifecycle --------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker has run its factory once.

        Raises :class:`WorkerInitError` (naming the worker, its process and host) as soon as one
        factory has failed, without waiting for the others, and ``TimeoutError`` on timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for slot in self._slots:
                if slot.ready.is_set() and slot.init_error is not None:
                    raise slot.init_failure()
            waiting = [slot for slot in self._slots if not slot.ready.is_set()]
            if not waiting:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"workers not ready after {timeout} s")
            # Wake on the first one's end, or soon, to notice another one failing meanwhile.
            waiting[0].ready.wait(_READY_POLL_S if remaining is None else min(_READY_POLL_S, remaining))

    def stats(self) -> dict[str, Any]:
        """Per-worker pid, factory runs, calls served, busy/idle and RSS, plus pool totals."""
        workers = [slot.stats() for slot in self._slots]
        return {
            "kind": self.kind,
            "size": self.size,
            "closed": self._closed,
            "queued": self._calls.qsize(),
            "factory_runs": sum(w["factory_runs"] for w in workers),
            "calls": sum(w["calls"] for w in workers),
            "busy": sum(1 for w in workers if w["busy"]),
            "workers": workers,
        }

    def close(self, wait: bool = True, *, cancel_pending: bool = False, kill_running: bool = False) -> None:
        """Stop taking calls; finish the queued ones (or cancel them) and stop the workers.

        Idempotent. With ``wait=True`` it returns once every worker process has exited. With
        ``cancel_pending=True`` it does not wait for a factory that is still running: a process
        worker being built is killed; a thread cannot be, so a thread still in its factory is left
        to finish in the background (a daemon thread) and then stops. ``kill_running=True`` (with
        ``cancel_pending``) does the same to the calls running now: their process workers are
        killed (the calls fail with :class:`WorkerCrashed`), busy threads are not waited for.
        """
        with self._lock:
            already = self._closed
            self._closed = True
            if not already:
                if cancel_pending:
                    while True:
                        try:
                            pending = self._calls.get_nowait()
                        except queue.Empty:
                            break
                        pending.future.cancel()
                    for slot in self._slots:
                        slot.abort_start()
                        if kill_running:
                            slot.abort_call()
                self._finalizer.detach()
                _stop_slots(self._calls, len(self._slots))
        if wait:
            for slot in self._slots:
                if slot.thread is threading.current_thread():
                    continue
                if (
                    cancel_pending
                    and slot.kind == "thread"
                    and (slot.in_factory or (kill_running and slot.busy))
                ):
                    continue  # cannot be interrupted; it stops once its factory or call returns
                slot.thread.join()

    shutdown = close

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<WorkerPool kind={self.kind} size={self.size} {state}>"
