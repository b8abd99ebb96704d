"""Issue 26 (7): processes started by user code die with their worker. Each process worker runs in
its own session and process group; the pool kills the whole group when the worker goes — after a
call timeout, a worker crash and ``pool.close()``. Real worker processes, a real forked child that
hangs for ten minutes; afterwards no process of it may be left (alive under pid 1)."""

from __future__ import annotations

import os
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
