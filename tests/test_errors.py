"""The one error tree: every error hivemem raises on purpose is a ``hivemem.HivememError``, exported
flat from ``hivemem``, with the built-in bases callers (and Mem0 users) rely on, and picklable with
its fields (pool errors cross process boundaries)."""

from __future__ import annotations

import inspect
import pickle

import pytest

import hivemem
from hivemem import errors

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _tree() -> list[type[BaseException]]:
    return [
        obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
    ]


def test_every_error_is_a_hivemem_error_exported_from_hivemem() -> None:
    classes = _tree()
    assert len(classes) >= 25
    for cls in classes:
        assert issubclass(cls, hivemem.HivememError), cls
        assert getattr(hivemem, cls.__name__) is cls, f"hivemem.{cls.__name__} is not exported"


@pytest.mark.parametrize(
    ("name", "builtin"),
    [
        ("MemoryNotFound", ValueError),  # Mem0 raises ValueError for an unknown id
        ("LimitExceeded", ValueError),
        ("TaskSourceError", ValueError),
        ("UnknownTaskTypeError", ValueError),
        ("TaskNotFoundError", KeyError),
        ("CallTimeout", TimeoutError),
        ("EmbedderUnavailable", ConnectionError),
        ("ServiceBusy", RuntimeError),
        ("QueueFull", RuntimeError),
        ("ModelNotPrepared", RuntimeError),
        ("LLMError", RuntimeError),
    ],
)
def test_builtin_bases_are_kept(name: str, builtin: type[BaseException]) -> None:
    assert issubclass(getattr(hivemem, name), builtin)


def test_errors_with_fields_survive_pickling() -> None:
    limit = hivemem.LimitExceeded("top_k is 2e9", limit_name="MAX_TOP_K", limit=10, field="top_k")
    back = pickle.loads(pickle.dumps(limit))
    assert (type(back), str(back), back.limit_name, back.limit, back.field) == (
        hivemem.LimitExceeded,
        "top_k is 2e9",
        "MAX_TOP_K",
        10,
        "top_k",
    )
    crashed = pickle.loads(pickle.dumps(hivemem.WorkerCrashed("died", pid=7, exitcode=-9)))
    assert (crashed.pid, crashed.exitcode) == (7, -9)


def test_the_parts_raise_the_tree_types() -> None:
    """The old import paths name the very same classes (one definition each)."""
    from hivemem.embed.queue import QueueFull
    from hivemem.pool import WorkerExited
    from hivemem.tasks import TaskLibraryError

    assert QueueFull is hivemem.QueueFull
    assert WorkerExited is hivemem.WorkerExited
    assert TaskLibraryError is hivemem.TaskLibraryError
