"""run_parallel / `hivemem run`: results recorded once per item, across errors, crashes and restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pool_agents
import psutil
import pytest

from hivemem.pool.results import ResultsFile, read_results
from hivemem.pool.runner import run_parallel

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_every_item_once_with_errors_and_tracebacks(tmp_path):
    items = [{"id": f"q{i}", "x": i, "fail": i % 7 == 3} for i in range(30)]
    out = tmp_path / "out.jsonl"
    summary = run_parallel(items, pool_agents.square_item, workers=2, results=out, progress=False)
    assert (summary.total, summary.skipped, summary.ok, summary.errors) == (30, 0, 26, 4)
    records = _lines(out)
    assert sorted(r["key"] for r in records) == sorted(f"q{i}" for i in range(30))
    by_key = {r["key"]: r for r in records}
    assert by_key["q5"] == {"key": "q5", "ok": True, "result": 25, "seconds": by_key["q5"]["seconds"]}
    bad = by_key["q3"]
    assert bad["ok"] is False and bad["error_type"] == "KeyError" and "marked to fail" in bad["error"]
    assert "square_item" in bad["traceback"]  # the worker-side traceback is kept
    # a second run has nothing left to do
    again = run_parallel(items, pool_agents.square_item, workers=2, results=out, progress=False)
    assert (again.skipped, again.ok, again.errors) == (30, 0, 0)
    assert len(_lines(out)) == 30


def test_factory_objects_and_in_memory_results():
    summary = run_parallel(
        [1, 2, 3, 4],
        pool_agents.add_one_to_agent_calls,
        workers=2,
        factory=pool_agents.make_agent,
        progress=False,
    )
    assert summary.ok == 4 and summary.results is None
    assert sorted(r["key"] for r in summary.records) == [0, 1, 2, 3]  # keys default to the index
    assert all(r["result"] >= 1 for r in summary.records)


def test_resume_ignores_a_torn_last_line(tmp_path):
    items = [{"id": i, "x": i} for i in range(20)]
    out = tmp_path / "out.jsonl"
    out.write_text(
        "".join(json.dumps({"key": i, "ok": True, "result": -1}) + "\n" for i in range(5))
        + '{"key": 5, "ok": tr'  # what a kill -9 in the middle of a write leaves
    )
    summary = run_parallel(
        items, pool_agents.square_item, workers=2, results=out, progress=False, kind="thread"
    )
    assert (summary.skipped, summary.ok) == (5, 15)
    records = _lines(out)  # every line parses: the torn one is gone
    assert sorted(r["key"] for r in records) == list(range(20))
    assert {r["key"]: r["result"] for r in records}[5] == 25


def test_retry_errors_replaces_the_error_records(tmp_path):
    flag = tmp_path / "healed"
    items = [{"id": i, "x": i, "flag": str(flag)} for i in range(6)]
    out = tmp_path / "out.jsonl"
    first = run_parallel(
        items, pool_agents.heal_item, workers=2, factory=pool_agents.make_agent, results=out, progress=False
    )
    assert first.errors == 6
    flag.touch()
    skipped = run_parallel(
        items, pool_agents.heal_item, workers=2, factory=pool_agents.make_agent, results=out, progress=False
    )
    assert skipped.skipped == 6 and skipped.ok == 0
    retried = run_parallel(
        items,
        pool_agents.heal_item,
        workers=2,
        factory=pool_agents.make_agent,
        results=out,
        retry_errors=True,
        progress=False,
    )
    assert retried.ok == 6
    records = _lines(out)
    assert len(records) == 6 and all(r["ok"] for r in records)


def test_unserializable_results_and_bad_items_become_item_errors(tmp_path):
    out = tmp_path / "out.jsonl"
    summary = run_parallel([{"id": "a"}], pool_agents.set_result, workers=1, results=out, progress=False)
    assert summary.errors == 1
    assert "cannot be stored as JSON" in _lines(out)[0]["error"]


def test_bad_input_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="same key"):
        run_parallel([{"id": 1}, {"id": 1}], pool_agents.square_item, results=out, progress=False)
    with pytest.raises(TypeError, match="key must be a str or int"):
        run_parallel([{"id": [1]}], pool_agents.square_item, results=out, progress=False)
    with pytest.raises(TypeError, match="cannot be sent to worker processes"):
        run_parallel([1], lambda item: item, results=out, progress=False)
    assert not out.exists() or out.read_text() == ""
    out.write_text('{"key": 1, "ok": true}\nnot json\n{"key": 2, "ok": true}\n')
    with pytest.raises(ValueError, match=r"out\.jsonl:2: not a JSON line"):
        run_parallel([{"id": 1}], pool_agents.square_item, results=out, progress=False)


def test_two_runs_cannot_write_one_results_file(tmp_path):
    out = tmp_path / "out.jsonl"
    with ResultsFile(out), pytest.raises(RuntimeError, match="another run is writing"):
        ResultsFile(out).open()
    with ResultsFile(out):  # released on close
        pass


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hivemem.app.cli_run", *args]


def test_kill_9_the_runner_then_restart_loses_and_duplicates_nothing(tmp_path):
    items = tmp_path / "items.jsonl"
    n = 200
    items.write_text("".join(json.dumps({"id": f"item-{i}", "x": i, "sleep": 0.02}) + "\n" for i in range(n)))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    cmd = _cli(
        "pool_agents:square_item",
        "--items",
        str(items),
        "--results",
        str(out),
        "--workers",
        "3",
        "--no-progress",
    )
    runner = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 40):
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "runner made no progress"
            time.sleep(0.02)
        workers = psutil.Process(runner.pid).children(recursive=True)
        runner.send_signal(signal.SIGKILL)
        runner.communicate()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    partial = out.read_text().count("\n")
    assert partial < n  # it really was killed mid-run
    # orphaned workers notice their parent is gone and exit by themselves
    _gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    keys = [r["key"] for r in _lines(out)]
    assert len(keys) == n and set(keys) == {f"item-{i}" for i in range(n)}  # each exactly once
    assert all(
        r["ok"] and r["result"] == int(r["key"].split("-")[1]) ** 2 for r in read_results(out).values()
    )


def test_cli_reports_bad_arguments(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": 1, "x": 2}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    bad_spec = subprocess.run(
        _cli("no_colon", "--items", str(items), "--results", str(tmp_path / "o.jsonl")),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_spec.returncode == 2 and "module:function" in bad_spec.stderr
    missing = subprocess.run(
        _cli("pool_agents:nope", "--items", str(items), "--results", str(tmp_path / "o.jsonl")),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no attribute 'nope'" in missing.stderr
    ok = subprocess.run(
        _cli(
            "pool_agents:square_item",
            "--items",
            str(items),
            "--results",
            str(tmp_path / "o.jsonl"),
            "--kind",
            "thread",
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert _lines(tmp_path / "o.jsonl")[0]["result"] == 4
