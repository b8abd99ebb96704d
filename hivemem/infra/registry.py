"""Small per-user registries of what this machine is doing: ``hivemem run`` jobs, task libraries.

Each entry is one small JSON file in ``runtime_dir()/<kind>/``, written atomically (temp file, then
``os.replace``), so a reader never sees half an entry and a crashed writer leaves at worst a whole
stale one; its ``pid`` and ``host`` let a reader tell a dead run (``pid_alive``). The fleet page
reads them (docs/ui.md); writers prune each kind to its newest ``MAX_ENTRIES`` files.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from hivemem.infra.config import runtime_dir

MAX_ENTRIES = 50  # files kept per kind (newest by modification time); the fleet page shows fewer
MAX_ENTRY_BYTES = 16384  # a larger file is not ours: readers skip it


def registry_dir(kind: str) -> Path:
    path = runtime_dir() / kind
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def put(kind: str, name: str, entry: dict[str, Any]) -> Path:
    """Write ``entry`` as ``<kind>/<name>.json`` atomically, then prune the kind to ``MAX_ENTRIES``."""
    folder = registry_dir(kind)
    path = folder / f"{name}.json"
    data = json.dumps(entry).encode()
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"registry entry {name!r} is {len(data)} bytes, over {MAX_ENTRY_BYTES}")
    temp = folder / f".{name}.{os.getpid()}.tmp"
    with open(temp, "wb") as f:
        f.write(data)
    os.replace(temp, path)
    for old in _newest(folder)[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def entries(kind: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` entries of ``kind`` (each with its ``_file``); unreadable ones skipped."""
    out: list[dict[str, Any]] = []
    for path in _newest(registry_dir(kind)):
        if len(out) >= limit:
            break
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_ENTRY_BYTES + 1)
            entry = json.loads(data) if len(data) <= MAX_ENTRY_BYTES else None
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict):
            out.append({**entry, "_file": str(path)})
    return out


def _newest(folder: Path) -> list[Path]:
    found: list[tuple[float, Path]] = []
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime, path))
    return [p for _, p in sorted(found, reverse=True)]


def here() -> dict[str, Any]:
    """The ``pid`` and ``host`` an entry records about its writer."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def pid_alive(entry: dict[str, Any]) -> bool | None:
    """Whether the entry's writer still runs; None when it ran on another host (cannot tell)."""
    if entry.get("host") != socket.gethostname():
        return None
    pid = entry.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, somebody else's (a reused pid)
        return True
    return True
