"""Hostile task sources and destinations (the standing module of issue 9 for the tasks part).

A task file comes from outside; converting it must stay within a documented depth and a bounded
amount of memory, fail with one line naming the position, and leave the destination untouched.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tasks_helpers import PYTHON, child_env, write_json

from hivemem.tasks import TaskLibrary, TaskLibraryError, TaskSourceError, convert_tasks
from hivemem.tasks.source import DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

SMALL = [{"id": f"t{i}", "task_type": "web", "n": i} for i in range(5)]


def _library(tmp_path: Path) -> Path:
    dest = tmp_path / "tasks.db"
    convert_tasks(write_json(tmp_path / "ok.json", SMALL), dest, progress=False)
    return dest


def _untouched(dest: Path, before: bytes) -> None:
    assert dest.read_bytes() == before
    assert not [p for p in dest.parent.iterdir() if ".tmp-" in p.name]
    assert len(TaskLibrary(dest).get_many([t["id"] for t in SMALL])) == len(SMALL)


# -- defect 3: nesting depth, memory, position ------------------------------------------------------


def _deep_text(depth: int) -> str:
    """The JSON of ``_deep_task(depth)``, written by hand: json.dumps itself recurses per level."""
    return '{"id": "deep", "task_type": "web", "x": ' + "[" * depth + "1" + "]" * depth + "}"


@pytest.mark.parametrize("shape", ["list", "by_type", "jsonl"])
@pytest.mark.parametrize("depth", [DEFAULT_MAX_DEPTH + 1, 1_000, 20_000])
def test_too_deep_is_one_line_with_the_position(tmp_path: Path, shape: str, depth: int) -> None:
    dest = _library(tmp_path)
    before = dest.read_bytes()
    tasks = [json.dumps(t) for t in SMALL[:2]] + [_deep_text(depth)]
    if shape == "list":
        src = tmp_path / "src.json"
        src.write_text("[\n" + ",\n".join(tasks) + "\n]\n")
    elif shape == "by_type":
        src = tmp_path / "src.json"
        src.write_text('{"web": [\n' + ",\n".join(tasks) + "\n]}\n")
    else:
        src = tmp_path / "src.jsonl"
        src.write_text("\n".join(tasks) + "\n")
    with pytest.raises(TaskSourceError) as err:
        convert_tasks(src, dest, progress=False)
    message = str(err.value)
    assert "\n" not in message and f"deeper than {DEFAULT_MAX_DEPTH} levels" in message, message
    line, column = err.value.line, err.value.column
    assert line == (3 if shape == "jsonl" else 4)  # the deep task's line
    assert f"line {line}, column {column}" in message and "max_depth" in message
    text = src.read_text()  # ASCII: characters and bytes agree
    # the position points at the bracket that went one level too deep
    bracket = text.splitlines()[line - 1][column - 1]
    assert bracket == "["
    levels = {"list": 1, "by_type": 2, "jsonl": 0}[shape] + 1  # enclosing containers + the task
    assert text.splitlines()[line - 1][: column - 1].count("[") + levels == DEFAULT_MAX_DEPTH
    _untouched(dest, before)


def test_depth_limit_is_configurable(tmp_path: Path) -> None:
    src = tmp_path / "src.json"
    src.write_text("[" + _deep_text(DEFAULT_MAX_DEPTH + 50) + "]")
    with pytest.raises(TaskSourceError, match="deeper than"):
        convert_tasks(src, tmp_path / "a.db", progress=False)
    convert_tasks(src, tmp_path / "a.db", progress=False, max_depth=DEFAULT_MAX_DEPTH + 52)
    assert TaskLibrary(tmp_path / "a.db").get("deep")["task_type"] == "web"
    with pytest.raises(TaskSourceError, match="deeper than 3 levels"):
        convert_tasks(write_json(tmp_path / "s.json", [{"id": 1, "task_type": "w", "v": [[1]]}]),
                      tmp_path / "b.db", progress=False, max_depth=3)  # fmt: skip
    for bad in (0, MAX_DEPTH_LIMIT + 1, True, "9"):
        with pytest.raises(ValueError, match="max_depth"):
            convert_tasks(src, tmp_path / "c.db", progress=False, max_depth=bad)


def test_the_deepest_allowed_values_read_back(tmp_path: Path) -> None:
    """At ``MAX_DEPTH_LIMIT`` a value still round-trips through the library (Python's json
    recurses per level; the limit keeps it under the interpreter's recursion limit)."""
    text = _deep_text(MAX_DEPTH_LIMIT - 2)
    for name in ("src.json", "src.jsonl"):
        src = tmp_path / name
        src.write_text("[" + text + "]" if name.endswith(".json") else text + "\n")
        dest = tmp_path / f"{name}.db"
        convert_tasks(src, dest, progress=False, max_depth=MAX_DEPTH_LIMIT)
        got = TaskLibrary(dest).get("deep")
        depth = 0
        value = got["x"]
        while isinstance(value, list):
            value, depth = value[0], depth + 1
        assert depth == MAX_DEPTH_LIMIT - 2 and value == 1


DEEP_CONVERT = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GiB: a regression fails, not the machine
from hivemem.tasks import TaskSourceError, convert_tasks
try:
    convert_tasks(sys.argv[1], sys.argv[2], progress=False)
except TaskSourceError as exc:
    print("refused:", exc)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so it would report the parent's peak
print("maxrss_kb", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
"""


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_100k_deep_file_is_refused_in_bounded_memory(tmp_path: Path, fmt: str) -> None:
    """A valid 200 KB file nested 100,000 deep reached 23 GB RSS (an OOM kill) before."""
    src = tmp_path / f"deep.{fmt}"
    body = "[" * 100_000 + "1" + "]" * 100_000
    src.write_text(body if fmt == "json" else '{"id": 1, "task_type": "w", "v": ' + body + "}\n")
    dest = _library(tmp_path)
    before = dest.read_bytes()
    out = subprocess.run(
        [PYTHON, "-c", DEEP_CONVERT, str(src), str(dest)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "refused:" in out.stdout and "deeper than" in out.stdout, out.stdout
    rss_mb = int(out.stdout.split("maxrss_kb")[1]) / 1024
    assert rss_mb < 256, f"peak RSS {rss_mb:.0f} MB"  # an interpreter with hivemem.tasks is ~40 MB
    _untouched(dest, before)


# -- item 8: destinations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content", [b"my thesis, not a task library", b"", b"SQLite format 3\x00" + b"\x00" * 200]
)
def test_an_existing_file_that_is_not_a_task_library_is_not_overwritten(
    tmp_path: Path, content: bytes
) -> None:
    src = write_json(tmp_path / "src.json", SMALL)
    dest = tmp_path / "precious.db"
    dest.write_bytes(content)
    with pytest.raises(TaskLibraryError, match="not a hivemem task library"):
        convert_tasks(src, dest, progress=False)
    assert dest.read_bytes() == content
    plain = sqlite_file(tmp_path / "other.sqlite")  # a real SQLite database of something else
    before = plain.read_bytes()
    with pytest.raises(TaskLibraryError, match="refusing to replace it"):
        convert_tasks(src, plain, progress=False)
    assert plain.read_bytes() == before
    library = _library(tmp_path)  # an existing library is replaced, as documented
    convert_tasks(write_json(tmp_path / "more.json", [*SMALL, {"id": "t9", "task_type": "x"}]), library,
                  progress=False)  # fmt: skip
    assert TaskLibrary(library).get("t9")["task_type"] == "x"


def sqlite_file(path: Path) -> Path:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('keep me')")
    return path


@pytest.mark.parametrize("dest", ["/proc/hivemem-tasks.db", "/proc/self/no-such-dir/tasks.db"])
def test_cli_unwritable_destination_is_one_line(tmp_path: Path, dest: str) -> None:
    src = write_json(tmp_path / "src.json", SMALL)
    out = subprocess.run(
        [PYTHON, "-m", "hivemem.app.cli", "tasks", "convert", str(src), dest],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")
    assert len(out.stderr.strip().splitlines()) == 1 and dest in out.stderr, out.stderr


# -- Hypothesis: whatever the nesting and shape, a clear error or a faithful library ----------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    values=st.lists(json_values, min_size=1, max_size=4),
    wrap=st.integers(0, 12),
    limit=st.integers(4, 16),
    jsonl=st.booleans(),
)
def test_any_nesting_converts_faithfully_or_fails_clearly(
    tmp_path_factory: pytest.TempPathFactory, values: list[Any], wrap: int, limit: int, jsonl: bool
) -> None:
    tmp = tmp_path_factory.mktemp("hyp")
    tasks = []
    for i, value in enumerate(values):
        for _ in range(wrap * (i % 2)):
            value = {"w": value}
        tasks.append({"id": i, "task_type": "t", "v": value})
    src = tmp / ("src.jsonl" if jsonl else "src.json")
    src.write_text("\n".join(json.dumps(t) for t in tasks) if jsonl else json.dumps(tasks))
    depth = _depth(tasks) - (1 if jsonl else 0)  # a JSONL line has no enclosing list
    dest = tmp / "out.db"
    if depth > limit:
        with pytest.raises(TaskSourceError, match=f"deeper than {limit} levels"):
            convert_tasks(src, dest, progress=False, max_depth=limit)
        assert not dest.exists()
    else:
        convert_tasks(src, dest, progress=False, max_depth=limit)
        assert TaskLibrary(dest).get_many([str(t["id"]) for t in tasks]) == tasks


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0
