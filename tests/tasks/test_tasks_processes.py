"""25 real processes read one library at the same moment; each gets exactly its allocated tasks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from tasks_helpers import PYTHON, child_env

from hivemem.tasks import TaskLibrary

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

WORKERS = 25

READER = r"""
import hashlib, json, os, sys, time
from hivemem.tasks import TaskLibrary
path, gate, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
lib = TaskLibrary(path)
plan = lib.allocate(25, 2, seed=11)        # every worker computes the same plan
while not os.path.exists(gate):             # start reading together
    time.sleep(0.005)
mine = lib.get_many(plan[index])
light = lib.sample("type_05", 4, seed=index, fields=["id", "task_type", "workflow"])
count = sum(1 for _ in lib.iter("type_05"))
digest = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()
print(json.dumps({"ids": [str(t["id"]) for t in mine], "digest": digest, "light": [t["id"] for t in light],
                  "count": count}))
"""


def test_25_processes_read_at_once(library_path: Path, source: Path, tmp_path: Path) -> None:
    truth = {str(t["id"]): t for t in json.loads(source.read_text(encoding="utf-8"))}
    gate = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", READER, str(library_path), str(gate), str(k)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(WORKERS)
    ]
    time.sleep(0.5)
    gate.touch()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    plan = TaskLibrary(library_path).allocate(WORKERS, 2, seed=11)
    seen: list[str] = []
    for k, report in enumerate(reports):
        assert report["ids"] == plan[k]
        expected = [truth[i] for i in plan[k]]
        assert report["digest"] == hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
        assert report["count"] == 10 and len(set(report["light"])) == 4
        seen.extend(report["ids"])
    assert len(seen) == len(set(seen)) == 2 * WORKERS  # no task loaded by two workers


# What a task worker needs: hivemem's task reader, SQLite and the standard library. Loading a memory
# store's or the model's dependencies here would cost every one of 25 workers ~10 MB or more.
HEAVY_FOR_A_TASK_WORKER = ("numpy", "onnxruntime", "tokenizers", "torch", "httpx", "typer", "rich")

LIGHT_WORKER = r"""
import json, sys
import hivemem
from hivemem import TaskLibrary
lib = TaskLibrary(sys.argv[1])
tasks = lib.sample("type_05", 3, seed=1, fields=["id", "task_type", "workflow"])
whole = lib.get(tasks[0]["id"])
print(json.dumps({"got": whole["id"], "loaded": [m for m in sys.argv[2].split(",") if m in sys.modules]}))
"""


def test_a_task_worker_loads_no_numpy_nor_model_runtime(library_path: Path) -> None:
    """``from hivemem import TaskLibrary`` and sampling stay light (issue 20: numpy had crept in
    through the shared SQLite helpers, ~10 MB PSS more in each of 25 workers)."""
    out = subprocess.run(
        [PYTHON, "-c", LIGHT_WORKER, str(library_path), ",".join(HEAVY_FOR_A_TASK_WORKER)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["got"] and result["loaded"] == []
