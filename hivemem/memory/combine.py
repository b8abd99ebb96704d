"""Concurrent ``add`` calls of one process joined into groups, each run by one of its callers.

Why: twenty threads each adding one memory used to walk the add path twenty times — a
``(scope, hash)`` lookup, an embed request and a write each — and came back from the engine one
at a time, so their writes trickled into transactions of 2–6 adds and the engine waited (median
~6 ms per batch; 20 threads of ``add`` 0.65–0.73× ``add_batch``). Joined, a group makes one
lookup, one embed call and one transaction (``SQLiteStorage.insert_many``: still one
all-or-nothing unit per call), and its members come back together, ready to form the next group
at once: 0.80–0.86× ``add_batch``, ~19 adds per transaction (``benchmarks/memory_threads.py``).

How (leader/follower, as the engine's queue and the storage's group commit): a call waits in
line; the call at the head of the line leads when no group of this combiner is in its first
stage (lookup + embed). Before leading it waits — at most ``max_wait_ms`` after it arrived or
the last group left its first stage — for everyone around: the calls in line plus the last
group's callers, who come back after its write. A lone sequential caller never waits, and twenty
threads stay one cohort (engine batches of ~19 texts) instead of two cohorts of ten that take
turns (waiting only for the last group's size settled there: batches of 15–18 texts, 3–9 %
slower in 3 of 3 interleaved pairs). The leader runs the group; once its first stage is done
(the engine is free), it lets the next head lead while it writes, so calls already waiting get
embedded during this write. The leader hands every member its own outcome, result or exception.
A leader that dies (an interrupt) hands its members an error saying so; nothing is left waiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Release = Callable[[], None]
# run(items, release) → one outcome per item (a result, or the exception to raise to its caller);
# it calls release() once its first stage is done (the next group may start).
Runner = Callable[[list[Any], Release], list[Any]]


class _Call:
    __slots__ = ("arrived", "done", "group", "item", "outcome", "size", "wake")

    def __init__(self, item: Any, size: int) -> None:
        self.item = item
        self.size = size
        self.arrived = time.monotonic()
        self.wake = threading.Event()
        self.outcome: Any = None
        self.done = False
        self.group: list[_Call] | None = None  # set when this call leads a group


class Combiner:
    """Runs concurrent ``submit(item)`` calls in groups through ``run`` (see the module docstring).

    ``max_size``: a group holds at most this many units (``size`` of each item; a larger single
    item runs alone).
    """

    def __init__(self, run: Runner, *, max_wait_ms: float = 5.0, max_size: int = 1024) -> None:
        self._run = run
        self.max_wait = max_wait_ms / 1000.0
        self.max_size = max_size
        self._lock = threading.Lock()
        self._line: deque[_Call] = deque()
        self._busy = False  # a group is in its first stage
        self._expect = 1  # calls the next group waits for (up to max_wait)
        self._free_since = 0.0  # when the last group left its first stage
        self.groups = 0  # groups run (calls / groups = mean group size)
        self.calls = 0

    def submit(self, item: Any, size: int = 1) -> Any:
        """Run ``item`` in a group; returns its outcome, or raises it if it is an exception."""
        call = _Call(item, size)
        with self._lock:
            self._line.append(call)
            if len(self._line) >= self._expect:
                self._line[0].wake.set()  # the head may be waiting for company
        try:
            self._wait_turn(call)
        except BaseException:  # interrupted while waiting: leave the line without blocking it
            with self._lock:
                if call in self._line:
                    self._line.remove(call)
                    if self._line:
                        self._line[0].wake.set()
            if call.group is not None and not call.done:
                self._lead(call.group)  # it had just taken a group: its members are waiting
            raise
        if call.group is not None:
            self._lead(call.group)
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        return call.outcome

    def _wait_turn(self, call: _Call) -> None:
        """Block until ``call`` is done, or leads a group (then ``call.group``, ``call`` first)."""
        while True:
            with self._lock:
                if call.done:
                    return
                timeout = None
                if not self._busy and self._line[0] is call:
                    wait = max(call.arrived, self._free_since) + self.max_wait - time.monotonic()
                    units = sum(c.size for c in self._line)
                    if len(self._line) >= self._expect or units >= self.max_size or wait <= 0:
                        call.group = self._take()
                        return
                    timeout = wait
                call.wake.clear()
            call.wake.wait(timeout)

    def _take(self) -> list[_Call]:
        """The head and the calls behind it, up to ``max_size`` units (lock held)."""
        group = [self._line.popleft()]
        units = group[0].size
        while self._line and units + self._line[0].size <= self.max_size:
            units += self._line[0].size
            group.append(self._line.popleft())
        self._busy = True
        self.groups += 1
        self.calls += len(group)
        return group

    def _lead(self, group: list[_Call]) -> None:
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._busy = False
                # Wait next for everyone around: those in line and this group's callers, back
                # after its write. (Only the last group's size split twenty threads into two
                # cohorts of ten that took turns, the engine running batches of ten.)
                self._expect = len(self._line) + len(group)
                self._free_since = time.monotonic()
                if self._line:
                    self._line[0].wake.set()

        outcomes: list[Any] = []
        try:
            outcomes = self._run([c.item for c in group], release)
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
        except BaseException as exc:  # a bug or an interrupt in the leader: its own call gets it
            lost = RuntimeError(
                "the thread that ran this group of calls failed before it could report; "
                "this call may or may not have taken effect"
            )
            outcomes = [exc, *[lost] * (len(group) - 1)]
        finally:
            release()
            with self._lock:
                for call, outcome in zip(group, outcomes or [None] * len(group), strict=True):
                    call.outcome = outcome
                    call.done = True
                    call.wake.set()
