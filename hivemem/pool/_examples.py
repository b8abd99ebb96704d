"""A small example agent for demos, docs and the HTTP streaming route: slow to build, cheap to
call, streams its reply token by token.

Everything here is module-level so process workers can import it by name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator


class EchoAgent:
    """Stands in for a real agent: a slow start (loading a model, warming a client) and some memory."""

    def __init__(self, init_seconds: float = 1.5, memory_mb: int = 32) -> None:
        time.sleep(init_seconds)
        self.ballast = bytearray(memory_mb * 1024 * 1024)  # touched below so it is really resident
        for i in range(0, len(self.ballast), 4096):
            self.ballast[i] = 1
        self.pid = os.getpid()
        self.created = time.time()
        self.calls = 0

    def reply(self, message: str) -> str:
        self.calls += 1
        return f"echo: {message}"


def make_echo_agent(init_seconds: float = 1.5) -> EchoAgent:
    """A factory for :class:`hivemem.WorkerPool` (``functools.partial`` it to change the delay)."""
    return EchoAgent(init_seconds=init_seconds)


def echo(agent: EchoAgent, message: str) -> str:
    """One request: the whole reply at once."""
    return agent.reply(message)


def echo_stream(agent: EchoAgent, message: str, delay: float = 0.05) -> Iterator[str]:
    """One streaming request: the reply word by word, ``delay`` seconds apart (like LLM tokens)."""
    agent.calls += 1
    for i, word in enumerate(f"echo: {message}".split()):
        if delay:
            time.sleep(delay)
        yield word if i == 0 else " " + word
