"""Admission by permits: at most ``capacity`` texts in flight, first come first served, woken when
room is made, ServiceBusy after ``busy_timeout`` — and no permit leaks when a caller gives up."""

from __future__ import annotations

import asyncio

import pytest

from hivemem.errors import ServiceBusy
from hivemem.service.admission import Admission

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def test_callers_wait_their_turn_in_order_and_a_newcomer_cannot_overtake() -> None:
    async def main() -> list[str]:
        gate = Admission(10, busy_timeout=30)
        order: list[str] = []
        release_first = asyncio.Event()

        async def caller(name: str, n: int, hold: asyncio.Event | None = None) -> None:
            async with gate.permit(n):
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(caller("first", 6, release_first))
        await asyncio.sleep(0)
        second = asyncio.create_task(caller("second", 6))  # does not fit beside the first: waits
        await asyncio.sleep(0)
        small = asyncio.create_task(caller("small", 2))  # would fit, but arrived after "second"
        await asyncio.sleep(0.01)
        assert order == ["first"] and gate.waiting == 2
        release_first.set()
        await asyncio.gather(first, second, small)
        assert gate.in_flight == 0 and gate.waiting == 0
        return order

    assert asyncio.run(main()) == ["first", "second", "small"]


def test_a_full_gate_answers_busy_after_the_timeout_and_leaks_nothing() -> None:
    async def main() -> None:
        gate = Admission(4, busy_timeout=0.05)
        hold = asyncio.Event()

        async def holder() -> None:
            async with gate.permit(4):
                await hold.wait()

        task = asyncio.create_task(holder())
        await asyncio.sleep(0)
        with pytest.raises(ServiceBusy, match=r"stayed full for 0\.05 s"):
            async with gate.permit(1):
                pass
        waiter = asyncio.create_task(gate.acquire(2))  # a caller that goes away while waiting
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        hold.set()
        await task
        assert (gate.in_flight, gate.waiting) == (0, 0)
        async with gate.permit(4):  # the whole capacity is free again
            assert gate.in_flight == 4

    asyncio.run(main())


def test_a_request_larger_than_the_capacity_runs_alone_and_zero_timeout_never_waits() -> None:
    async def main() -> None:
        gate = Admission(4, busy_timeout=0)
        async with gate.permit(100):  # admitted: nothing else in flight
            assert gate.in_flight == 100
            with pytest.raises(ServiceBusy):
                await gate.acquire(1)
        assert gate.in_flight == 0
        unlimited = Admission(None, busy_timeout=0)
        async with unlimited.permit(10**6), unlimited.permit(10**6):
            assert unlimited.in_flight == 2 * 10**6

    asyncio.run(main())
