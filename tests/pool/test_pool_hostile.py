"""Hostile user code in a ``WorkerPool`` (the standing module of issue 9 for the pool part).

A pooled call runs code the pool does not control. Whatever it raises, exits with or hangs in, it
must cost that one call only: the caller gets a ``PoolError`` subclass (never a ``SystemExit`` or
``KeyboardInterrupt`` of its own), the worker is replaced, and the pool keeps serving.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pool_agents
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem.errors import WorkerExited
from hivemem.pool import PoolError, WorkerInitError, WorkerPool

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

KINDS = ["process", "thread"]
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


# -- defect 2: sys.exit() and other BaseExceptions in user code -------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sys_exit_fails_one_call_and_the_worker_is_replaced(kind: str) -> None:
    with WorkerPool(pool_agents.make_agent, size=1, kind=kind) as pool:
        before = pool.call(pool_agents.whoami, timeout=60)
        with pytest.raises(WorkerExited, match=r"exit code 3") as err:
            pool.call(pool_agents.exit_with, 3, timeout=60)
        assert err.value.exitcode == 3
        assert isinstance(err.value, PoolError)
        with pytest.raises(WorkerExited, match=r"exit code 1 \('bye'\)"):
            pool.call(pool_agents.exit_with, "bye", timeout=60)
        with pytest.raises(WorkerExited, match="exit code 0"):
            pool.call(pool_agents.exit_with, None, timeout=60)
        for name in ("KeyboardInterrupt", "GeneratorExit", "Custom"):
            with pytest.raises(WorkerExited, match=name):
                pool.call(pool_agents.raise_base, name, timeout=60)
        with pytest.raises(WorkerExited, match="exit code 4"):
            list(pool.stream(pool_agents.stream_then_exit, 4, timeout=60))
        after = pool.call(pool_agents.whoami, timeout=60)
        # a fresh object (replaced worker): its call count starts again at 1 (the first one's would be 2;
        # ids of objects are no proof: a new worker may well allocate its object at the same address)
        assert before[2] == 1 and after[2] == 1
        if kind == "process":
            assert after[0] != before[0]
        assert pool.stats()["factory_runs"] == 8  # the first + one replacement per exit


@pytest.mark.parametrize("kind", KINDS)
def test_async_callers_get_the_pool_error(kind: str) -> None:
    import asyncio

    async def main() -> None:
        with WorkerPool(pool_agents.make_agent, size=1, kind=kind) as pool:
            with pytest.raises(WorkerExited):
                await pool.run(pool_agents.exit_with, 5, timeout=60)
            with pytest.raises(WorkerExited):
                async for _ in pool.astream(pool_agents.stream_then_exit, 6, timeout=60):
                    pass
            assert await pool.run(pool_agents.add, 1, 2, timeout=60) == 3

    asyncio.run(main())


base_exceptions = st.one_of(
    st.builds(SystemExit, st.one_of(st.none(), st.integers(-(2**40), 2**40), st.text(max_size=20))),
    st.builds(KeyboardInterrupt, st.text(max_size=10)),
    st.builds(GeneratorExit),
    st.builds(pool_agents.CustomBase, st.text(max_size=10)),
    st.builds(ValueError, st.text(max_size=10)),
    st.builds(RuntimeError, st.integers()),
)


def _raise(agent: object, exc: BaseException) -> None:
    raise exc


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(exc=base_exceptions)
def test_whatever_user_code_raises_the_caller_gets_an_exception(
    thread_pool: WorkerPool, exc: BaseException
) -> None:
    """Thread kind, so Hypothesis can throw any object: the caller only ever sees an ``Exception``,
    the user's own ``Exception`` unchanged, anything else as ``WorkerExited``; the pool serves on."""
    with pytest.raises(Exception) as err:
        thread_pool.call(_raise, exc, timeout=60)
    if isinstance(exc, Exception):
        assert err.value is exc
    else:
        assert isinstance(err.value, WorkerExited) and err.value.__cause__ is exc
    assert thread_pool.call(pool_agents.add, 2, 2, timeout=60) == 4


@pytest.fixture(scope="module")
def thread_pool():
    with WorkerPool(pool_agents.make_agent, size=2, kind="thread") as pool:
        yield pool


# -- item 8: a factory that heals, a factory that hangs ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_once_the_factory_is_fixed_the_next_call_of_every_worker_succeeds(kind: str, tmp_path: Path) -> None:
    """The factory runs again when a call arrives; that call gets the fresh outcome, never the
    error of an earlier attempt (each worker's first call after the fix used to fail)."""
    flag = tmp_path / "model-downloaded"
    with WorkerPool(functools.partial(pool_agents.healing_factory, str(flag)), size=2, kind=kind) as pool:
        with pytest.raises(WorkerInitError, match="not ready"):
            pool.wait_ready(timeout=60)
        with pytest.raises(WorkerInitError, match="not ready"):
            pool.call(pool_agents.add, 1, 1, timeout=60)
        flag.touch()
        futures = [pool.submit(pool_agents.whoami, 0.5, timeout=60) for _ in range(2)]
        replies = [f.result(timeout=60) for f in futures]
        assert len({(pid, obj) for pid, obj, _ in replies}) == 2  # both workers served, both healed
        pool.wait_ready(timeout=60)  # no stale error left behind either


def _stuck_pool(kind: str, release: threading.Event) -> WorkerPool:
    if kind == "process":
        return WorkerPool(functools.partial(pool_agents.hanging_factory, 3600.0), size=2)
    return WorkerPool(lambda: release.wait(600) and pool_agents.Agent(), size=2, kind="thread")


@pytest.mark.parametrize("kind", KINDS)
def test_close_cancel_pending_does_not_wait_for_a_hanging_factory(kind: str) -> None:
    release = threading.Event()
    pool = _stuck_pool(kind, release)
    try:
        queued = [pool.submit(pool_agents.add, i, 1) for i in range(4)]
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while kind == "process" and len(pids) < 2 and time.monotonic() < deadline:
            pids = {w["pid"] for w in pool.stats()["workers"] if w["pid"]}
            time.sleep(0.01)
        closer = threading.Thread(target=pool.close, kwargs={"cancel_pending": True}, daemon=True)
        closer.start()
        closer.join(60)  # a hang guard, not a timing claim: the old code waited for the factory forever
        assert not closer.is_alive(), "close(cancel_pending=True) waited for a hanging factory"
        assert all(f.cancelled() for f in queued)
        assert all(_gone(pid) for pid in pids)
        with pytest.raises(PoolError):
            pool.submit(pool_agents.add, 1, 1)
    finally:
        release.set()  # lets the thread kind's factory return, so no thread outlives the test


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] == "Z"


# -- defect 9: a script without `if __name__ == "__main__":` ----------------------------------------

NO_GUARD = """
import sys
sys.path.insert(0, {here!r})
import pool_agents
from hivemem.pool import WorkerInitError, WorkerPool

pool = WorkerPool(pool_agents.make_agent, size=2, start_method={method!r})  # no main guard
try:
    print("result", pool.call(pool_agents.add, 1, 2, timeout=600))
except WorkerInitError as exc:
    print("WorkerInitError:", exc)
pool.close()
"""


@pytest.mark.parametrize("method", [None, "spawn"], ids=["forkserver", "spawn"])
def test_a_script_without_a_main_guard_gets_a_clear_error(tmp_path: Path, method: str | None) -> None:
    """Every worker re-imports the main module, which starts a pool again: the caller used to wait
    forever while multiprocessing printed tracebacks. Now: WorkerInitError naming the fix."""
    script = tmp_path / "agent_script.py"
    script.write_text(NO_GUARD.format(here=str(HERE), method=method))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers too can be killed if it hangs
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        out, err = proc.communicate(timeout=120)  # a hang guard, not a timing claim
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a pool in a script without a main guard hung")
    assert "WorkerInitError:" in out, (out, err[-3000:])
    assert 'if __name__ == "__main__":' in out and str(script) in out
    assert "bootstrapping phase" not in err  # multiprocessing's own traceback never comes
    assert proc.returncode == 0


DYING_FORKSERVER = """
import multiprocessing, sys
sys.path.insert(0, {here!r})
import pool_agents
from hivemem.pool import WorkerInitError, WorkerPool

if __name__ == "__main__":
    multiprocessing.set_forkserver_preload(["dying_preload"])  # the forkserver dies as it starts
    with WorkerPool(pool_agents.make_agent, size=2, start_method="forkserver") as pool:
        for _ in range(2):
            try:
                print("result", pool.call(pool_agents.add, 1, 2, timeout=600))
            except WorkerInitError as exc:
                print("WorkerInitError:", exc)
"""


def test_a_worker_that_cannot_be_started_fails_calls_instead_of_hanging(tmp_path: Path) -> None:
    """Process.start() raising (here: the forkserver dies) used to kill the slot's thread silently,
    and every call waited forever."""
    script = tmp_path / "dying.py"
    script.write_text(DYING_FORKSERVER.format(here=str(HERE)))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])},  # the forkserver's path
    )
    assert out.stdout.count("WorkerInitError: could not start a worker process") == 2, out
    assert "The forkserver exited while importing the main module" in out.stdout
