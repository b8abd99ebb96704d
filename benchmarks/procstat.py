"""What the service benchmarks read from /proc and how they wait for a service: one copy for
``service_callers.py``, ``service_memory.py`` and ``service_trim.py``."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def pss_mb(pid: int | str = "self") -> float:
    """Proportional set size of ``pid`` in MB (shared pages divided among the processes mapping them)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_socket(service: subprocess.Popen, sock: Path, what: str, timeout: float = 120) -> None:
    """Return once ``service`` has made ``sock``; exit the benchmark if it died or took too long."""
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)
