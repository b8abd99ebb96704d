"""A deterministic synthetic task library shaped like a benchmark harness's ``*_with_workflows.json``.

Why: the benchmark needs a realistic 62 MB file (630 tasks, 10 types, ~99 KB each: a long
description and a large nested pre-generated workflow), and the tests need the same shape at a few
KB — without shipping either. Same seed, same bytes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

Shape = Literal["list", "by_type", "jsonl"]

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "xe", "zu", "pra", "ost", "gen", "dal"]


def _vocabulary(rng: random.Random, size: int = 600) -> list[str]:
    return ["".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4))) for _ in range(size)]


def _sentence(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choices(vocab, k=rng.randint(lo, hi)))


def _step(rng: random.Random, vocab: list[str], number: int, depth: int) -> dict[str, Any]:
    step: dict[str, Any] = {
        "step": number,
        "action": rng.choice(vocab),
        "tool": rng.choice(["browser", "shell", "python", "search", "editor", "sql"]),
        "params": {
            "query": _sentence(rng, vocab, 10, 30),
            "limit": rng.randint(1, 100),
            "threshold": round(rng.random(), 4),
            "filters": [rng.choice(vocab) for _ in range(rng.randint(1, 5))],
            "strict": rng.random() < 0.5,
        },
        "expected": _sentence(rng, vocab, 20, 60),
        "on_error": None
        if rng.random() < 0.7
        else {"retry": rng.randint(1, 3), "fallback": rng.choice(vocab)},
    }
    if depth > 0:
        step["substeps"] = [_step(rng, vocab, k, depth - 1) for k in range(rng.randint(1, 3))]
    return step


def make_task(
    rng: random.Random, vocab: list[str], task_id: str, task_type: str, steps: int, description_words: int
) -> dict[str, Any]:
    """One task: id, type, difficulty, a long description and a nested workflow of ``steps`` steps."""
    return {
        "id": task_id,
        "task_type": task_type,
        "difficulty": rng.choice(["easy", "medium", "hard"]),
        "description": _sentence(rng, vocab, description_words, description_words + 20),
        "workflow": {
            "name": f"{task_type} workflow {task_id}",
            "version": rng.randint(1, 9),
            "steps": [_step(rng, vocab, k, depth=2) for k in range(steps)],
        },
        "metadata": {
            "source": "synthetic",
            "tags": rng.sample(vocab, 5),
            "score": round(rng.random() * 10, 3),
        },
    }


def iter_tasks(
    n_tasks: int = 630,
    n_types: int = 10,
    *,
    steps: int = 18,
    description_words: int = 1400,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Yield ``n_tasks`` tasks, round-robin over ``n_types`` types, deterministically from ``seed``.

    The defaults give ~99 KB of JSON per task (62 MB for 630 tasks); tests pass small ``steps`` and
    ``description_words``.
    """
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    types = [f"type_{k:02d}" for k in range(n_types)]
    for i in range(n_tasks):
        task_type = types[i % n_types]
        yield make_task(rng, vocab, f"task-{i:05d}", task_type, steps, description_words)


def write_library(path: str | Path, tasks: Iterator[dict[str, Any]], shape: Shape = "list") -> Path:
    """Write ``tasks`` as a JSON list, a JSON dict of lists keyed by type (``by_type``), or JSONL.

    ``list`` and ``jsonl`` stream; ``by_type`` groups in memory first (fine for generated data).
    """
    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        if shape == "jsonl":
            for task in tasks:
                out.write(json.dumps(task, ensure_ascii=False))
                out.write("\n")
        elif shape == "list":
            out.write("[\n")
            for k, task in enumerate(tasks):
                if k:
                    out.write(",\n")
                out.write(json.dumps(task, ensure_ascii=False))
            out.write("\n]\n")
        elif shape == "by_type":
            groups: dict[str, list[dict[str, Any]]] = {}
            for task in tasks:
                groups.setdefault(task["task_type"], []).append(task)
            json.dump(groups, out, ensure_ascii=False)
        else:
            raise ValueError(f"unknown shape {shape!r}; expected 'list', 'by_type' or 'jsonl'")
    return path
