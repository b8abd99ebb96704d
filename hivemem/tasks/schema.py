"""The on-disk layout of a task library (one SQLite file), shared by the writer and the reader.

Why this shape: one row per task in ``tasks`` (id, type, extra indexed fields) makes counting,
listing and sampling index-only; each top-level field of a task is a separate row in
``task_fields`` so that a worker asking for ``id``, ``task_type`` and ``workflow`` reads and
decodes only those bytes (the "lightweight task"); ``pos`` keeps the source's key order so a full
task round-trips exactly. ``meta`` says the file is ours and records the source it came from.
"""

from __future__ import annotations

FORMAT = "hivemem-tasks"
VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    task_type TEXT NOT NULL{extra_columns}
);
CREATE TABLE task_fields (
    task INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    name TEXT NOT NULL,
    codec INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE types (task_type TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""

# Built after the bulk insert: faster than maintaining them row by row.
INDEXES = (
    "CREATE INDEX tasks_by_type ON tasks (task_type)",
    "CREATE INDEX task_fields_by_task ON task_fields (task, pos)",
)


def extra_column(k: int) -> str:
    """Column name of the k-th extra indexed field (field names are user data: never in SQL)."""
    return f"x{k}"
