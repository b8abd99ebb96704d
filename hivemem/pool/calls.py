"""One call travelling through the pool, and the iterators that hand streamed items to the caller.

A call's outcome is a ``concurrent.futures.Future``. Streamed items do not fit a future, so a
streaming call carries a *sink*: a callable the worker side invokes once per item, from whatever
thread receives it. The synchronous :class:`Stream` feeds a ``queue.Queue`` from it; the
:class:`AsyncStream` hops onto its event loop with ``call_soon_threadsafe``. Both learn the end of
the stream (and its error) from the future's done-callback, so there is one source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

_ids = itertools.count(1)

_END = object()


class Call:
    """Everything a worker needs to run ``fn(obj, *args)`` and report back."""

    __slots__ = ("_hook", "_lock", "args", "cancelled", "fn", "future", "id", "payload", "sink", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        timeout: float | None,
        sink: Callable[[Any], None] | None = None,
        payload: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.fn = fn
        self.args = args
        self.timeout = timeout
        self.sink = sink
        self.payload = payload  # pre-pickled fn and args (apart) for process workers
        self.future: Future[Any] = Future()
        # Set when the consumer of a stream went away, or the call timed out: stop producing.
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._hook: Callable[[], None] | None = None

    @property
    def streaming(self) -> bool:
        return self.sink is not None

    def finish(self, value: Any) -> None:
        """Resolve the future unless it already ended (timed out, cancelled)."""
        with contextlib.suppress(InvalidStateError):
            self.future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(InvalidStateError):
            self.future.set_exception(exc)

    def on_cancel(self, hook: Callable[[], None] | None) -> None:
        """Install how to tell the running worker to stop (a process worker sends a message)."""
        with self._lock:
            self._hook = hook
            fire = self.cancelled.is_set()
        if hook is not None and fire:
            hook()

    def request_cancel(self) -> None:
        """Ask the call to stop: drop it if still queued, else stop its stream at the next item."""
        if self.future.cancel():
            return
        with self._lock:
            self.cancelled.set()
            hook = self._hook
        if hook is not None:
            hook()

    def emit(self, item: Any) -> None:
        if self.sink is not None and not self.future.done():
            self.sink(item)


class Stream:
    """Iterator over the items a worker-side generator yields, delivered as they are produced.

    Closing it early (``close()``, ``break`` out of a ``with`` block, garbage collection) tells
    the worker to stop the generator at its next item, so an abandoned chat stops costing CPU.
    """

    def __init__(self, call: Call) -> None:
        self._call = call
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        call.sink = self._queue.put
        call.future.add_done_callback(lambda _f: self._queue.put(_END))

    @property
    def future(self) -> Future[Any]:
        return self._call.future

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._closed = True
            exc = self._call.future.exception()  # raises CancelledError if it never ran
            if exc is not None:
                raise exc
            raise StopIteration
        return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._call.future.done():
                self._call.request_cancel()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


class AsyncStream:
    """``async for`` counterpart of :class:`Stream`; never blocks the event loop."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        call.sink = self._put
        call.future.add_done_callback(lambda _f: self._put(_END))

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._call.cancelled.set()

    @property
    def future(self) -> Future[Any]:
        return self._call.future

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        if item is _END:
            self._closed = True
            exc = self._call.future.exception()
            if exc is not None:
                raise exc
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._call.future.done():
                self._call.request_cancel()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
