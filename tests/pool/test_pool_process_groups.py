"""Issue 26 (7): processes started by user code die with their worker. Each process worker runs in
its own session and process group; the pool kills the whole group when the worker goes — after a
call timeout, a worker crash and ``pool.close()``. Real worker processes, a real forked child that
hangs for ten minutes; afterwards no process of it may be left (alive under pid 1)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pool_agents
import pytest

from hivemem.pool import CallTimeout, WorkerCrashed, WorkerPool


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for pid 1 to reap it is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _gone(pid: int, wait_s: float = 60) -> bool:
    """Whether ``pid`` is dead, waiting for it at most ``wait_s`` (no speed is asserted)."""
    deadline = time.monotonic() + wait_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _child(pid_file: Path) -> int:
    return int(pid_file.read_text())


@pytest.mark.parametrize("case", ["timeout", "crash", "close"])
def test_children_of_user_code_die_with_their_worker(tmp_path: Path, case: str) -> None:
    pid_file = tmp_path / "child.pid"
    pool = WorkerPool(pool_agents.make_agent, size=1, kind="process")
    try:
        if case == "timeout":
            with pytest.raises(CallTimeout):
                pool.call(pool_agents.fork_then, str(pid_file), "hang", timeout=5)
        elif case == "crash":
            with pytest.raises(WorkerCrashed):
                pool.call(pool_agents.fork_then, str(pid_file), "crash", timeout=60)
        else:
            child = pool.call(pool_agents.fork_then, str(pid_file), "return", timeout=60)
            assert child == _child(pid_file) and _alive(child)  # the worker serves on: it lives
        child = _child(pid_file)
        if case != "close":
            assert _gone(child), f"the user's child {child} outlived its worker ({case})"
            # the replacement worker serves, in a group of its own
            pid = pool.call(pool_agents.whoami, timeout=60)[0]
            assert os.getpgid(pid) == pid
    finally:
        pool.close()
    assert _gone(child), f"the user's child {child} outlived pool.close()"


_DRIVER = """
import sys
import pool_agents
from hivemem.pool import WorkerPool

if __name__ == "__main__":
    pool = WorkerPool(pool_agents.make_agent, size=1, kind="process", start_method=sys.argv[2])
    pool.call(pool_agents.note_then_hang, sys.argv[1], timeout=600)
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_driver_killed_with_sigkill_takes_its_hung_worker_and_forkserver_along(
    tmp_path: Path, method: str
) -> None:
    """The driver (the process that owns the pool) dies by ``kill -9`` while its worker hangs in
    user code: the worker, the child the user's code forked and the forkserver the worker came
    from (``spawn``: none) all exit (they run outside the driver's process group, so the kill
    does not reach them). Before the fix they all lived on, under pid 1."""
    driver, pids = tmp_path / "driver.py", tmp_path / "pids"
    driver.write_text(_DRIVER)
    here = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(driver), str(pids), method], env=env, cwd=tmp_path)
    left: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not pids.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the worker never started its call"
            time.sleep(0.05)
        worker, parent, child = (int(p) for p in pids.read_text().split())
        assert (parent == proc.pid) == (method == "spawn")  # else the parent is the forkserver
        left = [worker, child] + ([parent] if method == "forkserver" else [])
        assert all(_alive(p) for p in left)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 60  # generous: no speed is asserted
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [p for p in left if _alive(p)]
        assert not alive, f"outlived the driver: {alive} (worker, user's child, forkserver: {left})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        for pid in left:  # on failure, nothing of it may outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
