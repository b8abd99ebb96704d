"""run_parallel(cluster=...) / `hivemem run --cluster` on a real Dask scheduler with worker processes:
warm objects once per worker, every item recorded once across worker and driver crashes."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cluster_agents
import pytest
from cluster_helpers import HERE, ROOT, DaskCluster

from hivemem.pool.results import read_results
from hivemem.pool.runner import run_parallel

pytestmark = pytest.mark.slow


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _plugins(address: str) -> list[str]:
    from distributed import Client

    def names(dask_worker) -> list[str]:
        return sorted(dask_worker.plugins)

    with Client(address, set_as_default=False) as client:
        return sorted({n for ns in client.run(names).values() for n in ns if n.startswith("hivemem-run")})


def test_items_run_on_warm_workers_and_are_recorded_once(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    items = [{"id": f"q{i}", "x": i, "fail": i % 9 == 4, "exit": i == 7, "sleep": 0.01} for i in range(40)]
    out = tmp_path / "out.jsonl"
    factory = functools.partial(cluster_agents.make_agent, str(markers), 0.5)
    summary = run_parallel(
        items, cluster_agents.work, factory=factory, results=out, cluster=dask_cluster.address, progress=False
    )
    assert (summary.total, summary.ok, summary.errors) == (40, 35, 5)
    records = _lines(out)
    assert sorted(r["key"] for r in records) == sorted(f"q{i}" for i in range(40))  # each exactly once
    by_key = {r["key"]: r for r in records}
    assert by_key["q5"]["result"]["square"] == 25
    bad = by_key["q4"]
    assert bad["error_type"] == "KeyError" and "marked to fail" in bad["error"]
    assert "cluster_agents.py" in bad["traceback"]  # the worker-side traceback came back
    exited = by_key["q7"]  # sys.exit in user code fails that item only, as in the local pool
    assert exited["error_type"] == "WorkerExited" and "sys.exit (exit code 3)" in exited["error"]
    # The factory ran once per worker process, plus once to replace the object q7 exited from;
    # both workers served items with their object.
    pids = {r["result"]["pid"] for r in records if r["ok"]}
    assert len(list(markers.iterdir())) == 3 and len(pids) == 2
    assert max(r["result"]["calls"] for r in records if r["ok"]) > 1  # the object was reused
    assert _plugins(dask_cluster.address) == []  # a clean run unregisters its plugin

    again = run_parallel(
        items, cluster_agents.work, factory=factory, results=out, cluster=dask_cluster.address, progress=False
    )
    assert (again.skipped, again.ok, again.errors) == (40, 0, 0)
    from distributed import Client

    with Client(dask_cluster.address, set_as_default=False) as client:  # a Client works too, kept open
        retried = run_parallel(
            items, cluster_agents.square, results=out, cluster=client, retry_errors=True, progress=False
        )
        assert client.status == "running"
    assert retried.skipped == 35 and retried.ok == 4 and retried.errors == 1  # q7 exits again
    assert len(_lines(out)) == 40


def test_a_worker_killed_mid_run_costs_only_its_in_flight_items(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    log = tmp_path / "starts.jsonl"
    out = tmp_path / "out.jsonl"
    n = 120
    items = [{"id": i, "x": i, "sleep": 0.04, "log": str(log)} for i in range(n)]
    victim = dask_cluster.worker_pids()[0]

    def kill_when_running() -> None:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 30) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    summary = run_parallel(
        items,
        cluster_agents.work,
        factory=cluster_agents.make_agent,
        results=out,
        cluster=dask_cluster.address,
        progress=False,
    )
    killer.join()
    assert (summary.ok, summary.errors) == (n, 0), dask_cluster.logs()
    keys = [r["key"] for r in _lines(out)]
    assert sorted(keys) == list(range(n))  # nothing lost, nothing recorded twice
    starts = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(s["pid"] == victim for s in starts)  # it really died mid-run
    runs = Counter(s["key"] for s in starts)
    again = {k for k, c in runs.items() if c > 1}
    on_victim = {s["key"] for s in starts if s["pid"] == victim}
    # Only the items the dead worker had started ran twice, and there are few of them.
    assert again <= on_victim and len(again) <= 4
    dask_cluster.wait_workers(2)  # its nanny restarted it, for the next tests


def test_cli_driver_killed_then_rerun_finishes_the_job(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    n = 150
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"id": f"item-{i}", "x": i, "sleep": 0.03}) + "\n" for i in range(n)))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    cmd = [sys.executable, "-m", "hivemem.app.cli", "run", "cluster_agents:work", "--items", str(items)]
    cmd += ["--results", str(out), "--factory", "cluster_agents:make_agent_from_env"]
    cmd += ["--cluster", dask_cluster.address, "--no-progress"]
    driver = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 30):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the driver made no progress"
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert out.read_text().count("\n") < n  # it really died mid-run
    assert len(_plugins(dask_cluster.address)) == 1  # what the crashed driver left behind

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    keys = [r["key"] for r in _lines(out)]
    assert len(keys) == n and set(keys) == {f"item-{i}" for i in range(n)}  # each exactly once
    assert all(
        r["ok"] and r["result"]["square"] == int(k.split("-")[1]) ** 2 for k, r in read_results(out).items()
    )
    assert _plugins(dask_cluster.address) == []  # the rerun replaced it, then removed it


def test_cluster_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout is not supported"):
        run_parallel([1], cluster_agents.square, cluster="tcp://127.0.0.1:1", timeout=1.0, progress=False)
    with pytest.raises(TypeError, match="scheduler address"):
        run_parallel([1], cluster_agents.square, cluster=42, progress=False)
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        run_parallel([1], cluster_agents.square, cluster="tcp://127.0.0.1:9", progress=False)


def test_losing_the_scheduler_stops_the_run_without_recording_lost_items(tmp_path: Path) -> None:
    """Regression: futures the dead scheduler cancelled were once recorded as errors ("NoneType: None"),
    so a rerun skipped items that never ran."""
    import dask

    cluster = DaskCluster(workers=1)
    out = tmp_path / "out.jsonl"
    items = [{"id": i, "x": i, "sleep": 0.05} for i in range(200)]

    def kill_scheduler() -> None:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 10) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(cluster.procs[0].pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_scheduler)
    try:
        killer.start()
        with (
            dask.config.set({"distributed.comm.timeouts.connect": "3s"}),
            pytest.raises(RuntimeError, match=r"(?s)lost the Dask scheduler.*run the same command again"),
        ):
            run_parallel(items, cluster_agents.square, results=out, cluster=cluster.address, progress=False)
    finally:
        killer.join()
        cluster.close()
    records = _lines(out)
    assert 10 <= len(records) < 200 and all(r["ok"] for r in records), [r for r in records if not r["ok"]]
