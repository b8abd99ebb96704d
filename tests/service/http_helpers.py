"""A real ``hivemem serve --http`` process on a loopback port for the HTTP tests (always stopped)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service_helpers import ROOT, free_port, start_service, stop_pid, wait_healthy

HERE = Path(__file__).resolve().parent
KEYS = {
    "alice-key-0001": {"user_id": "alice"},
    "bob-key-00002": {"user_id": "bob"},
    "admin-key-003": {"admin": True},
}
ALICE = {"Authorization": "Bearer alice-key-0001"}
BOB = {"Authorization": "Bearer bob-key-00002"}
ADMIN = {"Authorization": "Bearer admin-key-003"}


@contextmanager
def http_service(model_home: Path, *args: str, memory: str | None = None) -> Iterator[dict]:
    """Service with the keys above, its own cache and memory store (``memory``: a file or a
    ``postgresql://`` URL; default a new file); yields ``url`` and paths."""
    directory = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    (directory / "keys.json").write_text(json.dumps(KEYS))
    port = free_port()
    env = {
        **os.environ,
        "HIVEMEM_HOME": str(model_home),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),  # HERE: the tests' own agents
    }
    options = ["--http", f"127.0.0.1:{port}", "--keys", str(directory / "keys.json")]
    options += ["--memory-url", memory or str(directory / "memory.sqlite")]
    proc = start_service(env, *options, *args)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield {"proc": proc, "url": url, "dir": directory}
    finally:
        stop_pid(proc.pid)
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
