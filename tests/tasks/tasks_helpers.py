"""Helpers for the task-library tests: a small generated library plus awkward hand-written tasks."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hivemem.tasks.synth import iter_tasks

ROOT = Path(__file__).resolve().parents[2]

# Tasks that stress the round trip: key order, unicode, integers beyond 64 bits, deep nesting,
# empty containers, nulls, floats, an integer id.
AWKWARD: list[dict[str, Any]] = [
    {
        "task_type": "odd",
        "id": "unicode-é-日本",
        "text": 'emoji 🐝 and quotes " \\ \n tab\t',
        "big": 123456789012345678901234567890,
        "neg": -(2**70),
        "floats": [0.1, 1e-300, 1.7976931348623157e308, -0.0, 3.0],
        "empty": {"list": [], "dict": {}, "str": ""},
        "null": None,
        "flags": [True, False],
    },
    {"id": 42, "task_type": "odd", "deep": json.loads("[" * 300 + "]" * 300), "z": 1, "a": 2},
]


def small_tasks(n: int = 60, types: int = 6) -> list[dict[str, Any]]:
    return [*iter_tasks(n, types, steps=2, description_words=12), *json.loads(json.dumps(AWKWARD))]


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def child_env() -> dict[str, str]:
    """Environment for child interpreters that import this checkout's hivemem."""
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


PYTHON = sys.executable
