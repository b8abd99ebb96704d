"""Leader/follower grouping: many small concurrent calls run as fewer, larger groups.

Four places run this way: the engine's queue (embed calls → one model batch), ``Memory.add``
(adds → one lookup, one embed call, one write), SQLite's group commit (inserts → one
transaction) and SQLite's grouped searches (searches → one snapshot, ``memory/searching.py``).
They share this module, so that they share one waiting rule and one way of handing
every caller its own outcome:

* ``Line``: the calls waiting, in order, and when to take the next group from it.
* ``Combiner``: the callers run the groups themselves (the call at the head of the line leads).
  The engine's queue, whose callers may be event loops that must not block, drives a ``Line``
  from its own worker thread instead (``hivemem.embed.queue``).
* ``each_alone``: after a group failed, its members one at a time, so an error lands on its cause.
* ``Wake``: what a waiting caller blocks on (one raw lock: waking it is one release).
* ``gil_enabled``: whether the interpreter has a GIL now (grouping that only saves GIL
  hand-offs, the searches', is left out without one).

docs/memory.md ("Concurrent adds") has the measurements behind the waiting rule.
"""

from __future__ import annotations

import _thread
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from hivemem.errors import GroupLeaderFailed

T = TypeVar("T")
R = TypeVar("R")

_GIL_PROBE: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)  # CPython 3.13+


def gil_enabled() -> bool:
    """Whether this interpreter runs with a GIL now: always before CPython 3.13; a free-threaded
    build (3.13t) runs without one unless ``PYTHON_GIL=1`` or the import of an extension module
    not marked free-threading-safe turned it on (docs/memory.md, "A free-threaded interpreter")."""
    return True if _GIL_PROBE is None else _GIL_PROBE()


class Wake:
    """What a waiting caller blocks on: one raw lock, held while nothing is to be seen.

    ``threading.Event`` wraps a ``Condition``: every wait allocates a lock and, once woken, the
    waiter must take the condition's lock again, while the waker holds it; a batch's 16 callers woke
    in lock-step on it. Here waiting is one ``acquire`` in C (the GIL released, the thread asleep in
    the kernel) and waking is one ``release``: one futex wake, nothing else (docs/embed.md,
    "Concurrent singles"). One waiter per ``Wake``; ``set`` may come from any thread.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:  # noqa: SIM105 (contextlib.suppress costs a context manager on every wake-up)
            self._lock.release()
        except RuntimeError:  # set already
            pass

    def clear(self) -> None:
        self._lock.acquire(False)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set (it stays set) or ``timeout`` seconds passed; True if set."""
        if self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0)):
            self.set()  # not a bare release: a set() from another thread may have released it already
            return True
        return False


class Member(Generic[T]):
    """One call's item in a ``Line``: ``size`` units of a group; its ``outcome`` (a result, or the
    exception its caller raises) once ``done``, and its caller's ``wake`` set then."""

    __slots__ = ("arrived", "done", "item", "outcome", "size", "wake")

    def __init__(self, item: T, size: int = 1, wake: Wake | None = None) -> None:
        self.item = item
        self.size = size
        self.arrived = time.monotonic()
        self.done = False
        self.outcome: Any = None
        self.wake = wake  # set when this member's caller should look again


class Line(Generic[T]):
    """Members waiting for a group, and the rule for when to take one. Not locked: its owner holds
    a lock around every call.

    The rule: take a group at once when as many members wait as were around when the last group
    left (the ones waiting then plus the ones it served, who are coming back), or a full group
    waits; else wait, at most ``max_wait`` after the head arrived or the last group left. A lone
    sequential caller never waits, and a steady crowd stays one cohort instead of splitting into
    halves that take turns.
    """

    def __init__(self, *, max_wait_ms: float = 5.0, max_size: int = 1024) -> None:
        self.max_wait = max_wait_ms / 1000.0
        self.max_size = max_size
        self.members: deque[Member[T]] = deque()
        self.units = 0  # the sizes of the members waiting
        self._expect = 1
        self._free_since = 0.0

    def __len__(self) -> int:
        return len(self.members)

    def put(self, members: Iterable[Member[T]]) -> None:
        for m in members:
            self.members.append(m)
            self.units += m.size

    def remove(self, member: Member[T]) -> bool:
        """Take ``member`` out of the line (its caller gave up); False if a group has it already."""
        try:
            self.members.remove(member)
        except ValueError:
            return False
        self.units -= member.size
        return True

    def wait_for(self) -> float:
        """Seconds to wait before the next group should be taken (≤ 0: now; the line is not empty)."""
        if len(self.members) >= self._expect or self.units >= self.max_size:
            return 0.0
        return max(self.members[0].arrived, self._free_since) + self.max_wait - time.monotonic()

    def take(self, into: list[Member[T]] | None = None) -> list[Member[T]]:
        """The head and the members behind it, up to ``max_size`` units (a larger head goes alone).
        ``into``: the list to fill, member by member, so that a caller interrupted meanwhile still
        knows every member it took out of the line."""
        group: list[Member[T]] = [] if into is None else into
        head = self.members[0]  # IndexError on an empty line, as before
        units = 0
        while self.members and (self.members[0] is head or units + self.members[0].size <= self.max_size):
            member = self.members.popleft()
            self.units -= member.size
            units += member.size
            group.append(member)
        return group

    def served(self, n: int) -> None:
        """A group of ``n`` members left its first stage: wait next for everyone around. Call it
        before its members have their outcomes, or those already back count twice."""
        self._expect = len(self.members) + n
        self.free()

    def free(self) -> None:
        """The runner is free again (if later than ``served``): the wait counts from now."""
        self._free_since = time.monotonic()


Release = Callable[[], None]


def settle(member: Member[Any], outcome: Any) -> None:
    """Hand ``member`` its outcome (a result, or the exception its caller will raise) and wake its
    caller."""
    member.outcome = outcome
    member.done = True
    if member.wake is not None:
        member.wake.set()


class Combiner(Generic[T, R]):
    """Runs concurrent ``submit`` calls in groups through ``run``; a caller of the group runs it.

    ``run(items, release)`` → one outcome per item (a result, or the exception for its caller); it
    calls ``release()`` once the group no longer needs to be the only one running (else it is
    called when ``run`` returns), so the next group may start while this one finishes. ``lock``: a
    lock the leader acquires before it takes its group (SQLite's write lock: whoever writes next
    takes everything queued meanwhile); released with ``release``. ``then``: run by a leader after
    its members have their outcomes (work none of them waits for).

    A waiting caller that is interrupted leaves the line (and hands the turn on if it was about to
    lead); a leader that dies gets its exception and hands the other members of its group
    ``GroupLeaderFailed``; nobody is left waiting.
    """

    def __init__(
        self,
        run: Callable[[list[T], Release], list[R | BaseException]],
        *,
        max_wait_ms: float = 5.0,
        max_size: int = 1024,
        lock: threading.Lock | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self._resource = lock
        self._then = then
        self._line: Line[T] = Line(max_wait_ms=max_wait_ms, max_size=max_size)
        self._lock = threading.Lock()
        self._busy = False  # a group is being taken or has not released yet
        self._taker: Wake | None = None  # the caller that set _busy and has not taken its group yet
        self.groups = 0  # groups run (calls / groups = mean group size)
        self.calls = 0

    def __len__(self) -> int:
        """Items waiting for a group."""
        return len(self._line)

    def submit(self, item: T, size: int = 1) -> R:
        """Run ``item`` in a group; returns its outcome, or raises it if it is an exception."""
        (outcome,) = self.submit_many([(item, size)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def submit_many(self, items: list[tuple[T, int]]) -> list[R | BaseException]:
        """Several ``(item, size)`` queued at once (so one group takes them together, size
        permitting); → each one's outcome, exceptions returned rather than raised."""
        wake = Wake()
        mine = [Member(item, size, wake) for item, size in items]
        with self._lock:
            self._line.put(mine)
            if self._line.wait_for() <= 0:
                self._nudge()  # the head may have been waiting for company
        try:
            while not all(m.done for m in mine):
                if self._wait_turn(mine, wake):
                    self._lead()
        except BaseException:  # interrupted: leave the line without blocking it
            with self._lock:
                for m in mine:
                    self._line.remove(m)
                if self._taker is wake:  # about to lead, no group taken yet: hand the turn on
                    self._taker = None
                    self._busy = False
                self._nudge()
            raise
        return [m.outcome for m in mine]

    def _nudge(self) -> None:
        """Wake the head's caller: it may lead now (lock held)."""
        if self._line.members and not self._busy:
            wake = self._line.members[0].wake
            if wake is not None:
                wake.set()

    def _wait_turn(self, mine: list[Member[T]], wake: Wake) -> bool:
        """Block until one of ``mine`` is done (→ False) or this caller is to lead (→ True)."""
        with self._lock:
            # clear before looking: ``settle`` marks done and wakes without this lock, so a wake-up
            # landing after the look is kept, not wiped
            wake.clear()
            if all(m.done for m in mine):
                return False
            timeout = None
            if not self._busy and self._line.members and self._line.members[0].wake is wake:
                timeout = self._line.wait_for()
                if timeout <= 0:
                    self._busy = True
                    self._taker = wake
                    return True
        wake.wait(timeout)
        return False

    def _lead(self) -> None:
        """Take a group (this caller's member at its head) and run it; ``_busy`` is set. Interrupted
        before it took its group, it leaves ``_busy`` to ``submit_many``'s handler (``_taker``)."""
        group: list[Member[T]] = []
        held = False  # the resource, before a group owns it
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._line.served(len(group))
            if self._resource is not None:
                self._resource.release()
            with self._lock:
                self._busy = False
                self._nudge()

        outcomes: list[Any] = []
        try:
            if self._resource is not None:
                self._resource.acquire()
                held = True
            with self._lock:
                self._line.take(group)
                self._taker = None  # _busy is the group's now: release() clears it
                self.groups += 1
                self.calls += len(group)
            outcomes = self._run([m.item for m in group], release)
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
        except BaseException as exc:  # a bug or an interrupt in the leader: its own calls get it
            if not group:
                raise  # nothing taken: submit_many's handler hands the turn on
            lost = GroupLeaderFailed(
                f"the thread that ran this call in a group with its own failed ({type(exc).__name__}) "
                "before it could report this call's outcome: a write may or may not have taken "
                "effect; a read can be retried"
            )
            leader = group[0].wake
            outcomes = [exc if m.wake is leader else lost for m in group]
        finally:
            if group:
                release()
                for member, outcome in zip(group, outcomes or [None] * len(group), strict=True):
                    settle(member, outcome)
            elif held and self._resource is not None:
                self._resource.release()
        if self._then is not None:
            self._then()


def each_alone(run: Callable[[T], R], items: Iterable[T]) -> list[R | Exception]:
    """``run`` on each item by itself, its exception as its outcome: after a group failed, so
    that an error lands on the member that caused it and the others succeed."""
    out: list[R | Exception] = []
    for item in items:
        try:
            out.append(run(item))
        except Exception as exc:
            out.append(exc)
    return out
