"""``hivemem tasks convert`` onto a disk that fills up (a real tmpfs): one error line naming the
destination and "disk full", exit status 1, no traceback, the existing library untouched and no
temp file left behind (issue 26, defect 3)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tasks_helpers import PYTHON, child_env, small_tasks, write_json

from hivemem import DiskFull
from hivemem.tasks import TaskLibrary, convert_tasks


def _big_source(tmp_path: Path) -> Path:
    """~6 MB of tasks: more than the tmpfs below can hold."""
    tasks = [
        {"id": f"t{i}", "task_type": f"type_{i % 5}", "prompt": f"task {i} " + "lorem ipsum dolor " * 16}
        for i in range(20_000)
    ]
    return write_json(tmp_path / "big.json", tasks)


def _library(tmp_path: Path, disk: Path) -> tuple[Path, bytes]:
    dest = disk / "tasks.db"
    convert_tasks(write_json(tmp_path / "small.json", small_tasks()), dest, progress=False)
    return dest, dest.read_bytes()


def test_cli_convert_onto_a_full_disk_is_one_line(tmp_path: Path, small_tmpfs: Callable[..., Path]) -> None:
    disk = small_tmpfs(1 << 20)
    dest, before = _library(tmp_path, disk)
    src = _big_source(tmp_path)
    out = subprocess.run(
        [PYTHON, "-m", "hivemem.app.cli", "tasks", "convert", str(src), str(dest), "--no-progress"],
        capture_output=True, text=True, env=child_env(), timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "disk full" in out.stderr and str(dest) in out.stderr, out.stderr
    assert dest.read_bytes() == before  # untouched, and still a library
    assert TaskLibrary(dest).info()["count"] == len(small_tasks())
    assert sorted(p.name for p in disk.iterdir()) == ["tasks.db"]  # no temp file left


def test_convert_onto_a_full_disk_raises_disk_full(tmp_path: Path, small_tmpfs: Callable[..., Path]) -> None:
    disk = small_tmpfs(1 << 20)
    dest, before = _library(tmp_path, disk)
    with pytest.raises(DiskFull, match="disk full") as caught:
        convert_tasks(_big_source(tmp_path), dest, progress=False)
    assert str(dest) in str(caught.value)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in disk.iterdir()) == ["tasks.db"]
