"""Setup errors stop a run (issue 20, item 4): a factory that fails, a job that cannot be loaded in
the worker processes. The run exits non-zero with the user's error once, where it happened and the
user's traceback, and records no item, so a plain rerun after the fix processes every item.

The user's job lives in its own temp folder (the "project"), imported by the CLI from its cwd.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pool_agents
import pytest

from hivemem.pool.results import read_results
from hivemem.pool.runner import run_parallel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
N = 200

JOB = """
import os
import time

FLAG = {flag!r}


def make():
    time.sleep(0.2)  # a slow start, like loading a model
    if not os.path.exists(FLAG):
        raise FileNotFoundError(f"model.bin is missing on this host (no {{FLAG}})")
    return {{"pid": os.getpid()}}


def work(obj, item):
    return {{"double": 2 * item["x"], "pid": obj["pid"]}}
"""


def _project(tmp_path: Path, flag: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "setupjob.py").write_text(JOB.format(flag=str(flag)))
    (project / "items.jsonl").write_text("".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(N)))
    return project


def _hivemem_run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`hivemem run` from the project folder, with only hivemem (this checkout) on PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "hivemem.app.cli", "run", *args, "--items", "items.jsonl"]
    cmd += ["--results", "out.jsonl", "--workers", "2", "--no-progress"]
    return subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True, timeout=300)


def test_a_broken_factory_stops_the_run_and_a_plain_rerun_after_the_fix_does_every_item(
    tmp_path: Path,
) -> None:
    """Regression: every item was recorded as failed (the factory re-run once per item), and the
    rerun after the fix skipped them all unless --retry-errors was given."""
    flag = tmp_path / "model.bin"
    project = _project(tmp_path, flag)
    broken = _hivemem_run(project, "setupjob:work", "--factory", "setupjob:make")
    assert broken.returncode == 2, (broken.stdout, broken.stderr)
    err = broken.stderr
    assert err.count("FileNotFoundError: model.bin is missing on this host") == 1, err  # the error, once
    assert "the factory setupjob:make failed in worker" in err and "process" in err, err  # where
    assert f'File "{project / "setupjob.py"}", line 11, in make' in err, err  # the user's traceback
    assert 'raise FileNotFoundError(f"model.bin is missing' in err, err
    assert "hivemem/pool" not in err and "_child.py" not in err, err  # not hivemem's internals
    out = project / "out.jsonl"
    assert not out.exists() or read_results(out) == {}  # no item recorded as failed

    flag.touch()  # the fix
    fixed = _hivemem_run(project, "setupjob:work", "--factory", "setupjob:make")
    assert fixed.returncode == 0, fixed.stderr
    assert f"{N} items: 0 already done, {N} ok, 0 errors" in fixed.stdout
    records = read_results(out)
    assert sorted(records) == list(range(N)) and all(r["ok"] for r in records.values())
    assert records[7]["result"]["double"] == 14


NOT_IN_WORKERS = """
import multiprocessing

if multiprocessing.parent_process() is not None:  # a worker process, not the driver
    raise ImportError("driveronly needs the licence server, reachable from the driver only")


def work(item):
    return item["x"]
"""


def test_a_job_that_cannot_be_imported_in_the_workers_stops_the_run(tmp_path: Path) -> None:
    """Regression: each item was recorded as failed with 'the worker could not load the function'."""
    project = _project(tmp_path, tmp_path / "unused")
    (project / "driveronly.py").write_text(NOT_IN_WORKERS)
    done = _hivemem_run(project, "driveronly:work")
    assert done.returncode == 2, (done.stdout, done.stderr)
    err = done.stderr
    assert "driveronly:work cannot be loaded in worker process" in err, err
    assert err.count("ImportError: driveronly needs the licence server") == 1, err
    assert f'File "{project / "driveronly.py"}", line 5, in <module>' in err, err
    assert "hivemem/pool" not in err and "frozen importlib" not in err, err
    out = project / "out.jsonl"
    assert not out.exists() or read_results(out) == {}


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_factory_failing_on_one_worker_only_stops_the_run(kind: str, tmp_path: Path) -> None:
    """The first factory failure on any worker stops the run (docs/pool.md says why): here exactly
    one of the three workers fails (it wins an O_EXCL race for a claim file), the others build."""
    from hivemem.errors import HivememError, RunSetupError

    claim = tmp_path / "claim"
    factory = functools.partial(pool_agents.fails_for_one_worker, str(claim))
    items = [{"id": i, "x": i} for i in range(50)]
    out = tmp_path / "out.jsonl"
    with pytest.raises(RunSetupError) as info:
        run_parallel(
            items, pool_agents.double_item, workers=3, factory=factory, results=out, kind=kind, progress=False
        )
    err = info.value
    assert isinstance(err, HivememError)
    assert "this worker has no GPU" in str(err) and "fails_for_one_worker" in str(err)
    assert ("a thread of process" if kind == "thread" else "(process ") in err.where
    assert "pool_agents.py" in err.remote_traceback
    assert read_results(out) == {}  # the factory runs before any item: nothing ran, nothing recorded


def test_item_errors_keep_their_contract(tmp_path: Path) -> None:
    """An item that raises is still that item's record, retried with retry_errors, never a stop."""
    items = [{"id": i, "x": i, "fail": i == 3} for i in range(10)]
    out = tmp_path / "out.jsonl"
    first = run_parallel(items, pool_agents.square_item, workers=2, results=out, progress=False)
    assert (first.ok, first.errors) == (9, 1)
    assert read_results(out)[3]["error_type"] == "KeyError"
    again = run_parallel(items, pool_agents.square_item, workers=2, results=out, progress=False)
    assert (again.skipped, again.ok, again.errors) == (10, 0, 0)
