"""Starting and stopping real service processes in tests (imported by conftest and the tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def start_service(env: dict[str, str], *args: str) -> subprocess.Popen:
    """``python -m hivemem.service`` in the background; returns once its socket accepts."""
    from hivemem.service.spawn import can_connect

    sock = Path(env["HIVEMEM_SOCKET"])
    proc = subprocess.Popen(
        [PY, "-m", "hivemem", "serve", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not can_connect(sock):
        if proc.poll() is not None:
            raise RuntimeError(f"service exited {proc.returncode}: {proc.stdout.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("service did not start")
        time.sleep(0.05)
    return proc


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it lingers (never leave a service behind)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0:
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``url``'s ``/health`` answers 200 (the socket accepts a moment before uvicorn does);
    the last transport error once ``proc`` exited or ``timeout`` passed."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)
