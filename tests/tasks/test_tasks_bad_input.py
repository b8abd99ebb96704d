"""Bad input gives a clear error naming the problem and its place — and never a library file."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
from tasks_helpers import write_json

from hivemem.tasks import (
    TaskLibrary,
    TaskLibraryError,
    TaskNotFoundError,
    TaskSourceError,
    UnknownTaskTypeError,
    convert_tasks,
)
from hivemem.tasks.synth import iter_tasks

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _convert_error(tmp_path: Path, text: str, name: str = "src.json", **options: object) -> TaskSourceError:
    src = tmp_path / name
    src.write_text(text, encoding="utf-8")
    dest = tmp_path / "out.db"
    with pytest.raises(TaskSourceError) as info:
        convert_tasks(src, dest, progress=False, **options)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    return info.value


def _json_position(text: str) -> tuple[int, int]:
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(text)
    return info.value.lineno, info.value.colno


@pytest.mark.parametrize(
    "text",
    [
        '[{"id": "a", "task_type": "x"},,]',
        '[{"id": "a", "task_type": "x"} {"id": "b"}]',
        '[\n  {"id": "a", "task_type": "x"}\n]\n  garbage',
        '{"web": [{"id": "a"}], "x": [@]}',
        '[\n{"id": "é日本", "task_type": "ééééééééééééééééééééééééééééééé" @}]',
    ],
)
def test_malformed_json_reports_line_and_column(tmp_path: Path, text: str) -> None:
    err = _convert_error(tmp_path, text)
    assert (err.line, err.column) == _json_position(text)
    assert f"line {err.line}, column {err.column}" in str(err) and "src.json" in str(err)


def test_truncated_json_reports_end_of_file(tmp_path: Path) -> None:
    text = '[\n{"id": "a", "task_type": "x"},\n{"id": "b", "task_'
    err = _convert_error(tmp_path, text)
    assert "premature EOF" in str(err)
    assert (err.line, err.column) == (3, len('{"id": "b", "task_') + 1)


def test_malformed_json_deep_in_a_large_file_is_located_exactly(tmp_path: Path) -> None:
    """Errors beyond the parser's first 64 KB read: the position is still the exact character."""
    text = json.dumps(list(iter_tasks(30, 3, steps=3, description_words=40)), indent=1)
    assert len(text) > 5 * 65536
    spots = [i for i in range(len(text)) if text[i] == " " and text[i - 1] == ":"]
    for i in random.Random(0).sample(spots, 8):
        corrupt = text[: i + 1] + "@" + text[i + 1 :]
        err = _convert_error(tmp_path, corrupt)
        assert (err.line, err.column) == _json_position(corrupt), i


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    text = '{"id": "a", "task_type": "x"}\n\n{"id": "b", "task_type": x}\n'
    err = _convert_error(tmp_path, text, name="t.jsonl")
    assert (err.line, err.column) == (3, 26)
    err = _convert_error(tmp_path, '{"id": "a", "task_type": "x", "v": NaN}\n', name="t.jsonl")
    assert err.line == 1 and "NaN" in str(err)


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        (
            '[{"id": "a", "task_type": "x"}, {"task_type": "x", "name": "n"}]',
            "[1]",
            ["no id field 'id'", "'name'"],
        ),
        ('[{"id": "a", "task_type": "x"}, {"id": "b"}]', "[1]", ["no type field 'task_type'", "'b'"]),
        ('[{"id": "a", "task_type": "x"}, 7]', "[1]", ["int", "not a JSON object"]),
        ('[{"id": [1], "task_type": "x"}]', "[0]", ["strings or integers"]),
        ('[{"id": true, "task_type": "x"}]', "[0]", ["strings or integers"]),
        ('[{"id": "a", "task_type": ""}]', "[0]", ["non-empty strings"]),
        ('[{"id": "a", "task_type": 3}]', "[0]", ["non-empty strings"]),
        ('{"web": [{"id": "a"}, "oops"]}', "['web'][1]", ["str"]),
        ('{"web": {"id": "a"}}', "['web']", ["not a list of tasks", "jsonl"]),
        ('{"id": "a", "task_type": "x"}', "['id']", ["not a list of tasks", "jsonl"]),
    ],
)
def test_bad_tasks_name_their_position(tmp_path: Path, text: str, position: str, words: list[str]) -> None:
    err = _convert_error(tmp_path, text)
    assert err.position == position
    for word in words:
        assert word in str(err)


def test_jsonl_bad_task_names_its_line(tmp_path: Path) -> None:
    err = _convert_error(tmp_path, '{"id": "a", "task_type": "x"}\n{"id": "b"}\n', name="t.jsonl")
    assert err.position == "line 2"


def test_indexed_field_must_be_scalar(tmp_path: Path) -> None:
    err = _convert_error(tmp_path, '[{"id": "a", "task_type": "x", "level": [1]}]', index_fields=["level"])
    assert "'level'" in str(err) and err.position == "[0]"


def test_other_shapes_and_empty_inputs(tmp_path: Path) -> None:
    assert "starts with b'\"'" in str(_convert_error(tmp_path, '"just a string"'))
    assert "empty" in str(_convert_error(tmp_path, "  \n"))
    assert "no tasks" in str(_convert_error(tmp_path, "[]"))


def test_duplicate_ids_are_listed(tmp_path: Path) -> None:
    tasks = [{"id": k % 4, "task_type": "x", "v": k} for k in range(7)]  # ids 0..3, then 0, 1, 2 again
    err = _convert_error(tmp_path, json.dumps(tasks))
    assert "3 duplicate task id(s)" in str(err)
    for dup, where in (("0", "[4]"), ("1", "[5]"), ("2", "[6]")):
        assert f"'{dup}' (again at {where})" in str(err)
    assert "keep-last" in str(err)


def test_keep_last_keeps_the_last_occurrence(tmp_path: Path) -> None:
    tasks = [
        {"id": "a", "task_type": "x", "v": 1},
        {"id": "b", "task_type": "y"},
        {"id": "a", "task_type": "z"},
    ]
    src = write_json(tmp_path / "dup.json", tasks)
    summary = convert_tasks(src, tmp_path / "dup.db", on_duplicate="keep-last", progress=False)
    assert summary["count"] == 2 and summary["replaced"] == 1 and summary["types"] == {"y": 1, "z": 1}
    lib = TaskLibrary(tmp_path / "dup.db")
    assert lib.get("a") == {"id": "a", "task_type": "z"}
    assert lib.ids() == ["b", "a"]


def test_bad_options(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "o.db"
    for options, match in (
        ({"compression": "lz4"}, "unknown compression"),
        ({"on_duplicate": "keep-first"}, "on_duplicate"),
        ({"fmt": "xml"}, "unknown source format"),
        ({"id_field": "task_type"}, "must differ"),
        ({"index_fields": ["id"]}, "always indexed"),
        ({"index_fields": ["a", "a"]}, "twice"),
    ):
        with pytest.raises(ValueError, match=match):
            convert_tasks(source, dest, progress=False, **options)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_tasks(tmp_path / "missing.json", dest, progress=False)
    with pytest.raises(IsADirectoryError):
        convert_tasks(source, tmp_path, progress=False)
    assert not dest.exists()


# -- reading ---------------------------------------------------------------------------------------
def test_unknown_type_lists_known_types(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    with pytest.raises(UnknownTaskTypeError, match=r"'nope'.*'odd', 'type_00'"):
        lib.sample("nope", 1)
    for call in (lambda: lib.count("nope"), lambda: lib.ids("nope"), lambda: lib.allocate(1, 1, "nope")):
        with pytest.raises(UnknownTaskTypeError):
            call()


def test_asking_for_too_many(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    with pytest.raises(
        ValueError, match="asked for 11 distinct tasks of type 'type_00' but the library has only 10"
    ):
        lib.sample("type_00", 11)
    assert len(lib.sample("type_00", 11, seed=0, replace=True)) == 11
    with pytest.raises(ValueError, match="n must be"):
        lib.sample("type_00", -1)
    with pytest.raises(ValueError, match="only 10 are available"):
        lib.allocate(3, 4, "type_00")


def test_missing_ids_and_bad_filters(library_path: Path) -> None:
    lib = TaskLibrary(library_path)
    with pytest.raises(TaskNotFoundError, match="no task with id 'nope', 'nada'") as info:
        lib.get_many(["task-00000", "nope", "nada"])
    assert isinstance(info.value, KeyError)
    assert "nope" not in lib and "task-00000" in lib and 42 in lib
    with pytest.raises(ValueError, match="not an indexed field"):
        lib.ids(where={"description": "x"})
    with pytest.raises(ValueError, match="fields must be"):
        lib.get("task-00000", fields=[])


def test_not_a_library(tmp_path: Path) -> None:
    with pytest.raises(TaskLibraryError, match="does not exist"):
        TaskLibrary(tmp_path / "missing.db")
    with pytest.raises(TaskLibraryError, match="is a directory"):
        TaskLibrary(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(TaskLibraryError, match="not a valid task library"):
        TaskLibrary(junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    conn.commit()
    conn.close()
    with pytest.raises(TaskLibraryError, match="not a hivemem task library"):
        TaskLibrary(other)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(TaskLibraryError):
        TaskLibrary(empty)


def test_corrupt_library(library_path: Path, tmp_path: Path) -> None:
    data = bytearray(library_path.read_bytes())
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(TaskLibraryError):
        lib = TaskLibrary(truncated, check_source=False)
        list(lib.iter())
    # scribble over every page but the first: the header opens, reading tasks fails cleanly
    scribbled = tmp_path / "scribbled.db"
    rng = random.Random(1)
    for start in range(4096, len(data), 4096):
        data[start + 100 : start + 300] = rng.randbytes(200)
    scribbled.write_bytes(data)
    with pytest.raises(TaskLibraryError):
        lib = TaskLibrary(scribbled, check_source=False)
        list(lib.iter())
