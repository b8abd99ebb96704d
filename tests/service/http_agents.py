"""Agents for the streaming-route tests, imported by the service process (``--agent http_agents:…``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def make_agent() -> dict[str, int]:
    return {"pid": os.getpid()}


def gated(agent: dict[str, int], request: dict[str, Any]) -> Iterator[Any]:
    """Yield one item, then wait until the client creates ``request["gate"]`` before the rest.

    A server that buffered the stream would deliver nothing until the generator ends, the client
    would never open the gate, and the last item would say so.
    """
    if request.get("fail"):
        raise ValueError("the agent refused: fail was set")
    yield {"n": 0, "pid": agent["pid"]}
    gate = Path(request["gate"])
    deadline = time.monotonic() + 30
    while not gate.exists():
        if time.monotonic() > deadline:
            yield "gate never opened: the first item was not delivered on its own"
            return
        time.sleep(0.01)
    for n in range(1, 4):
        yield {"n": n, "pid": agent["pid"]}


def hostile(agent: dict[str, int], request: Any) -> Iterator[Any]:
    """``{"exit": code}``: yield one item, then call sys.exit(code); anything else: the worker's pid."""
    import sys

    if isinstance(request, dict) and "exit" in request:
        yield {"n": 1}
        sys.exit(request["exit"])
    yield {"pid": agent["pid"]}
