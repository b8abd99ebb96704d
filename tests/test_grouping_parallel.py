"""``grouping.Combiner(parallel=N)``: up to N groups run at once, each led by its own caller (the
grouped searches of one SQLite store run two at once: ``hivemem.memory.searching``). Each call
still gets its own outcome, never more than N groups run, and a caller interrupted as it was
about to lead hands its turn on, whichever of the N turns it held."""

from __future__ import annotations

import threading
import time

import pytest

from hivemem.infra.grouping import Combiner

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


class Interrupted(BaseException):
    """Stands in for a KeyboardInterrupt landing at one exact step of a caller."""


def _call(c: Combiner, item: str) -> object:
    try:
        return c.submit(item)
    except BaseException as exc:  # returned to the test
        return exc


def _daemon(c: Combiner, item: str, out: dict, name: str | None = None) -> threading.Thread:
    """A call in a daemon thread: a combiner that lost a turn hangs for ever, not pytest."""
    t = threading.Thread(target=lambda: out.update({item: _call(c, item)}), name=name, daemon=True)
    t.start()
    return t


def _wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def _idle(c: Combiner) -> bool:
    return c._running == 0 and not c._takers and len(c) == 0


def test_two_groups_run_at_once_and_the_rest_queue_each_call_with_its_own_outcome() -> None:
    seen: list[list[str]] = []
    gate = threading.Event()

    def run(items: list[str], release) -> list:  # type: ignore[no-untyped-def]
        seen.append(list(items))
        if len(seen) <= 2:
            assert gate.wait(30)  # the first two groups hold their turns until the test lets go
        return [ValueError(i) if i.startswith("bad") else i.upper() for i in items]

    c = Combiner(run, max_wait_ms=0, parallel=2)
    out: dict = {}
    first = _daemon(c, "first", out)
    _wait_for(lambda: len(seen) == 1, "the first call never ran")
    second = _daemon(c, "second", out)
    _wait_for(lambda: len(seen) == 2, "the second call did not run beside the first")
    rest = [_daemon(c, i, out) for i in ("a", "bad b", "c")]
    _wait_for(lambda: len(c) == 3, "the calls never queued")
    assert len(seen) == 2  # no third group while two run
    gate.set()
    for t in [first, second, *rest]:
        t.join(30)
    assert sorted(map(sorted, seen)) == [["a", "bad b", "c"], ["first"], ["second"]]
    assert out["first"] == "FIRST" and out["second"] == "SECOND"
    assert out["a"] == "A" and out["c"] == "C" and isinstance(out["bad b"], ValueError), out
    assert (c.groups, c.calls) == (3, 5) and _idle(c)


def test_many_threads_never_run_more_groups_than_parallel_and_each_gets_its_own_outcome() -> None:
    running, most, lock = [0], [0], threading.Lock()

    def run(items: list[str], release) -> list:  # type: ignore[no-untyped-def]
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.0005)  # the GIL let go, as SQLite's steps do
        with lock:
            running[0] -= 1
        return [ValueError(i) if i.endswith("7") else i.upper() for i in items]

    c = Combiner(run, max_wait_ms=0, max_size=8, parallel=2)
    results: dict[str, object] = {}

    def caller(k: int) -> None:
        for j in range(40):
            item = f"t{k}-{j}"
            results[item] = _call(c, item)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 16 * 40 and most[0] <= 2
    for item, outcome in results.items():
        if item.endswith("7"):
            assert isinstance(outcome, ValueError) and outcome.args == (item,), (item, outcome)
        else:
            assert outcome == item.upper(), (item, outcome)
    assert c.calls == 16 * 40 and _idle(c)


def test_callers_interrupted_just_after_winning_each_turn_hand_them_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two callers, each interrupted between winning a turn and taking its group: if either turn
    stayed taken, the two turns of ``parallel=2`` were gone and every later call hung."""
    real_lead = Combiner._lead

    def lead(self: Combiner, *args: object) -> None:
        if threading.current_thread().name.startswith("interrupted"):
            raise Interrupted()
        real_lead(self, *args)

    monkeypatch.setattr(Combiner, "_lead", lead)
    c = Combiner(lambda items, release: [i.upper() for i in items], max_wait_ms=0, parallel=2)
    out: dict = {}
    for name in ("interrupted 1", "interrupted 2"):
        _daemon(c, name, out, name=name).join(30)
        assert isinstance(out[name], Interrupted)
    later = [_daemon(c, i, out) for i in ("a", "b", "c")]
    for t in later:
        t.join(30)
    assert (out.get("a"), out.get("b"), out.get("c")) == ("A", "B", "C"), out
    assert _idle(c)


def test_parallel_must_be_positive() -> None:
    with pytest.raises(ValueError, match="parallel"):
        Combiner(lambda items, release: items, parallel=0)
