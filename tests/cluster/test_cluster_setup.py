"""Cluster runs carry the user's code, and setup errors stop them (issue 20, items 4 and 5).

The Dask scheduler and workers here are real processes started *outside* the project: cwd in
their own temp folder and only hivemem on PYTHONPATH. The user's job lives in a separate temp
folder that only the driver has on its path (the CLI imports it from its cwd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helpers import ROOT, DaskCluster

from hivemem.pool.results import read_results
from hivemem.pool.runner import run_parallel

pytestmark = pytest.mark.slow
N = 200

# A helper module used the way people write them: imported as a module, with a lock made at import
# (cloudpickle's pickle-by-value would have to pickle that lock), and a factory that reads a file.
HELPER = """
import threading

LOCK = threading.Lock()


def double(x):
    with LOCK:
        return 2 * x
"""

JOB = """
import os
import time

import dask_distributed_helper
import distributed

FLAG = {flag!r}


def make():
    time.sleep(0.2)  # a slow start, like loading a model
    if not os.path.exists(FLAG):
        raise FileNotFoundError(f"model.bin is missing on this host (no {{FLAG}})")
    return {{"worker": distributed.get_worker().name, "pid": os.getpid()}}


def make_on_w0_only():
    if distributed.get_worker().name != "w0":
        raise FileNotFoundError("this host lacks model.bin")
    return {{"worker": "w0", "pid": os.getpid()}}


def work(obj, item):
    return {{"double": dask_distributed_helper.double(item["x"]), "worker": obj["worker"], "pid": obj["pid"]}}
"""


@pytest.fixture(scope="module")
def outside() -> Iterator[DaskCluster]:
    """A scheduler and two workers with only hivemem: no project folder, no test helpers."""
    cluster = DaskCluster(workers=2, outside=True)
    try:
        yield cluster
    finally:
        cluster.close()


def _project(tmp_path: Path, flag: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "clusterjob.py").write_text(JOB.format(flag=str(flag)))
    (project / "dask_distributed_helper.py").write_text(HELPER)
    (project / "items.jsonl").write_text("".join(json.dumps({"id": i, "x": i}) + "\n" for i in range(N)))
    return project


def _importable_on_workers(address: str, name: str) -> set[bool]:
    import importlib.util

    from distributed import Client

    def probe() -> bool:
        return importlib.util.find_spec(name) is not None

    with Client(address, set_as_default=False) as client:
        return set(client.run(probe).values())


def test_the_user_module_travels_and_a_broken_factory_stops_the_run(
    outside: DaskCluster, tmp_path: Path
) -> None:
    """Regression: the scheduler raised "No module named 'clusterjob'" (the factory's plugin could
    not even be installed), and a failing factory was recorded as every item's error."""
    flag = tmp_path / "model.bin"
    project = _project(tmp_path, flag)
    assert _importable_on_workers(outside.address, "clusterjob") == {False}  # only the driver has it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # hivemem only; the CLI adds its cwd, the project
    cmd = [sys.executable, "-m", "hivemem.app.cli", "run", "clusterjob:work", "--factory", "clusterjob:make"]
    cmd += ["--items", "items.jsonl", "--results", "out.jsonl", "--cluster", outside.address, "--no-progress"]

    broken = subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 2, (broken.stdout, broken.stderr, outside.logs())
    err = broken.stderr
    assert err.count("FileNotFoundError: model.bin is missing on this host") == 1, err  # once
    assert "the factory clusterjob:make failed in Dask worker w" in err, err  # where: worker, host
    # The traceback names the user's file and line (as the worker ran it) and not hivemem's code.
    assert f'File "{project / "clusterjob.py"}", line 14, in make' in err, err
    assert 'raise FileNotFoundError(f"model.bin is missing' in err, err
    assert "hivemem/pool" not in err and "<dynamic-code>" not in err, err
    out = project / "out.jsonl"
    assert not out.exists() or read_results(out) == {}  # nothing recorded: a plain rerun does all

    flag.touch()  # the fix
    fixed = subprocess.run(cmd, env=env, cwd=project, capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, (fixed.stderr, outside.logs())
    assert f"{N} items: 0 already done, {N} ok, 0 errors" in fixed.stdout
    records = read_results(out)
    assert sorted(records) == list(range(N)) and all(r["ok"] for r in records.values())
    assert records[21]["result"]["double"] == 42
    assert {r["result"]["worker"] for r in records.values()} == {"w0", "w1"}  # both workers served


def test_a_factory_failing_on_one_worker_stops_the_run(outside: DaskCluster, tmp_path: Path) -> None:
    """One host lacks a file: the first factory failure stops the run (docs/pool.md says why);
    items the healthy worker finished meanwhile stay recorded, none is recorded as failed."""
    from hivemem.errors import RunSetupError

    project = _project(tmp_path, tmp_path / "unused")
    sys.path.insert(0, str(project))
    try:
        import clusterjob

        out = tmp_path / "out.jsonl"
        items = [{"id": i, "x": i} for i in range(N)]
        with pytest.raises(RunSetupError) as info:
            run_parallel(
                items,
                clusterjob.work,
                factory=clusterjob.make_on_w0_only,
                results=out,
                cluster=outside.address,
                progress=False,
            )
    finally:
        sys.path.remove(str(project))
        sys.modules.pop("clusterjob", None)
        sys.modules.pop("dask_distributed_helper", None)
    assert info.value.where.startswith("Dask worker w1 at tcp://"), info.value
    assert "FileNotFoundError: this host lacks model.bin" in str(info.value)
    records = read_results(out)
    assert all(r["ok"] and r["result"]["worker"] == "w0" for r in records.values()), records


def test_an_installed_package_missing_on_the_workers_stops_the_run(
    outside: DaskCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed packages are imported by name on the workers (only the user's own files travel):
    one the workers lack stops the run at once with the import error, nothing recorded."""
    from hivemem.errors import RunSetupError

    site = tmp_path / "venv" / "lib" / "site-packages"  # looks installed: it does not travel
    site.mkdir(parents=True)
    (site / "installedjob.py").write_text("def work(item):\n    return item['x']\n")
    monkeypatch.syspath_prepend(str(site))
    import installedjob

    out = tmp_path / "out.jsonl"
    try:
        with pytest.raises(RunSetupError) as info:
            run_parallel(
                [{"id": i, "x": i} for i in range(N)],
                installedjob.work,
                results=out,
                cluster=outside.address,
                progress=False,
            )
    finally:
        sys.modules.pop("installedjob", None)
    message = str(info.value)
    assert "installedjob:work cannot be loaded in Dask worker" in message, message
    assert message.endswith("ModuleNotFoundError: No module named 'installedjob'"), message
    assert read_results(out) == {}
