"""Conversion: every task round-trips exactly, from every source shape, with every compression;
the write is atomic (a killed converter leaves nothing at the destination)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from tasks_helpers import PYTHON, child_env, write_json

from hivemem.tasks import TaskLibrary, TaskSourceChangedWarning, convert_tasks
from hivemem.tasks.synth import iter_tasks, write_library

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_list_round_trip_every_task(
    tmp_path: Path, source: Path, tasks: list[dict], compression: str
) -> None:
    dest = tmp_path / f"{compression}.db"
    summary = convert_tasks(source, dest, compression=compression, progress=False)
    assert summary["count"] == len(tasks)
    expected = json.loads(source.read_text(encoding="utf-8"))  # what json.load gives
    with TaskLibrary(dest) as lib:
        assert list(lib.iter()) == expected
        for task in expected:
            got = lib.get(task["id"])
            assert got == task
            assert list(got) == list(task)  # key order kept
        assert lib.count() == len(expected)
    big = next(t for t in expected if t["id"] == "unicode-é-日本")["big"]
    assert isinstance(big, int) and big == 123456789012345678901234567890


def test_compression_shrinks_the_file(tmp_path: Path) -> None:
    src = write_library(tmp_path / "s.json", iter_tasks(40, 4, steps=6, description_words=300))
    plain = convert_tasks(src, tmp_path / "plain.db", progress=False)["bytes"]
    for kind in ("zlib", "zstd"):
        assert (
            convert_tasks(src, tmp_path / f"{kind}.db", compression=kind, progress=False)["bytes"] < plain / 2
        )


def test_dict_of_lists_by_type(tmp_path: Path, tasks: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for task in tasks:
        groups.setdefault(task["task_type"], []).append(task)
    # A group whose tasks carry no type field: the key becomes their type.
    groups["untyped"] = [{"id": "u1", "x": 1}, {"id": "u2", "x": [2]}]
    src = write_json(tmp_path / "by_type.json", groups)
    dest = tmp_path / "by_type.db"
    summary = convert_tasks(src, dest, progress=False)
    assert summary["types"]["untyped"] == 2
    with TaskLibrary(dest) as lib:
        for task in tasks:
            assert lib.get(task["id"]) == task
        assert lib.get("u2") == {"id": "u2", "x": [2], "task_type": "untyped"}
        assert lib.count("untyped") == 2


def test_jsonl_round_trip(tmp_path: Path, tasks: list[dict]) -> None:
    src = tmp_path / "tasks.jsonl"
    src.write_text("\n".join(json.dumps(t, ensure_ascii=False) for t in tasks) + "\n\n", encoding="utf-8")
    dest = tmp_path / "jsonl.db"
    convert_tasks(src, dest, progress=False)
    with TaskLibrary(dest) as lib:
        assert list(lib.iter()) == tasks
    # the same lines under a .json name need fmt="jsonl"
    other = tmp_path / "lines.json"
    other.write_bytes(src.read_bytes())
    convert_tasks(other, tmp_path / "lines.db", fmt="jsonl", progress=False)
    assert list(TaskLibrary(tmp_path / "lines.db").iter()) == tasks


def test_custom_id_and_type_fields(tmp_path: Path) -> None:
    src = write_json(
        tmp_path / "s.json", [{"uid": f"q{k}", "kind": "ab"[k % 2], "level": k % 3} for k in range(10)]
    )
    dest = tmp_path / "s.db"
    convert_tasks(src, dest, id_field="uid", type_field="kind", index_fields=["level"], progress=False)
    lib = TaskLibrary(dest)
    assert lib.types() == ["a", "b"]
    assert lib.get("q3") == {"uid": "q3", "kind": "b", "level": 0}
    assert lib.values("level") == {0: 4, 1: 3, 2: 3}
    assert sorted(lib.ids(where={"level": 2})) == ["q2", "q5", "q8"]
    assert lib.count("a", where={"level": 0}) == 2


def test_projection_reads_only_requested_fields(library_path: Path, tasks: list[dict]) -> None:
    lib = TaskLibrary(library_path)
    light = lib.get(tasks[0]["id"], fields=["id", "task_type", "workflow"])
    assert light == {k: tasks[0][k] for k in ("id", "task_type", "workflow")}
    assert [t["id"] for t in lib.iter("type_01", fields="id")] == [
        t["id"] for t in tasks if t["task_type"] == "type_01"
    ]
    assert all(set(t) == {"id"} for t in lib.sample("type_02", 3, seed=1, fields=["id"]))


def test_returned_tasks_are_fresh(library_path: Path, tasks: list[dict]) -> None:
    lib = TaskLibrary(library_path)
    first = lib.get(tasks[0]["id"])
    first["workflow"]["steps"].clear()
    first["id"] = "changed"
    assert lib.get(tasks[0]["id"]) == tasks[0]
    drawn = lib.sample("type_00", 30, seed=2, replace=True)  # 10 tasks: repeats are certain
    assert len({t["id"] for t in drawn}) < 30
    assert len({id(t) for t in drawn}) == 30 and len({id(t["workflow"]) for t in drawn}) == 30
    same = lib.get_many([tasks[0]["id"], tasks[0]["id"]])
    assert same[0] == same[1] and same[0] is not same[1] and same[0]["workflow"] is not same[1]["workflow"]


def test_records_source_and_warns_when_it_changes(library_path: Path, source: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = TaskLibrary(library_path)  # unchanged: no warning
    assert lib.meta["source_sha256"] == __import__("hashlib").sha256(source.read_bytes()).hexdigest()
    assert lib.info()["source"]["changed"] is None
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TaskLibrary(library_path)
    source.write_text(source.read_text(encoding="utf-8").replace("type_00", "type_0X"), encoding="utf-8")
    with pytest.warns(TaskSourceChangedWarning, match="changed content"):
        TaskLibrary(library_path)
    with open(source, "a") as f:
        f.write(" ")
    with pytest.warns(TaskSourceChangedWarning, match="changed size"):
        TaskLibrary(library_path)
    assert "changed" in TaskLibrary(library_path, check_source=False).info()["source"]["changed"]


def test_failed_convert_keeps_old_library_and_leaves_no_temp(library_path: Path, tmp_path: Path) -> None:
    before = library_path.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "a", "task_type": "t"}, {"id": "b", "task_type": ', encoding="utf-8")
    with pytest.raises(ValueError, match="malformed JSON"):
        convert_tasks(bad, library_path, progress=False)
    assert library_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_reconvert_replaces_atomically_under_open_readers(library_path: Path, tmp_path: Path) -> None:
    reader = TaskLibrary(library_path)
    old_ids = reader.ids()
    src = write_json(tmp_path / "new.json", [{"id": "n1", "task_type": "new"}])
    convert_tasks(src, library_path, progress=False)
    assert reader.ids() == old_ids  # an open reader keeps its (unlinked) snapshot
    assert TaskLibrary(library_path).ids() == ["n1"]


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_kill_9_mid_convert_leaves_no_library(tmp_path: Path) -> None:
    """The converter reads from a FIFO we feed; we kill -9 it halfway through."""
    fifo = tmp_path / "source.json"
    os.mkfifo(fifo)
    dest = tmp_path / "out" / "tasks.db"
    code = (
        "from hivemem.tasks import convert_tasks; "
        f"convert_tasks({str(fifo)!r}, {str(dest)!r}, progress=False)"
    )
    child = subprocess.Popen([PYTHON, "-c", code], env=child_env(), stderr=subprocess.PIPE)
    try:
        tasks = list(iter_tasks(200, 4, steps=3, description_words=200))
        with open(fifo, "w", encoding="utf-8") as feed:  # blocks until the child opens it
            feed.write("[")
            for k, task in enumerate(tasks[:150]):
                feed.write(("," if k else "") + json.dumps(task))
            feed.flush()
            # the child has parsed most of what we sent and is writing its temp file
            _wait_for(lambda: any(p.name.startswith(".tasks.db.tmp-") for p in dest.parent.glob(".*")))
            time.sleep(0.3)
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    except BrokenPipeError:
        pass
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not dest.exists()
    leftovers = [p for p in dest.parent.iterdir() if p.name.startswith(".tasks.db.tmp-")]
    assert leftovers, "expected the killed converter's temp file"
    # the next conversion succeeds and sweeps the dead converter's temp file away
    src = write_json(tmp_path / "ok.json", tasks)
    convert_tasks(src, dest, progress=False)
    assert [p.name for p in dest.parent.iterdir()] == ["tasks.db"]
    assert TaskLibrary(dest).count() == 200


def test_library_file_is_plain_sqlite_with_our_header(library_path: Path) -> None:
    conn = sqlite3.connect(f"{library_path.as_uri()}?mode=ro", uri=True)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert (
        meta["format"] == "hivemem-tasks" and meta["id_field"] == "id" and meta["type_field"] == "task_type"
    )
    assert not os.access(library_path, os.W_OK) or os.geteuid() == 0  # written read-only
