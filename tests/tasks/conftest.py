"""Fixtures for the task-library tests: a small generated library, converted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tasks_helpers import small_tasks, write_json


@pytest.fixture
def tasks() -> list[dict[str, Any]]:
    return small_tasks()


@pytest.fixture
def source(tmp_path: Path, tasks: list[dict[str, Any]]) -> Path:
    return write_json(tmp_path / "tasks_with_workflows.json", tasks)


@pytest.fixture
def library_path(tmp_path: Path, source: Path) -> Path:
    from hivemem.tasks import convert_tasks

    dest = tmp_path / "tasks.db"
    convert_tasks(source, dest, index_fields=["difficulty"], progress=False)
    return dest


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVEMEM_HOME", str(tmp_path / "home"))
