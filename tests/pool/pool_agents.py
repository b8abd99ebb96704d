"""Module-level factories and functions the pool tests send to real worker processes.

(Process workers import functions by module and name, so they cannot live inside the tests.)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Agent:
    def __init__(self, marker_dir: str | None = None) -> None:
        self.pid = os.getpid()
        self.thread = threading.get_ident()
        self.calls = 0
        if marker_dir is not None:  # one file per factory run, so the test can count them
            Path(marker_dir, f"{self.pid}-{self.thread}-{time.monotonic_ns()}").touch()


def make_agent(marker_dir: str | None = None) -> Agent:
    return Agent(marker_dir)


def failing_factory() -> Agent:
    raise RuntimeError("cannot load the model: disk on fire")


def whoami(agent: Agent, delay: float = 0.0) -> tuple[int, int, int]:
    """(pid, id of the worker's object, calls this object has served)."""
    agent.calls += 1
    if delay:
        time.sleep(delay)
    return agent.pid, id(agent), agent.calls


def thread_identity(agent: Agent, delay: float) -> tuple[int, int]:
    time.sleep(delay)
    return threading.get_ident(), id(agent)


def add(agent: Agent, a: Any, b: Any) -> Any:
    return a + b


def sleep(agent: Agent, seconds: float) -> int:
    time.sleep(seconds)
    return agent.pid


def raise_value_error(agent: Agent, message: str) -> None:
    raise ValueError(message)


class Unpicklable(Exception):
    """Can be pickled but not rebuilt (``__init__`` takes two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable(agent: Agent) -> None:
    raise Unpicklable("x", "y")


def count_up(agent: Agent, n: int) -> Iterator[int]:
    yield from range(n)


def wait_for_file(agent: Agent, path: str) -> Iterator[str]:
    """Yield one item, then wait until the caller proves it received it (by creating ``path``)."""
    yield "first"
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            yield "never-saw-the-file"
            return
        time.sleep(0.01)
    yield "second"


def produce_logged(agent: Agent, log: str, n: int, delay: float) -> Iterator[int]:
    """Yield ``n`` items, appending each to ``log`` so the test can see where production stopped."""
    for i in range(n):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        yield i
        time.sleep(delay)


def divide_by_zero(agent: Agent) -> int:
    return 1 // 0


def not_iterable(agent: Agent) -> int:
    return 42


# --- runner -------------------------------------------------------------------------------


def square_item(item: dict[str, Any]) -> int:
    if item.get("fail"):
        raise KeyError(f"item {item['id']} is marked to fail")
    time.sleep(item.get("sleep", 0))
    return item["x"] ** 2


def heal_item(agent: Agent, item: dict[str, Any]) -> int:
    """Fails while the flag file ``item['flag']`` is missing, succeeds once it exists."""
    if not os.path.exists(item["flag"]):
        raise RuntimeError("not yet")
    return item["x"]


def set_result(item: Any) -> set[int]:
    return {1, 2}


def add_one_to_agent_calls(agent: Agent, item: int) -> int:
    agent.calls += 1
    return agent.calls


# --- hostile user code (tests/pool/test_pool_hostile.py) ---------------------------------


def exit_with(agent: Agent, code: Any) -> None:
    import sys

    sys.exit(code)


def raise_base(agent: Agent, name: str) -> None:
    """Raise a BaseException that is not an Exception, by name."""
    kinds = {"KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit, "Custom": CustomBase}
    raise kinds[name]("raised by the agent")


class CustomBase(BaseException):
    """A user-defined BaseException (not an Exception)."""


def stream_then_exit(agent: Agent, code: int) -> Iterator[int]:
    import sys

    yield 1
    sys.exit(code)


def healing_factory(flag: str) -> Agent:
    """Fails until the file ``flag`` exists (a model that is not downloaded yet)."""
    if not os.path.exists(flag):
        raise RuntimeError(f"not ready: {flag} is missing")
    return Agent()


def hanging_factory(seconds: float = 3600.0) -> Agent:
    time.sleep(seconds)
    return Agent()


def fails_for_one_worker(claim: str) -> Agent:
    """Exactly one worker fails (the one that creates the file ``claim`` first): one host lacks a GPU."""
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        time.sleep(0.3)  # the healthy ones take a little longer, as a model load would
        return Agent()
    raise RuntimeError("this worker has no GPU")


def double_item(agent: Agent, item: dict[str, Any]) -> int:
    return 2 * item["x"]


def fork_then(_obj: Any, pid_file: str, then: str) -> int:
    """User code that forks a child which hangs (its pid goes to ``pid_file``), then hangs itself
    (``"hang"``), dies (``"crash"``) or returns the child's pid (``"return"``)."""
    import signal

    child = os.fork()
    if child == 0:  # the user's child: hangs for ten minutes
        try:
            time.sleep(600)
        finally:
            os._exit(0)
    Path(pid_file).write_text(str(child))
    if then == "hang":
        time.sleep(600)
    elif then == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    return child


def note_then_hang(_obj: Any, path: str) -> None:
    """User code that forks a child which hangs, writes ``"worker parent child"`` pids to ``path``
    (whole, by a rename), then hangs itself for ten minutes."""
    child = os.fork()
    if child == 0:
        try:
            time.sleep(600)
        finally:
            os._exit(0)
    Path(path + ".tmp").write_text(f"{os.getpid()} {os.getppid()} {child}")
    os.replace(path + ".tmp", path)
    time.sleep(600)
