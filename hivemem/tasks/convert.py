"""Convert a JSON task library into a read-only SQLite task library, once.

Why: every worker ``json.load``-ing a whole large library to pick 20 tasks holds all of it parsed
(about twice the file) and waits for the parse (docs/tasks.md#measured); converted once, each
worker reads only its tasks. The conversion streams the source (one
task in memory at a time), writes into a temp file next to ``dest`` and renames it into place, so
readers see either the old library or the complete new one — never a half-written file, even if
the converter is killed. A full disk is a ``DiskFull`` naming the destination; the temp file is
removed and the destination untouched.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from hivemem.errors import TaskLibraryError, TaskSourceError
from hivemem.infra.sqlitedb import disk_full
from hivemem.tasks import codec, schema
from hivemem.tasks.source import DEFAULT_MAX_DEPTH, BigIntegerError, check_max_depth, iter_source

OnDuplicate = Literal["error", "keep-last"]
_SCALARS = (str, int, float, bool, type(None))
_FLUSH_ROWS = 2000
_FLUSH_BYTES = 8 << 20
_MAX_LISTED = 20


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _remove_stale_temps(dest: Path) -> None:
    """Delete temp files left by converters that died (kill -9, power loss) before renaming."""
    for leftover in dest.parent.glob(f".{dest.name}.tmp-*"):
        try:
            pid = int(leftover.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_options(
    id_field: str, type_field: str, index_fields: Sequence[str], compression: str, on_duplicate: str
) -> list[str]:
    codec.check_compression(compression)
    if on_duplicate not in ("error", "keep-last"):
        raise ValueError(f"unknown on_duplicate {on_duplicate!r}; expected 'error' or 'keep-last'")
    for name, value in (("id_field", id_field), ("type_field", type_field)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if id_field == type_field:
        raise ValueError(f"id_field and type_field are both {id_field!r}; they must differ")
    fields = [index_fields] if isinstance(index_fields, str) else list(index_fields)
    for name in fields:
        if not isinstance(name, str) or not name:
            raise ValueError(f"index field names must be non-empty strings, got {name!r}")
        if name in (id_field, type_field):
            raise ValueError(f"{name!r} is the id or type field, which is always indexed")
    if len(set(fields)) != len(fields):
        raise ValueError(f"index fields listed twice: {fields}")
    return fields


def _task_key(task: Any, position: str, group: str | None, id_field: str, type_field: str) -> tuple[str, str]:
    """Validate one task; return its (id, type) keys. Fills in the type from the group key."""
    if not isinstance(task, dict):
        raise TaskSourceError(
            f"task {position} is {type(task).__name__} {str(task)[:60]!r}, not a JSON object",
            position=position,
        )
    if id_field not in task:
        keys = ", ".join(map(repr, list(task)[:12]))
        raise TaskSourceError(
            f"task {position} has no id field {id_field!r} (its fields: {keys}); pick the id field with "
            "id_field= / --id-field",
            position=position,
        )
    task_id = task[id_field]
    if isinstance(task_id, bool) or not isinstance(task_id, str | int):
        raise TaskSourceError(
            f"task {position}: id field {id_field!r} is {task_id!r}; ids must be strings or integers",
            position=position,
        )
    if type_field not in task:
        if group is None:
            keys = ", ".join(map(repr, list(task)[:12]))
            raise TaskSourceError(
                f"task {position} (id {task_id!r}) has no type field {type_field!r} (its fields: {keys}); "
                "pick the type field with type_field= / --type-field",
                position=position,
            )
        task[type_field] = group
    task_type = task[type_field]
    if not isinstance(task_type, str) or not task_type:
        raise TaskSourceError(
            f"task {position} (id {task_id!r}): type field {type_field!r} is {task_type!r}; "
            "types must be non-empty strings",
            position=position,
        )
    return str(task_id), task_type


def _index_values(task: dict[str, Any], position: str, fields: list[str]) -> list[Any]:
    values = [task.get(name) for name in fields]
    for name, value in zip(fields, values, strict=True):
        if not isinstance(value, _SCALARS):
            raise TaskSourceError(
                f"task {position}: indexed field {name!r} is a {type(value).__name__}; indexed fields must "
                "be strings, numbers, booleans or null",
                position=position,
            )
    return values


def _summary_of_duplicates(duplicates: list[tuple[str, str]], total: int) -> str:
    listed = ", ".join(f"{task_id!r} (again at {position})" for task_id, position in duplicates[:_MAX_LISTED])
    more = f" and {total - _MAX_LISTED} more" if total > _MAX_LISTED else ""
    return (
        f"{total} duplicate task id(s): {listed}{more}; fix the source or pass on_duplicate='keep-last' "
        "(--on-duplicate keep-last) to keep the last occurrence of each"
    )


def _write(
    conn: sqlite3.Connection,
    items: Iterable[tuple[str, str | None, Any]],
    id_field: str,
    type_field: str,
    fields: list[str],
    compression: str,
    on_duplicate: str,
) -> tuple[int, int]:
    """Insert every task; return (tasks kept, tasks replaced by a later duplicate)."""
    columns = "".join(f", {schema.extra_column(k)}" for k in range(len(fields)))
    marks = ", ?" * len(fields)
    insert_task = f"INSERT INTO tasks (rowid, id, task_type{columns}) VALUES (?, ?, ?{marks})"
    pending: list[tuple[int, int, str, int, bytes]] = []
    pending_bytes = 0
    duplicates: list[tuple[str, str]] = []
    duplicate_count = replaced = 0
    rowid = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        conn.executemany(
            "INSERT INTO task_fields (task, pos, name, codec, value) VALUES (?, ?, ?, ?, ?)", pending
        )
        pending, pending_bytes = [], 0

    for position, group, task in items:
        task_id, task_type = _task_key(task, position, group, id_field, type_field)
        extra = _index_values(task, position, fields)
        rowid += 1
        try:
            conn.execute(insert_task, (rowid, task_id, task_type, *extra))
        except sqlite3.IntegrityError:
            if on_duplicate == "error":
                duplicate_count += 1
                if len(duplicates) < _MAX_LISTED:
                    duplicates.append((task_id, position))
                continue
            flush()
            (old,) = conn.execute("SELECT rowid FROM tasks WHERE id = ?", (task_id,)).fetchone()
            conn.execute("DELETE FROM task_fields WHERE task = ?", (old,))
            conn.execute("DELETE FROM tasks WHERE rowid = ?", (old,))
            conn.execute(insert_task, (rowid, task_id, task_type, *extra))
            replaced += 1
        if duplicate_count:
            continue  # the conversion fails anyway; keep scanning only to list every duplicate
        for pos, (name, value) in enumerate(task.items()):
            kind, blob = codec.encode(value, compression)
            pending.append((rowid, pos, name, kind, blob))
            pending_bytes += len(blob)
        if len(pending) >= _FLUSH_ROWS or pending_bytes >= _FLUSH_BYTES:
            flush()
    if duplicate_count:
        raise TaskSourceError(_summary_of_duplicates(duplicates, duplicate_count))
    flush()
    return rowid - replaced - duplicate_count, replaced


def convert_tasks(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    id_field: str = "id",
    type_field: str = "task_type",
    index_fields: Sequence[str] = (),
    compression: str = "none",
    fmt: str = "auto",
    on_duplicate: OnDuplicate = "error",
    progress: bool | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Convert the JSON task library ``src`` into the task library file ``dest``; return a summary.

    ``src``: a JSON list of tasks, a dict of lists keyed by task type (a task without a type field
    gets the key as its type), or JSONL (``fmt="jsonl"`` or a ``.jsonl``/``.ndjson`` suffix).
    ``index_fields``: extra top-level scalar fields (e.g. ``difficulty``) to filter on with
    ``where=``. ``compression``: ``none``, ``zlib`` or ``zstd`` for values of 512 bytes or more.
    ``progress``: a byte progress bar on stderr (default: when stderr is a terminal).
    ``max_depth``: levels of JSON nesting allowed (default 512, at most 900; see ``source``).

    Raises ``TaskSourceError`` (a ``ValueError``) for malformed JSON (with line and column), nesting
    past ``max_depth`` (with its position), tasks without an id or type (naming their position) and
    duplicate ids (listing them); ``TaskLibraryError`` if ``dest`` exists and is not a task library
    (it is never overwritten). ``dest`` is replaced atomically, only once the new library is complete.
    """
    fields = _check_options(id_field, type_field, index_fields, compression, on_duplicate)
    max_depth = check_max_depth(max_depth)
    src_path, dest_path = Path(src), Path(dest)
    if dest_path.is_dir():
        raise IsADirectoryError(f"destination {dest_path} is a directory; give a file name like tasks.db")
    if src_path.exists() and dest_path.exists() and src_path.resolve() == dest_path.resolve():
        raise ValueError(f"source and destination are the same file: {src_path}")
    _check_replaceable(dest_path)
    started = time.perf_counter()
    try:
        dest_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create the directory of {dest_path}: {exc.strerror}") from None
    _remove_stale_temps(dest_path)

    options = (id_field, type_field, fields, compression, fmt, on_duplicate, progress, max_depth)
    try:
        return _convert(src_path, dest_path, *options, backend=None, started=started)
    except BigIntegerError:
        # yajl cannot hold integers beyond 64 bits; ijson's pure-Python parser can (slowly)
        if not src_path.is_file():
            raise
        return _convert(src_path, dest_path, *options, backend="python", started=started)


def _check_replaceable(dest: Path) -> None:
    """Refuse to replace an existing file that is not a task library (a typo must not cost data)."""
    if not dest.exists() and not dest.is_symlink():
        return
    from hivemem.tasks.library import TaskLibrary

    try:
        TaskLibrary(dest, check_source=False).close()
    except (TaskLibraryError, OSError) as exc:
        raise TaskLibraryError(
            f"destination {dest} exists and is not a hivemem task library ({exc}); refusing to replace "
            "it: delete it first or choose another destination"
        ) from None


def _convert(
    src_path: Path,
    dest_path: Path,
    id_field: str,
    type_field: str,
    fields: list[str],
    compression: str,
    fmt: str,
    on_duplicate: str,
    progress: bool | None,
    max_depth: int,
    *,
    backend: str | None,
    started: float,
) -> dict[str, Any]:
    from tqdm import tqdm  # the writer side only: workers never import it

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=None, unit="B", unit_scale=True, desc=f"convert {src_path.name}", disable=not show)
    info, items = iter_source(src_path, fmt, on_bytes=bar.update, backend=backend, max_depth=max_depth)
    bar.total = info.size or None
    temp = _temp_name(dest_path)
    try:
        try:
            conn = sqlite3.connect(temp, isolation_level=None)
            conn.execute("PRAGMA user_version")  # opens the file: fails here if it cannot be created
        except sqlite3.OperationalError as exc:  # "unable to open database file": say where
            items.close()
            bar.close()
            raise OSError(
                f"cannot write the task library {dest_path} (temp file {temp.name}): {exc}"
            ) from None
        try:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            extra = "".join(f",\n    {schema.extra_column(k)}" for k in range(len(fields)))
            conn.executescript(schema.SCHEMA.format(extra_columns=extra))
            conn.execute("BEGIN")
            count, replaced = _write(conn, items, id_field, type_field, fields, compression, on_duplicate)
            if count == 0:
                raise TaskSourceError(f"{src_path}: no tasks found; refusing to write an empty library")
            conn.execute("INSERT INTO types SELECT task_type, COUNT(*) FROM tasks GROUP BY task_type")
            types = dict(conn.execute("SELECT task_type, count FROM types ORDER BY task_type").fetchall())
            for statement in schema.INDEXES:
                conn.execute(statement)
            for k in range(len(fields)):
                conn.execute(
                    f"CREATE INDEX tasks_by_{schema.extra_column(k)} ON tasks ({schema.extra_column(k)})"
                )
            meta = {
                "format": schema.FORMAT,
                "version": str(schema.VERSION),
                "id_field": id_field,
                "type_field": type_field,
                "index_fields": json.dumps(fields),
                "compression": compression,
                "count": str(count),
                "source_path": info.path,
                "source_size": str(info.size),
                "source_mtime_ns": str(info.mtime_ns),
                "source_sha256": info.sha256,
                "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
            conn.execute("COMMIT")
            if replaced:
                conn.execute("VACUUM")  # give back the pages of replaced tasks
        finally:
            items.close()
            conn.close()
            bar.close()
        _fsync(temp)
        temp.chmod(0o444)  # readers open it immutable: nobody should write to it in place
        os.replace(temp, dest_path)
        _fsync(dest_path.parent, directory=True)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, sqlite3.Error | OSError):
            full = disk_full(exc, f"cannot write the task library {dest_path} (temp file {temp.name})")
            if full is not None and full is not exc:
                raise full from None
            if isinstance(exc, sqlite3.Error):  # an I/O error, a damaged temp file: one line, no traceback
                raise TaskLibraryError(f"cannot write the task library {dest_path}: {exc}") from None
        raise
    summary = {
        "path": str(dest_path),
        "count": count,
        "types": types,
        "replaced": replaced,
        "compression": compression,
        "bytes": dest_path.stat().st_size,
        "source_bytes": info.size,
        "source_sha256": info.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }
    _register(dest_path, summary)
    return summary


LIBRARIES = "libraries"  # the registry kind (hivemem.infra.registry) the fleet page lists
MAX_REGISTERED_TYPES = 20  # task types named in a library's registry entry (the count covers all)


def _register(dest: Path, summary: dict[str, Any]) -> None:
    """Record the new library in the machine's library registry, keyed by its path (a reconversion
    replaces the entry). The library is immutable once renamed into place, so its counts are taken
    now and the fleet page reads only this entry. Best effort: it never fails a conversion."""
    import hashlib

    from hivemem.infra import registry

    where = str(dest.resolve())
    ranked = sorted(summary["types"].items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REGISTERED_TYPES]
    types = {str(k)[:100]: v for k, v in ranked}  # keeps the entry small whatever the names
    entry = {
        **registry.here(),
        "path": where,
        "tasks": summary["count"],
        "types": types,
        "type_count": len(summary["types"]),
        "bytes": summary["bytes"],
        "converted": time.time(),
    }
    name = hashlib.blake2b(where.encode(), digest_size=8).hexdigest()
    with contextlib.suppress(OSError, ValueError):
        registry.put(LIBRARIES, name, entry)
