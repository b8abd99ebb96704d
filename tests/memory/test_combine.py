"""``hivemem.memory.combine.Combiner`` on its own: groups, outcomes, and a waiting call that is
interrupted (it must leave the line, not block everyone behind it)."""

from __future__ import annotations

import threading
import time

import pytest

from hivemem.memory import combine
from hivemem.memory.combine import Combiner

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
    _wait_for(lambda: len(c._line) == 3, "the calls never queued")
    gate.set()
    for t in first + rest:
        t.join(30)
    assert sorted(map(sorted, seen)) == [["a", "bad b", "c"], ["first"]]
    assert out["first"] == "FIRST" and out["a"] == "A" and out["c"] == "C"
    assert isinstance(out["bad b"], ValueError)  # raised to its own caller only


def test_an_interrupted_waiting_call_leaves_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(BaseException):
        pass

    class _Wake(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            raise Interrupted()  # as a KeyboardInterrupt would, while this call waits in line

    class _Call(combine._Call):
        def __init__(self, item: str, size: int) -> None:
            super().__init__(item, size)
            if item == "interrupted":
                self.wake = _Wake()

    monkeypatch.setattr(combine, "_Call", _Call)
    seen: list[list[str]] = []
    gate = threading.Event()
    c = Combiner(_runner(seen, gate))
    out: dict = {}
    first = _start(c, ["first"], out)
    _wait_for(lambda: seen, "the first call never ran")
    interrupted = _start(c, ["interrupted"], out)  # the head of the line, then interrupted
    interrupted[0].join(30)
    rest = _start(c, ["a", "b"], out)
    _wait_for(lambda: len(c._line) == 2, "the calls never queued")
    gate.set()
    for t in first + rest:
        t.join(30)
    assert isinstance(out["interrupted"], Interrupted)
    assert out["a"] == "A" and out["b"] == "B", out  # nobody waits behind the interrupted call
    assert ["interrupted"] not in seen and all("interrupted" not in g for g in seen)
