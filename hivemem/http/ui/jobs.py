"""The fleet page's jobs: ``hivemem run`` jobs and task libraries, from the machine's registries.

``run_parallel`` and ``convert_tasks`` register what they do (``hivemem.infra.registry``); this module
reads those entries and counts each run's progress from its results file. The count is incremental
and bounded: per refresh at most ``MAX_READ_BYTES`` new bytes of each file are read from where the
last refresh stopped (a huge file is caught up over several refreshes, shown as "counting"), so an
open page never reads a whole large file again. The rate is over the last minute of refreshes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from hivemem.infra import registry

MAX_RUNS_SHOWN = 20
MAX_LIBRARIES_SHOWN = 20
MAX_READ_BYTES = 4 << 20  # per results file per refresh
RATE_WINDOW_S = 60.0


class _Tally:
    """Done / failed counted so far in one results file, and where the count stopped."""

    def __init__(self) -> None:
        self.inode: tuple[int, int] | None = None
        self.offset = 0
        self.ok = 0
        self.failed = 0
        self.caught_up = False
        self.skipping = False
        self.samples: deque[tuple[float, int]] = deque()

    def advance(self, path: Path) -> None:
        """Count the records appended since the last call (at most ``MAX_READ_BYTES`` of them)."""
        try:
            st = path.stat()
        except OSError:
            self.caught_up = True
            return
        ident = (st.st_dev, st.st_ino)
        if ident != self.inode or st.st_size < self.offset:  # rewritten (retry_errors) or replaced
            self.inode, self.offset, self.ok, self.failed, self.skipping = ident, 0, 0, 0, False
            self.samples.clear()
        data = b""
        if st.st_size > self.offset:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read(MAX_READ_BYTES)
        pos = 0
        if self.skipping:  # inside a record longer than one read, already counted from its head
            nl = data.find(b"\n")
            pos = len(data) if nl < 0 else nl + 1
            self.skipping = nl < 0
        end = max(data.rfind(b"\n") + 1, pos)  # whole lines only: an unfinished last one waits
        for line in data[pos:end].splitlines():
            self._count(line)
        if end == pos and not self.skipping and len(data) - pos >= MAX_READ_BYTES // 2:
            self._count(data[pos:])  # a huge record: its head names its outcome; skip its tail
            self.skipping, end = True, len(data)
        elif self.skipping:
            end = len(data)
        self.offset += end
        self.caught_up = len(data) < MAX_READ_BYTES
        now = time.monotonic()
        self.samples.append((now, self.ok + self.failed))
        while len(self.samples) > 2 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()

    def _count(self, line: bytes) -> None:
        """One record's outcome, read from its ``"ok"`` field without parsing the result. The
        runner writes ``{"key":…,"ok":…`` compactly (``results._line``), and a key, being a JSON
        string or integer, cannot hold an unescaped ``,"ok":``, so its first occurrence is the field."""
        i = line.find(b',"ok":')
        if i < 0:
            return
        if line.startswith(b"true", i + 6):
            self.ok += 1
        elif line.startswith(b"false", i + 6):
            self.failed += 1

    def rate(self) -> float | None:
        """Records per second over the last minute (None until two refreshes a second apart)."""
        if len(self.samples) < 2:
            return None
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 - t0 >= 1.0 else None


class Jobs:
    """What the fleet page shows of the machine's runs and task libraries (admin keys only)."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self._lock = threading.Lock()

    def runs(self) -> list[dict[str, Any]]:
        """The newest ``MAX_RUNS_SHOWN`` runs: results path, done, failed, rate, state."""
        shown = registry.entries("runs", MAX_RUNS_SHOWN)
        out = []
        with self._lock:
            live = {str(e.get("results")) for e in shown}
            for gone in set(self._tallies) - live:
                del self._tallies[gone]
            for e in shown:
                results = str(e.get("results", ""))
                tally = self._tallies.setdefault(results, _Tally())
                tally.advance(Path(results))
                state = str(e.get("state", "running"))
                if state == "running":
                    alive = registry.pid_alive(e)
                    state = "died" if alive is False else ("running" if alive else "unknown host")
                out.append(
                    {
                        "results": results,
                        "total": e.get("total"),
                        "done": tally.ok,
                        "failed": tally.failed,
                        "counting": not tally.caught_up,
                        "rate": tally.rate() if state == "running" else None,
                        "state": state,
                        "error": e.get("error"),
                        "started": _when(e.get("started")),
                        "pid": e.get("pid"),
                        "host": e.get("host"),
                    }
                )
        return out

    def libraries(self) -> list[dict[str, Any]]:
        """The newest ``MAX_LIBRARIES_SHOWN`` converted libraries still where they were written."""
        out = []
        for e in registry.entries("libraries", MAX_LIBRARIES_SHOWN):
            path = str(e.get("path", ""))
            found = e.get("types")
            types: dict[str, Any] = found if isinstance(found, dict) else {}
            out.append(
                {
                    "path": path,
                    "tasks": e.get("tasks"),
                    "types": types,
                    "type_count": e.get("type_count", len(types)),
                    "bytes": e.get("bytes"),
                    "present": os.path.isfile(path),
                    "converted": _when(e.get("converted")),
                }
            )
        return out


def _when(stamp: Any) -> str:
    """A registry time (seconds since the epoch) as UTC ``YYYY-MM-DD HH:MM:SS``; '-' if unknown."""
    if not isinstance(stamp, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))
