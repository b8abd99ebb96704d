"""Admission into the engine by permits: at most ``capacity`` texts in flight, later callers wait.

Both transports of the service (the socket and the HTTP embeddings route) take a permit for their
texts before they hand them to the engine and give it back when the vectors are there. A caller
that does not fit waits its turn — first come, first served, woken the moment texts finish — for at
most ``busy_timeout`` seconds, then gets ``ServiceBusy``. This replaced polling the engine's queue
with growing sleeps on ``QueueFull``: a waiting caller now wakes when room is made,
not at its next poll, and cannot be overtaken by a newcomer that happened to poll first.

A request larger than the capacity is admitted when nothing else is in flight, so it is slow
rather than refused forever. Permits are counted on the event loop only: no locks. ``on_idle`` is
called each time the last texts in flight are answered (the service gives freed memory back then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable

from hivemem.errors import ServiceBusy


class Admission:
    """Permits for ``capacity`` texts in flight (``None``: no limit); see the module docstring."""

    def __init__(
        self, capacity: int | None, busy_timeout: float, on_idle: Callable[[], None] | None = None
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 text, got {capacity}")
        self.capacity = capacity
        self.busy_timeout = busy_timeout
        self.on_idle = on_idle  # called when the last texts in flight are answered
        self.in_flight = 0  # texts admitted and not yet answered
        self.waiting = 0  # callers waiting for a permit
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def permit(self, n: int) -> AsyncIterator[None]:
        """Hold permits for ``n`` texts for the block (ServiceBusy if none came in time)."""
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)

    def _fits(self, n: int) -> bool:
        return self.capacity is None or self.in_flight == 0 or self.in_flight + n <= self.capacity

    async def acquire(self, n: int) -> None:
        if not self._queue and self._fits(n):
            self.in_flight += n
            return
        if self.busy_timeout <= 0:
            raise self._busy()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, granted)
        self._queue.append(entry)
        self.waiting += 1
        try:
            async with asyncio.timeout(self.busy_timeout):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():  # granted just as we gave up
                if isinstance(exc, TimeoutError):
                    return  # it is ours: go ahead
                self.release(n)
                raise
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)
            self._wake()  # the callers behind us may fit now
            if isinstance(exc, TimeoutError):
                raise self._busy() from None
            raise
        finally:
            self.waiting -= 1

    def release(self, n: int) -> None:
        self.in_flight -= n
        self._wake()
        if self.in_flight == 0 and self.on_idle is not None:
            self.on_idle()

    def _wake(self) -> None:
        while self._queue:
            n, granted = self._queue[0]
            if granted.done():  # its caller gave up
                self._queue.popleft()
                continue
            if not self._fits(n):
                return
            self._queue.popleft()
            self.in_flight += n
            granted.set_result(None)

    def _busy(self) -> ServiceBusy:
        return ServiceBusy(
            f"the embedding queue stayed full for {self.busy_timeout:g} s ({self.in_flight} texts in "
            f"flight, max_pending={self.capacity}); retry later"
        )

    def stats(self) -> dict[str, int | None]:
        return {"in_flight": self.in_flight, "waiting": self.waiting, "capacity": self.capacity}
