"""Fixtures for the MCP tests: a private socket directory and environment per test; every service
a test or its relays started is stopped at the end (``hivemem serve --stop``, then SIGKILL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mcp_env(hivemem_home: Path) -> Iterator[dict[str, str]]:
    """Environment for relays and services: the session's model home, a private socket (short
    path), cache and default memory store."""
    directory = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    env = {
        **os.environ,
        "HIVEMEM_HOME": str(hivemem_home),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "HIVEMEM_MEMORY_URL": str(directory / "memory.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HIVEMEM_USER_ID", None)
    yield env
    stop = [sys.executable, "-m", "hivemem.app.cli", "serve", "--stop"]
    subprocess.run(stop, env=env, capture_output=True, timeout=90)
    pid_file = directory / "s.sock.pid"
    if pid_file.exists() and pid_file.read_text().strip().isdigit():  # still held: never leave one behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), 9)
    shutil.rmtree(directory, ignore_errors=True)
