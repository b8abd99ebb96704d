"""The task library: convert a big JSON task file once, then let every worker read only its tasks.

``TaskLibrary`` (reading) imports only sqlite3 and json/orjson, so a worker stays light;
``convert_tasks`` (writing: ijson, tqdm) is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hivemem.errors import TaskLibraryError, TaskNotFoundError, TaskSourceError, UnknownTaskTypeError
from hivemem.tasks.library import TaskLibrary, TaskSourceChangedWarning

if TYPE_CHECKING:  # pragma: no cover
    from hivemem.tasks.convert import convert_tasks

__all__ = [
    "TaskLibrary",
    "TaskLibraryError",
    "TaskNotFoundError",
    "TaskSourceChangedWarning",
    "TaskSourceError",
    "UnknownTaskTypeError",
    "convert_tasks",
]


def __getattr__(name: str) -> Any:
    if name == "convert_tasks":
        from hivemem.tasks.convert import convert_tasks

        return convert_tasks
    raise AttributeError(f"module 'hivemem.tasks' has no attribute {name!r}")
