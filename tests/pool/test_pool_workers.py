"""WorkerPool against real worker processes and threads: warm reuse, streaming, errors, crashes."""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import threading
import time
from collections import Counter

import pool_agents
import pytest

from hivemem.pool import CallTimeout, PoolClosed, RemoteError, WorkerCrashed, WorkerInitError, WorkerPool
from hivemem.pool.failures import RemoteTraceback

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

KINDS = ["process", "thread"]


def _busy_pid(pool: WorkerPool, deadline_s: float = 20.0) -> int:
    """The pid of a worker that is running a call (waits for the call to start)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for w in pool.stats()["workers"]:
            if w["busy"] and w["pid"]:
                return w["pid"]
        time.sleep(0.01)
    raise AssertionError("no worker became busy")


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); read its state. A killed process with threads (a worker
    # runs its parent-watch thread) shows its first thread as a zombie while the others are still
    # exiting, and its files (the pipe to the pool) close only when the last one has: wait for that.
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().split(")")[-1].split()[0] == "Z"
        return zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def test_factory_runs_once_per_process_worker(tmp_path):
    with WorkerPool(functools.partial(pool_agents.make_agent, str(tmp_path)), size=3) as pool:
        futures = [pool.submit(pool_agents.whoami, 0.002) for _ in range(60)]
        replies = [f.result(timeout=30) for f in futures]
        pool.wait_ready(timeout=30)  # the last worker may still be starting if two did all the work
        stats = pool.stats()
    marker_pids = {int(p.name.split("-")[0]) for p in tmp_path.iterdir()}
    assert len(list(tmp_path.iterdir())) == 3  # the factory ran exactly `size` times
    assert {pid for pid, _, _ in replies} <= marker_pids
    per_obj = Counter((pid, obj) for pid, obj, _ in replies)
    # each object counted its own calls: the highest count seen equals the calls it served
    assert max(c for _, _, c in replies) == max(per_obj.values())
    assert sum(per_obj.values()) == 60
    assert stats["factory_runs"] == 3 and stats["calls"] == 60
    assert {w["pid"] for w in stats["workers"]} == marker_pids
    assert all(w["rss_bytes"] and w["rss_bytes"] > 0 for w in stats["workers"])


def test_thread_kind_builds_one_object_per_thread(tmp_path):
    with WorkerPool(functools.partial(pool_agents.make_agent, str(tmp_path)), size=4, kind="thread") as pool:
        pool.wait_ready(timeout=10)
        replies = [
            f.result(timeout=30) for f in [pool.submit(pool_agents.thread_identity, 0.01) for _ in range(40)]
        ]
        stats = pool.stats()
    objects_by_thread: dict[int, set[int]] = {}
    for thread, obj in replies:
        objects_by_thread.setdefault(thread, set()).add(obj)
    assert all(len(objs) == 1 for objs in objects_by_thread.values())
    assert len({obj for _, obj in replies}) == len(objects_by_thread)  # no object shared by two threads
    assert threading.get_ident() not in objects_by_thread
    assert len(list(tmp_path.iterdir())) == 4 and stats["factory_runs"] == 4 and stats["calls"] == 40


@pytest.mark.parametrize("kind", KINDS)
def test_stream_delivers_items_as_they_are_produced(kind, tmp_path):
    flag = tmp_path / "got-first"
    with WorkerPool(pool_agents.make_agent, size=1, kind=kind) as pool:
        stream = pool.stream(pool_agents.wait_for_file, str(flag), timeout=30)
        assert next(stream) == "first"  # arrives while the generator is still running
        flag.touch()
        assert list(stream) == ["second"]
        assert list(pool.stream(pool_agents.count_up, 5)) == [0, 1, 2, 3, 4]
        # submit() of a generator function collects its items
        assert pool.submit(pool_agents.count_up, 3).result(timeout=10) == [0, 1, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_closing_a_stream_stops_the_generator(kind, tmp_path):
    log = tmp_path / "produced"
    with WorkerPool(pool_agents.make_agent, size=1, kind=kind) as pool:
        with pool.stream(pool_agents.produce_logged, str(log), 500, 0.02) as stream:
            assert [next(stream) for _ in range(3)] == [0, 1, 2]
        # size=1: this call runs only after the stream's generator stopped
        assert pool.submit(pool_agents.add, 1, 2).result(timeout=30) == 3
    assert len(log.read_text().split()) < 500


@pytest.mark.parametrize("kind", KINDS)
def test_async_run_and_astream(kind, tmp_path):
    flag = tmp_path / "got-first"

    async def main():
        with WorkerPool(pool_agents.make_agent, size=2, kind=kind) as pool:
            sums = await asyncio.gather(*(pool.run(pool_agents.add, i, i) for i in range(10)))
            items = []
            async for item in pool.astream(pool_agents.wait_for_file, str(flag), timeout=30):
                items.append(item)
                flag.touch()
            with pytest.raises(ZeroDivisionError):
                await pool.run(pool_agents.divide_by_zero)
            return sums, items

    sums, items = asyncio.run(main())
    assert sums == [2 * i for i in range(10)]
    assert items == ["first", "second"]


@pytest.mark.parametrize("kind", KINDS)
def test_exceptions_keep_their_type_and_message(kind):
    with WorkerPool(pool_agents.make_agent, size=1, kind=kind) as pool:
        with pytest.raises(ValueError, match="bad input 42") as info:
            pool.call(pool_agents.raise_value_error, "bad input 42")
        if kind == "process":
            assert isinstance(info.value.__cause__, RemoteTraceback)
            assert "raise_value_error" in info.value.__cause__.tb
            with pytest.raises(RemoteError, match=r"pool_agents\.Unpicklable: x/y"):
                pool.call(pool_agents.raise_unpicklable)
        with pytest.raises(TypeError, match="needs a function that returns an iterable"):
            list(pool.stream(pool_agents.not_iterable))
        with pytest.raises(TypeError):
            pool.call(pool_agents.add, 1, "x")
        assert pool.call(pool_agents.add, 2, 3) == 5  # the worker survived all of that


def test_kill_9_mid_call_fails_that_call_and_pool_keeps_serving(tmp_path):
    with WorkerPool(functools.partial(pool_agents.make_agent, str(tmp_path)), size=2) as pool:
        pool.wait_ready(timeout=30)
        doomed = pool.submit(pool_agents.sleep, 60)
        victim = _busy_pid(pool)
        os.kill(victim, signal.SIGKILL)
        exc = doomed.exception(timeout=30)
        assert isinstance(exc, WorkerCrashed)
        assert exc.pid == victim and exc.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(exc) and "sleep" in str(exc)
        # the pool keeps serving, with a replacement worker
        pids = {pool.call(pool_agents.sleep, 0.01, timeout=30) for _ in range(10)}
        stats = pool.stats()
        assert victim not in pids
        assert stats["factory_runs"] == 3 and sum(w["crashes"] for w in stats["workers"]) == 1
        assert victim not in {w["pid"] for w in stats["workers"]}
    assert len(list(tmp_path.iterdir())) == 3


def test_worker_killed_while_idle_is_replaced_before_the_next_call():
    with WorkerPool(pool_agents.make_agent, size=1) as pool:
        first = pool.call(pool_agents.sleep, 0)
        os.kill(first, signal.SIGKILL)
        while not _pid_gone(first):
            time.sleep(0.01)
        assert pool.call(pool_agents.sleep, 0, timeout=30) != first


def test_timeout_kills_and_replaces_a_process_worker():
    with WorkerPool(pool_agents.make_agent, size=1) as pool:
        pid = pool.call(pool_agents.sleep, 0)
        with pytest.raises(CallTimeout, match=r"longer than 0\.3 s"):
            pool.call(pool_agents.sleep, 60, timeout=0.3)
        assert isinstance(CallTimeout("x"), TimeoutError)
        new_pid = pool.call(pool_agents.sleep, 0, timeout=30)
        assert new_pid != pid and _pid_gone(pid)
        assert pool.stats()["workers"][0]["timeouts"] == 1


def test_timeout_in_a_thread_worker_abandons_the_call():
    with WorkerPool(pool_agents.make_agent, size=1, kind="thread") as pool:
        with pytest.raises(CallTimeout):
            pool.call(pool_agents.sleep, 1.0, timeout=0.1)
        assert pool.call(pool_agents.add, 1, 1) == 2


def test_unpicklable_work_is_refused_before_dispatch():
    with WorkerPool(pool_agents.make_agent, size=1) as pool:
        with pytest.raises(TypeError, match=r"cannot send .*lambda"):
            pool.submit(lambda agent: 1)
        with pytest.raises(TypeError, match="cannot send add and its arguments"):
            pool.submit(pool_agents.add, threading.Lock(), 1)
        assert pool.stats()["calls"] == 0  # nothing was dispatched
        assert pool.call(pool_agents.add, 1, 1) == 2
    with pytest.raises(TypeError, match="cannot send the factory"):
        WorkerPool(lambda: object(), size=1)
    # threads need no pickling
    with WorkerPool(lambda: 10, size=1, kind="thread") as pool:
        assert pool.call(lambda obj, x: obj + x, 5) == 15


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="size"):
        WorkerPool(pool_agents.make_agent, size=0)
    with pytest.raises(ValueError, match="kind"):
        WorkerPool(pool_agents.make_agent, size=1, kind="green")
    with pytest.raises(TypeError, match="factory must be callable"):
        WorkerPool(None, size=1)
    with pytest.raises(ValueError, match="fork"):
        WorkerPool(pool_agents.make_agent, size=1, start_method="fork")
    with (
        WorkerPool(pool_agents.make_agent, size=1, kind="thread") as pool,
        pytest.raises(ValueError, match="timeout"),
    ):
        pool.submit(pool_agents.add, 1, 2, timeout=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_failing_factory_fails_calls_clearly(kind):
    with WorkerPool(pool_agents.failing_factory, size=1, kind=kind) as pool:
        with pytest.raises(WorkerInitError, match="disk on fire"):
            pool.wait_ready(timeout=30)
        with pytest.raises(WorkerInitError, match="disk on fire"):
            pool.call(pool_agents.add, 1, 1, timeout=30)


def test_close_stops_workers_and_refuses_new_calls():
    pool = WorkerPool(pool_agents.make_agent, size=2)
    pids = {pool.call(pool_agents.sleep, 0.05) for _ in range(6)} | {
        w["pid"] for w in pool.stats()["workers"]
    }
    queued = [pool.submit(pool_agents.add, i, 1) for i in range(5)]
    pool.close()
    assert [f.result() for f in queued] == [1, 2, 3, 4, 5]  # queued work finished first
    assert all(_pid_gone(pid) for pid in pids)
    with pytest.raises(PoolClosed):
        pool.submit(pool_agents.add, 1, 1)
    pool.close()  # idempotent


def test_close_can_cancel_pending_calls():
    pool = WorkerPool(pool_agents.make_agent, size=1, kind="thread")
    running = pool.submit(pool_agents.sleep, 0.3)
    _busy_pid(pool)
    queued = [pool.submit(pool_agents.add, i, 1) for i in range(5)]
    pool.close(cancel_pending=True)
    assert running.result() == os.getpid()
    assert all(f.cancelled() for f in queued)


def test_a_dropped_pool_stops_its_workers():
    pool = WorkerPool(pool_agents.make_agent, size=2)
    pool.wait_ready(timeout=30)
    pids = {w["pid"] for w in pool.stats()["workers"]}
    threads = [slot.thread for slot in pool._slots]
    del pool
    gc.collect()
    for thread in threads:
        thread.join(timeout=20)
    assert all(_pid_gone(pid) for pid in pids)
