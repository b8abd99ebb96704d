"""Fixtures for the framework adapters: a real hivemem service on a private socket (+ HTTP)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import ROOT, free_port, start_service, stop_pid


@pytest.fixture(scope="session", autouse=True)
def mem0_private() -> Iterator[None]:
    """Mem0 (run by these tests' subprocesses) keeps a config dir and phones home: neither may touch
    the user's ~/.mem0 or the network."""
    directory = tempfile.mkdtemp(prefix="hm-mem0-")
    patch = pytest.MonkeyPatch()
    patch.setenv("MEM0_DIR", directory)
    patch.setenv("MEM0_TELEMETRY", "False")
    yield
    patch.undo()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def hm_service(hivemem_home: Path) -> Iterator[dict]:
    """``hivemem serve --http`` on loopback with its own socket and cache, for one test module."""
    directory = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    port = free_port()
    env = {
        **os.environ,
        "HIVEMEM_HOME": str(hivemem_home),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    proc = start_service(env, "--http", f"127.0.0.1:{port}", "--memory-path", str(directory / "m.sqlite"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the socket accepts a moment before uvicorn does
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield {
            "proc": proc,
            "env": env,
            "socket": str(directory / "s.sock"),
            "url": url,
            "dir": directory,
        }
    finally:
        stop_pid(proc.pid)
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def local_engine(hivemem_home: Path) -> Iterator:
    """The in-process engine on the same model: the reference vectors."""
    from hivemem import Embedder

    emb = Embedder(cache=False)
    yield emb
    emb.close()
