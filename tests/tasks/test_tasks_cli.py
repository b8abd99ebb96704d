"""``hivemem tasks convert|info|sample|get|allocate``: JSON on stdout, one-line errors, exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hivemem.app.cli_tasks import app

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

runner = CliRunner()


def _ok(*args: str) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _fails(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.stderr.startswith("error: ")
    return result.stderr


def test_convert_info_sample_get_allocate(tmp_path: Path, source: Path, tasks: list[dict]) -> None:
    dest = tmp_path / "cli.db"
    summary = _ok("convert", source, dest, "--index", "difficulty", "--compression", "zstd", "--no-progress")
    assert summary["count"] == len(tasks) and summary["compression"] == "zstd" and dest.exists()

    info = _ok("info", dest)
    assert info["count"] == len(tasks) and info["types"]["type_00"] == 10
    assert set(info["index_fields"]["difficulty"]) <= {"easy", "medium", "hard", "null"}
    assert info["source"]["changed"] is None

    drawn = _ok("sample", dest, "type_01", "-n", "3", "--seed", "4", "--fields", "id,task_type,workflow")
    assert len(drawn) == 3 and all(set(t) == {"id", "task_type", "workflow"} for t in drawn)
    assert _ok("sample", dest, "type_01", "-n", "3", "--seed", "4", "--ids") == [t["id"] for t in drawn]
    hard = _ok("sample", dest, "type_02", "-n", "1", "--where", "difficulty=hard", "--seed", "1")
    assert hard[0]["difficulty"] == "hard"

    assert _ok("get", dest, tasks[0]["id"]) == tasks[0]
    assert _ok("get", dest, tasks[1]["id"], "42", "--fields", "id") == [{"id": tasks[1]["id"]}, {"id": 42}]

    plan = _ok("allocate", dest, "--workers", "3", "--per-worker", "3", "--type", "type_03", "--seed", "2")
    assert plan["task_type"] == "type_03" and [len(s) for s in plan["workers"]] == [3, 3, 3]
    assert len({i for s in plan["workers"] for i in s}) == 9


def test_cli_errors_are_one_line(tmp_path: Path, library_path: Path) -> None:
    assert "unknown task type 'nope'" in _fails("sample", library_path, "nope")
    assert "only 10" in _fails("sample", library_path, "type_00", "-n", "11")
    assert "no task with id 'missing'" in _fails("get", library_path, "missing")
    assert "does not exist" in _fails("info", tmp_path / "none.db")
    assert "only 10 are available" in _fails(
        "allocate", library_path, "-w", "4", "-n", "3", "--type", "type_00"
    )
    assert "FIELD=VALUE" in _fails("sample", library_path, "--where", "difficulty")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "task_type": "x"},]')
    assert "line 1, column" in _fails("convert", bad, tmp_path / "bad.db", "--no-progress")
    assert "keep-last" in _fails("convert", bad, tmp_path / "bad.db", "--on-duplicate", "first")
    assert not (tmp_path / "bad.db").exists()
