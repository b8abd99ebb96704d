"""``TaskLibrary``: read tasks from a converted library, opened read-only, loading nothing up front.

Why SQLite opened ``mode=ro&immutable=1``: any number of processes can read the same file with no
locks and no writes, each reading only the tasks it asks for; the kernel's page cache holds the
file once for all of them. Connections are per thread and per process (a library object carried
across ``fork`` reconnects in the child), so one object is safe wherever it ends up.
Every returned task is freshly decoded: callers may mutate it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hivemem.errors import TaskLibraryError, TaskNotFoundError, UnknownTaskTypeError
from hivemem.infra.sqlitedb import Connections, in_chunks
from hivemem.tasks import codec, schema
from hivemem.tasks.allocation import plan_allocation

Task = dict[str, Any]
# Read with plain read() into a small private page cache, no mmap: pages the process maps count
# towards its PSS, pages it only reads stay in the kernel's cache, shared by every worker.
_CACHE_KIB = 256


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of ``path``, or None if it is gone: the cheap change check on open."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class TaskSourceChangedWarning(UserWarning):
    """The JSON file a library was converted from has changed since: the library may be stale."""


class TaskLibrary:
    """A read-only task library file made by ``convert_tasks`` / ``hivemem tasks convert``.

    Use (``tasks.db`` made by ``hivemem tasks convert``)::

        lib = TaskLibrary("tasks.db")
        lib.sample("web", 20, seed=7, fields=["id", "task_type", "workflow"])  # 20 dicts
    """

    def __init__(self, path: str | os.PathLike[str], *, check_source: bool = True) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "does not exist"
            raise TaskLibraryError(
                f"task library {self.path} {what}; "
                f"create one with `hivemem tasks convert SRC.json {self.path}`"
            )
        self._uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
        self._conns = Connections(self._connect)  # one per thread and process
        meta = dict(self._rows("SELECT key, value FROM meta", (), what="read its header"))
        if meta.get("format") != schema.FORMAT:
            raise TaskLibraryError(f"{self.path} is an SQLite file but not a hivemem task library")
        if meta.get("version") != str(schema.VERSION):
            raise TaskLibraryError(
                f"{self.path} is a task library of format version {meta.get('version')}; this hivemem reads "
                f"version {schema.VERSION}: convert the source again"
            )
        self.meta: dict[str, str] = meta
        self.id_field = meta["id_field"]
        self.type_field = meta["type_field"]
        self.index_fields: list[str] = json.loads(meta["index_fields"])
        self._types: dict[str, int] = dict(
            self._rows("SELECT task_type, count FROM types ORDER BY task_type", (), what="read its types")
        )
        if check_source:
            reason = self.source_changed()
            if reason:
                warnings.warn(
                    f"{meta['source_path']} {reason} since {self.path} was converted from it; "
                    "the library may "
                    f"be stale: run `hivemem tasks convert {meta['source_path']} {self.path}` again",
                    TaskSourceChangedWarning,
                    stacklevel=2,
                )

    # -- connections and queries -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise TaskLibraryError(f"{self.path}: cannot open: not a valid task library ({exc})") from None
        return conn

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def _rows(self, sql: str, params: Sequence[Any], what: str = "read it") -> list[tuple[Any, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise TaskLibraryError(f"{self.path}: cannot {what}: not a valid task library ({exc})") from None

    def _cursor(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        try:
            yield from self._conn().execute(sql, params)
        except sqlite3.DatabaseError as exc:
            raise TaskLibraryError(
                f"{self.path}: cannot read tasks: not a valid task library ({exc})"
            ) from None

    def _decode(self, codec_id: int, blob: bytes, name: str) -> Any:
        try:
            return codec.decode(codec_id, blob)
        except Exception as exc:  # zlib/zstd/JSON errors alike mean a damaged file
            raise TaskLibraryError(f"{self.path}: field {name!r} of a task is corrupt ({exc})") from None

    def close(self) -> None:
        """Close the connections this object opened (it reconnects if used again)."""
        self._conns.close()  # read-only and immutable: nothing to flush, no locks to release

    def __enter__(self) -> TaskLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- filters -------------------------------------------------------------------------------------
    def _check_type(self, task_type: str | None) -> None:
        if task_type is not None and task_type not in self._types:
            known = ", ".join(map(repr, self._types))
            raise UnknownTaskTypeError(f"unknown task type {task_type!r}; this library has: {known}")

    def _where(self, task_type: str | None, where: dict[str, Any] | None) -> tuple[str, list[Any]]:
        self._check_type(task_type)
        clauses: list[str] = []
        params: list[Any] = []
        if task_type is not None:
            clauses.append("task_type = ?")
            params.append(task_type)
        for name, value in (where or {}).items():
            if name not in self.index_fields:
                indexed = ", ".join(map(repr, self.index_fields)) or "none (convert with --index FIELD)"
                raise ValueError(
                    f"cannot filter on {name!r}: it is not an indexed field; indexed fields: {indexed}"
                )
            column = schema.extra_column(self.index_fields.index(name))
            if value is None:
                clauses.append(f"{column} IS NULL")
            else:
                if not isinstance(value, str | int | float):
                    raise TypeError(f"filter value for {name!r} must be a scalar, got {type(value).__name__}")
                clauses.append(f"{column} = ?")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @staticmethod
    def _field_filter(fields: Iterable[str] | str | None, column: str = "name") -> tuple[str, list[str]]:
        if fields is None:
            return "", []
        names = [fields] if isinstance(fields, str) else list(fields)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"fields must be a non-empty list of field names, got {fields!r}")
        return f" AND {column} IN ({', '.join('?' * len(names))})", names

    # -- the API -------------------------------------------------------------------------------------
    def types(self) -> list[str]:
        """The task types, sorted."""
        return list(self._types)

    def counts(self) -> dict[str, int]:
        """Number of tasks per type."""
        return dict(self._types)

    def count(self, task_type: str | None = None, where: dict[str, Any] | None = None) -> int:
        """Number of tasks (of ``task_type``, matching ``where`` on indexed fields)."""
        if not where:
            self._check_type(task_type)
            return self._types[task_type] if task_type is not None else sum(self._types.values())
        clause, params = self._where(task_type, where)
        return int(self._rows(f"SELECT COUNT(*) FROM tasks{clause}", params)[0][0])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, task_id: object) -> bool:
        return bool(self._rows("SELECT 1 FROM tasks WHERE id = ?", (str(task_id),)))

    def ids(self, task_type: str | None = None, where: dict[str, Any] | None = None) -> list[str]:
        """Task ids in source order."""
        clause, params = self._where(task_type, where)
        return [row[0] for row in self._rows(f"SELECT id FROM tasks{clause} ORDER BY rowid", params)]

    def values(self, field: str) -> dict[Any, int]:
        """Distinct values of an indexed field with their task counts."""
        if field not in self.index_fields:
            raise ValueError(f"{field!r} is not an indexed field; indexed fields: {self.index_fields}")
        column = schema.extra_column(self.index_fields.index(field))
        return dict(self._rows(f"SELECT {column}, COUNT(*) FROM tasks GROUP BY {column} ORDER BY 2 DESC", ()))

    def _fetch(
        self, rowids: Sequence[int], fields: Iterable[str] | str | None
    ) -> dict[int, list[tuple[str, int, bytes]]]:
        name_clause, names = self._field_filter(fields)
        rows: dict[int, list[tuple[str, int, bytes]]] = {rowid: [] for rowid in rowids}
        unique = list(rows)
        for marks, part in in_chunks(unique):
            sql = (
                "SELECT task, name, codec, value FROM task_fields "
                f"WHERE task IN ({marks}){name_clause} ORDER BY task, pos"
            )
            for task, name, codec_id, value in self._cursor(sql, [*part, *names]):
                rows[task].append((name, codec_id, value))
        return rows

    def _build(self, raw: list[tuple[str, int, bytes]]) -> Task:
        return {name: self._decode(codec_id, value, name) for name, codec_id, value in raw}

    def _rowids(self, task_ids: Sequence[Any]) -> list[int]:
        keys = [str(t) for t in task_ids]
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(keys))
        for marks, part in in_chunks(unique):
            sql = f"SELECT id, rowid FROM tasks WHERE id IN ({marks})"
            found.update(self._rows(sql, part))
        missing = [k for k in unique if k not in found]
        if missing:
            listed = ", ".join(map(repr, missing[:10])) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise TaskNotFoundError(f"no task with id {listed} in {self.path}")
        return [found[k] for k in keys]

    def get(self, task_id: str | int, fields: Iterable[str] | str | None = None) -> Task:
        """The task with this id (a fresh dict); ``fields`` keeps only those top-level fields."""
        return self.get_many([task_id], fields)[0]

    def get_many(
        self, task_ids: Sequence[str | int], fields: Iterable[str] | str | None = None
    ) -> list[Task]:
        """The tasks with these ids, in the order given (e.g. one worker's share of ``allocate``)."""
        rowids = self._rowids(task_ids)
        raw = self._fetch(rowids, fields)
        return [self._build(raw[r]) for r in rowids]

    def sample(
        self,
        task_type: str | None,
        n: int,
        seed: int | str | None = None,
        replace: bool = False,
        *,
        fields: Iterable[str] | str | None = None,
        where: dict[str, Any] | None = None,
    ) -> list[Task]:
        """``n`` random tasks of ``task_type`` (None: any type), reproducible with ``seed``.

        Without ``replace`` the tasks are distinct, and asking for more than exist is an error.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        clause, params = self._where(task_type, where)
        rowids = [row[0] for row in self._rows(f"SELECT rowid FROM tasks{clause} ORDER BY rowid", params)]
        rng = random.Random(seed)
        if replace:
            if n and not rowids:
                raise ValueError(f"no tasks of type {task_type!r} match {where!r}")
            picked = rng.choices(rowids, k=n)
        elif n > len(rowids):
            of = f" of type {task_type!r}" if task_type is not None else ""
            matching = f" matching {where!r}" if where else ""
            raise ValueError(
                f"asked for {n} distinct tasks{of}{matching} but the library has "
                f"only {len(rowids)}; ask for fewer or pass replace=True to draw with replacement"
            )
        else:
            picked = rng.sample(rowids, n)
        raw = self._fetch(picked, fields)
        return [self._build(raw[r]) for r in picked]

    def iter(
        self,
        task_type: str | None = None,
        fields: Iterable[str] | str | None = None,
        where: dict[str, Any] | None = None,
    ) -> Iterator[Task]:
        """Every task (of ``task_type``) in source order, one at a time."""
        clause, params = self._where(task_type, where)
        name_clause, names = self._field_filter(fields, "f.name")
        sql = (
            f"SELECT f.task, f.name, f.codec, f.value FROM (SELECT rowid FROM tasks{clause}) t "
            f"JOIN task_fields f ON f.task = t.rowid{name_clause} ORDER BY f.task, f.pos"
        )
        for _, group in itertools.groupby(self._cursor(sql, [*params, *names]), key=lambda row: row[0]):
            yield self._build([row[1:] for row in group])

    def __iter__(self) -> Iterator[Task]:
        return self.iter()

    def allocate(
        self,
        workers: int,
        per_worker: int,
        task_type: str | None = None,
        seed: int | str | None = None,
        replace: bool = False,
        *,
        where: dict[str, Any] | None = None,
    ) -> list[list[str]]:
        """A deterministic plan: ``workers`` disjoint lists of ``per_worker`` task ids each.

        Worker ``w`` then loads only its own tasks with ``get_many(plan[w])``. See
        ``plan_allocation`` for ``replace``.
        """
        return plan_allocation(self.ids(task_type, where), workers, per_worker, seed, replace)

    # -- provenance ----------------------------------------------------------------------------------
    def source_changed(self, deep: bool = False) -> str | None:
        """Why the source JSON differs from the one converted (None if it looks the same or is gone).

        Size first; on an equal size with a new mtime (or with ``deep``) the SHA-256 decides.
        """
        source = Path(self.meta.get("source_path", ""))
        identity = _file_identity(source) if self.meta.get("source_path") else None
        if identity is None:
            return None
        size, mtime_ns = identity
        if size != int(self.meta["source_size"]):
            return f"has changed size ({self.meta['source_size']} -> {size} bytes)"
        if deep or mtime_ns != int(self.meta["source_mtime_ns"]):
            import hashlib  # only here: loading OpenSSL costs every worker memory

            digest = hashlib.sha256()
            try:
                with source.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            except OSError:
                return None
            if digest.hexdigest() != self.meta["source_sha256"]:
                return "has changed content"
        return None

    def info(self) -> dict[str, Any]:
        """Header, counts and provenance, as printed by ``hivemem tasks info``."""
        return {
            "path": str(self.path),
            "bytes": self.path.stat().st_size,
            "count": self.count(),
            "types": self.counts(),
            "id_field": self.id_field,
            "type_field": self.type_field,
            "index_fields": {name: self.values(name) for name in self.index_fields},
            "compression": self.meta.get("compression"),
            "source": {
                "path": self.meta.get("source_path"),
                "bytes": int(self.meta.get("source_size", 0)),
                "sha256": self.meta.get("source_sha256"),
                "changed": self.source_changed(),
            },
            "created_at": self.meta.get("created_at"),
        }

    def __repr__(self) -> str:
        return f"TaskLibrary({str(self.path)!r}, tasks={self.count()}, types={len(self._types)})"
