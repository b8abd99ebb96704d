"""Fixtures for service tests: a prepared model home shared by the session, short socket paths,
and real service processes that are always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import ROOT, free_port, start_service, stop_pid


@pytest.fixture(scope="session")
def model_home(hivemem_home: Path) -> Path:
    """The session's private HIVEMEM_HOME with the prepared model (tests/conftest.py)."""
    return hivemem_home


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temp dir for sockets (Unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_env(model_home: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment (also applied to this process) pointing at a private socket and cache."""
    env = {
        "HIVEMEM_HOME": str(model_home),
        "HIVEMEM_SOCKET": str(short_dir / "s.sock"),
        "HIVEMEM_CACHE": str(short_dir / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


@pytest.fixture
def service(service_env: dict[str, str]) -> Iterator[subprocess.Popen]:
    proc = start_service(service_env)
    yield proc
    stop_pid(proc.pid)
    proc.wait(10)


@pytest.fixture(scope="module")
def shared_service(model_home: Path) -> Iterator[dict]:
    """One service (socket + HTTP on loopback) for a whole test module."""
    directory = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    port = free_port()
    env = {
        **os.environ,
        "HIVEMEM_HOME": str(model_home),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    proc = start_service(env, "--http", f"127.0.0.1:{port}")
    yield {"proc": proc, "env": env, "socket": directory / "s.sock", "url": f"http://127.0.0.1:{port}"}
    stop_pid(proc.pid)
    proc.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def local_embedder(model_home: Path) -> Iterator:
    """The in-process engine on the same model, as the reference for vectors."""
    old = os.environ.get("HIVEMEM_HOME")
    os.environ["HIVEMEM_HOME"] = str(model_home)
    from hivemem.embed.engine import Embedder

    emb = Embedder(cache=False)
    yield emb
    emb.close()
    if old is None:
        os.environ.pop("HIVEMEM_HOME", None)
    else:
        os.environ["HIVEMEM_HOME"] = old
