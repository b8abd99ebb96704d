"""The errors of the task library, each naming what is wrong and where.

Why separate classes: scripts and the CLI need to tell "your source JSON is broken at line 12"
from "this file is not a task library" from "no such task type" without parsing messages, and
none of them may surface as a bare sqlite3 or ijson traceback.
"""

from __future__ import annotations


class TaskLibraryError(Exception):
    """The library file is missing, not a hivemem task library, of an unknown version, or corrupt."""


class TaskSourceError(ValueError):
    """The source JSON cannot be converted: malformed JSON, a task without id/type, duplicate ids.

    ``line``/``column`` (1-based) and ``offset`` (0-based byte) locate malformed JSON where known;
    ``position`` names the offending task (``[17]``, ``['web'][3]``, ``line 18``) for task-level
    problems.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        column: int | None = None,
        offset: int | None = None,
        position: str | None = None,
    ) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.offset = offset
        self.position = position


class UnknownTaskTypeError(ValueError):
    """A task type that the library does not contain; the message lists the known ones."""


class TaskNotFoundError(KeyError):
    """No task with that id. A ``KeyError`` (mapping semantics) whose message reads normally."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"
