"""``hivemem.infra.grouping``: the leader/follower primitive of the engine's queue, grouped adds and the
group commit, on its own: groups, outcomes, an interrupted waiting call (it must leave the line,
not block everyone behind it), a leader that takes a lock first, and the waiting rule."""

from __future__ import annotations

import threading
import time

import pytest

from hivemem.errors import GroupLeaderFailed, HivememError
from hivemem.infra.grouping import Combiner, Line, Member, Wake, each_alone, settle

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _runner(seen: list[list[str]], gate: threading.Event):
    def run(items: list[str], release) -> list:  # type: ignore[no-untyped-def]
        seen.append(list(items))
        if len(seen) == 1:
            assert gate.wait(30)  # the first group holds the line until the test lets it go
        release()
        return [ValueError(i) if i.startswith("bad") else i.upper() for i in items]

    return run


def _start(c: Combiner, items: list[str], out: dict) -> list[threading.Thread]:
    def call(item: str) -> None:
        try:
            out[item] = c.submit(item)
        except BaseException as exc:  # returned to the test
            out[item] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in items]
    for t in threads:
        t.start()
    return threads


def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_calls_that_wait_meanwhile_form_one_group_each_with_its_own_outcome() -> None:
    seen: list[list[str]] = []
    gate = threading.Event()
    c = Combiner(_runner(seen, gate))
    out: dict = {}
    first = _start(c, ["first"], out)
    _wait_for(lambda: seen, "the first call never ran")
    rest = _start(c, ["a", "bad b", "c"], out)
    _wait_for(lambda: len(c) == 3, "the calls never queued")
    gate.set()
    for t in first + rest:
        t.join(30)
    assert sorted(map(sorted, seen)) == [["a", "bad b", "c"], ["first"]]
    assert out["first"] == "FIRST" and out["a"] == "A" and out["c"] == "C"
    assert isinstance(out["bad b"], ValueError)  # raised to its own caller only
    assert (c.groups, c.calls) == (2, 4)


def test_an_interrupted_waiting_call_leaves_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(BaseException):
        pass

    real_wait = Wake.wait

    def wait(self: Wake, timeout: float | None = None) -> bool:
        if threading.current_thread().name == "interrupted":
            raise Interrupted()  # as a KeyboardInterrupt would, while this call waits in line
        return real_wait(self, timeout)

    monkeypatch.setattr(Wake, "wait", wait)
    seen: list[list[str]] = []
    gate = threading.Event()
    c = Combiner(_runner(seen, gate))
    out: dict = {}
    first = _start(c, ["first"], out)
    _wait_for(lambda: seen, "the first call never ran")
    interrupted = threading.Thread(
        target=lambda: out.update(interrupted=_call(c, "interrupted")), name="interrupted"
    )
    interrupted.start()  # the head of the line, then interrupted
    interrupted.join(30)
    rest = _start(c, ["a", "b"], out)
    _wait_for(lambda: len(c) == 2, "the calls never queued")
    gate.set()
    for t in first + rest:
        t.join(30)
    assert isinstance(out["interrupted"], Interrupted)
    assert out["a"] == "A" and out["b"] == "B", out  # nobody waits behind the interrupted call
    assert all("interrupted" not in g for g in seen)


def _call(c: Combiner, item: str) -> object:
    try:
        return c.submit(item)
    except BaseException as exc:  # returned to the test
        return exc


def test_a_leader_with_a_lock_takes_everything_queued_while_it_waited_for_the_lock() -> None:
    """The group commit: whoever takes the write lock next commits all inserts queued meanwhile."""
    lock = threading.Lock()
    seen: list[list[str]] = []
    after: list[str] = []

    def run(items: list[str], release) -> list:  # type: ignore[no-untyped-def]
        assert lock.locked()
        seen.append(list(items))
        return [i.upper() for i in items]

    c = Combiner(run, max_wait_ms=0, lock=lock, then=lambda: after.append("then"))
    out: dict = {}
    with lock:  # another writer holds it
        threads = _start(c, [f"w{i}" for i in range(20)], out)
        _wait_for(lambda: len(c) == 20, "the calls never queued")  # the leader still waits for the lock
    for t in threads:
        t.join(30)
    assert len(seen) == 1 and sorted(seen[0]) == sorted(f"w{i}" for i in range(20))
    assert out == {f"w{i}": f"W{i}" for i in range(20)}
    assert after == ["then"] and not lock.locked()


def test_submit_many_queues_its_items_together_with_one_outcome_each() -> None:
    seen: list[list[str]] = []
    gate = threading.Event()
    gate.set()
    c = Combiner(_runner(seen, gate))
    assert c.submit_many([("x", 1), ("bad y", 1), ("z", 1)])[0::2] == ["X", "Z"]
    (outcome,) = c.submit_many([("bad", 1)])
    assert isinstance(outcome, ValueError)  # returned, not raised
    assert seen == [["x", "bad y", "z"], ["bad"]]


def test_a_failing_leader_fails_its_own_call_and_tells_the_others_their_fate_is_unknown() -> None:
    gate = threading.Event()
    started = threading.Event()

    def run(items: list[str], release) -> list:  # type: ignore[no-untyped-def]
        if items == ["first"]:
            started.set()
            assert gate.wait(30)
            return ["FIRST"]
        raise OSError("the disk went away")

    c = Combiner(run)
    out: dict = {}
    first = _start(c, ["first"], out)
    assert started.wait(30)
    rest = _start(c, ["a", "b", "c"], out)
    _wait_for(lambda: len(c) == 3, "the calls never queued")
    gate.set()
    for t in first + rest:
        t.join(30)
    errors = [out[k] for k in "abc"]
    assert sum(isinstance(e, OSError) for e in errors) == 1  # the leader's own
    lost = [e for e in errors if isinstance(e, GroupLeaderFailed)]
    assert len(lost) == 2 and all(isinstance(e, HivememError) for e in lost)
    assert "OSError" in str(lost[0]) and "may or may not" in str(lost[0])


class Interrupted(BaseException):
    """Stands in for a KeyboardInterrupt landing at one exact step of a caller."""


def _daemon(c: Combiner, item: str, out: dict, name: str | None = None) -> threading.Thread:
    """A call in a daemon thread: on the old code it hung for ever, and must not hang pytest."""
    t = threading.Thread(target=lambda: out.update({item: _call(c, item)}), name=name, daemon=True)
    t.start()
    return t


def test_a_caller_interrupted_just_after_winning_the_turn_hands_it_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The window between ``_wait_turn`` setting ``_busy`` and ``_lead`` taking a group: the turn
    must pass on, or no caller ever leads again (every later call hung)."""
    real_lead = Combiner._lead

    def lead(self: Combiner, *args: object) -> None:
        if threading.current_thread().name == "interrupted":
            raise Interrupted()
        real_lead(self, *args)

    monkeypatch.setattr(Combiner, "_lead", lead)
    seen: list[list[str]] = []
    gate = threading.Event()
    gate.set()
    c = Combiner(_runner(seen, gate))
    out: dict = {}
    _daemon(c, "interrupted", out, name="interrupted").join(30)
    assert isinstance(out["interrupted"], Interrupted)
    later = [_daemon(c, i, out) for i in ("a", "b")]
    for t in later:
        t.join(30)
    assert out["a"] == "A" and out["b"] == "B", out


def test_a_leader_interrupted_as_it_takes_its_group_settles_every_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An interrupt right after the group left the line, before it runs: the leader gets it, the
    members it took get ``GroupLeaderFailed`` (a ``HivememError``), and later calls still run."""
    real_take = Line.take

    def take(self: Line, *args: object) -> list:  # type: ignore[type-arg]
        group = real_take(self, *args)  # type: ignore[arg-type]
        if threading.current_thread().name == "leader":
            raise Interrupted()
        return group

    monkeypatch.setattr(Line, "take", take)
    seen: list[list[str]] = []
    gate = threading.Event()
    c = Combiner(_runner(seen, gate))
    out: dict = {}
    first = _daemon(c, "first", out)
    _wait_for(lambda: seen, "the first call never ran")
    threads = [_daemon(c, "leader", out, name="leader")]
    _wait_for(lambda: len(c) == 1, "the leader never queued")  # the head of the next group
    threads += [_daemon(c, i, out) for i in ("a", "b")]
    _wait_for(lambda: len(c) == 3, "the calls never queued")
    gate.set()
    for t in [first, *threads]:
        t.join(30)
    assert isinstance(out["leader"], Interrupted), out
    assert all(isinstance(out[i], GroupLeaderFailed) for i in "ab"), out
    _daemon(c, "later", out).join(30)
    assert out["later"] == "LATER", out


def test_a_set_landing_while_wait_returns_does_not_break_the_wake() -> None:
    """``Wake.wait`` acquires, then releases to stay set; a ``set`` from another thread in between
    already released it: a bare release raised "release unlocked lock"."""
    wake = Wake()
    real = wake._lock

    class SetInBetween:  # the lock, with another thread's set() right after each acquire
        def acquire(self, *args: object) -> bool:
            got = real.acquire(*args)
            if got:
                real.release()
            return got

        def release(self) -> None:
            real.release()

        def locked(self) -> bool:
            return real.locked()

    wake._lock = SetInBetween()  # type: ignore[assignment]
    wake.set()
    assert wake.wait(0) is True and wake.is_set()


def test_a_settle_landing_before_the_wake_is_cleared_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``settle`` marks a member done and wakes its caller without the combiner's lock; a caller
    that looked at ``done`` and then cleared its wake lost that wake-up and slept for ever."""
    seen: list[list[str]] = []
    gate = threading.Event()
    c = Combiner(_runner(seen, gate))
    real_clear = Wake.clear
    settled: list[str] = []

    def clear(self: Wake) -> None:
        if threading.current_thread().name == "follower" and not settled:
            for m in list(c._line.members):  # as a group taking it and settling it right now
                if m.wake is self:
                    c._line.remove(m)
                    settle(m, "SETTLED")
                    settled.append(m.item)
        real_clear(self)

    monkeypatch.setattr(Wake, "clear", clear)
    out: dict = {}
    first = _daemon(c, "first", out)
    _wait_for(lambda: seen, "the first call never ran")
    follower = _daemon(c, "follower", out, name="follower")
    follower.join(30)  # the first group still holds the line: only the settle can wake it
    assert out.get("follower") == "SETTLED", out
    gate.set()
    first.join(30)
    assert out["first"] == "FIRST"


def test_the_line_waits_for_everyone_around_last_time_and_no_longer_than_max_wait() -> None:
    line: Line[str] = Line(max_wait_ms=50, max_size=4)
    line.put([Member("lone")])
    assert line.wait_for() <= 0  # a lone sequential caller never waits
    assert [m.item for m in line.take()] == ["lone"]
    line.put([Member("waiting")])
    line.served(3)  # a group of three left, one waits: wait for all four
    assert 0 < line.wait_for() <= 0.05
    line.put([Member("a"), Member("b")])
    assert line.wait_for() > 0
    line.put([Member("c")])
    assert line.wait_for() <= 0  # everyone is back
    assert [m.item for m in line.take()] == ["waiting", "a", "b", "c"]
    line.put([Member("big", 3)])
    line.served(5)
    line.put([Member("d", 2)])
    assert line.wait_for() <= 0  # a full group waits: no need to wait for more
    assert [m.item for m in line.take()] == ["big"] and line.units == 2  # the rest does not fit
    time.sleep(0.06)
    assert line.wait_for() <= 0  # max_wait has passed


def test_each_alone_gives_each_item_its_own_outcome() -> None:
    def run(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x * 10

    out = each_alone(run, [1, 2, 3])
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], ValueError)
