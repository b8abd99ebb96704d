"""Mem0 users on hivemem's shared model, with the real ``mem0ai`` package.

The recipe: Mem0's ``openai`` embedder with ``openai_base_url`` pointing at ``hivemem serve --http``
(a real service process), Mem0's own local Qdrant as its vector store. Several Mem0 processes
share the one model; the vectors Mem0 stores are hivemem's own. Then ``hivemem memory import
--from-mem0`` copies such a store (written by real Mem0, with updates and deletes) into hivemem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hivemem
from hivemem import Memory
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mem0_worker import mem0_config  # noqa: E402

WORKERS = 3
TEXTS = {
    f"w{k}": [
        f"Worker {k} notes that Alice is allergic to peanuts.",
        f"Worker {k} heard that Bob plays chess on Sundays.",
        f"Worker {k} must finish the quarterly report by Friday.",
        f"Worker {k} says Alice adopted a grey cat named Pixel.",
    ]
    for k in range(WORKERS)
}


def _http_requests(socket: str) -> int:
    with hivemem.connect(socket, autostart=False) as client:
        return client.stats()["metrics"]["requests"].get("http", 0)


@pytest.fixture(scope="module")
def mem0_runs(hm_service: dict) -> dict:
    """WORKERS real Mem0 processes at once, all embedding through the one hivemem service."""
    env = {**hm_service["env"], "MEM0_TELEMETRY": "False", "PYTHONPATH": str(HERE)}
    before = _http_requests(hm_service["socket"])
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(HERE / "mem0_worker.py"),
                hm_service["url"],
                str(hm_service["dir"]),
                name,
                json.dumps(texts),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, texts in TEXTS.items()
    }
    out = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-3000:]
            out[name] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"runs": out, "http_requests": _http_requests(hm_service["socket"]) - before}


@pytest.mark.slow
def test_mem0_processes_share_hivemems_model(mem0_runs: dict, local_engine) -> None:
    runs = mem0_runs["runs"]
    # per process: 4 adds + 1 update + 1 search embed through the service, and no model is loaded
    assert mem0_runs["http_requests"] >= WORKERS * 6
    for name, run in runs.items():
        assert run["model_runtimes"] == [], f"{name} loaded a model runtime itself"
        assert run["top"] == TEXTS[name][0]
        ids = run["ids"]
        assert set(run["vectors"]) == {ids[0], ids[1], ids[3]}  # ids[2] was deleted
        got = np.array([run["vectors"][ids[0]], run["vectors"][ids[3]]], dtype=np.float32)
        ref = local_engine.embed([TEXTS[name][0], TEXTS[name][3]])
        assert ((got * ref).sum(1) / np.linalg.norm(got, axis=1)).min() >= SAME  # hivemem's own vectors
        updated = np.asarray(run["vectors"][ids[1]], dtype=np.float32)
        assert float(updated @ local_engine.embed_one(TEXTS[name][1] + " Updated later.")) >= SAME


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hivemem.app.cli", "memory", "import", *args]
    return subprocess.run(
        cmd, env={**env, "MEM0_TELEMETRY": "False"}, capture_output=True, text=True, timeout=240
    )


def _import(hm_service: dict, config: Path, target: Path) -> dict:
    proc = _cli(hm_service["env"], "--from-mem0", str(config), "--path", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem0_history(path: Path) -> list[tuple]:
    import sqlite3

    db = sqlite3.connect(path)
    rows = db.execute(
        "SELECT memory_id, event, old_memory, new_memory FROM history ORDER BY created_at"
    ).fetchall()
    db.close()
    return rows


@pytest.mark.slow
def test_import_from_a_store_written_by_mem0(
    mem0_runs: dict, hm_service: dict, tmp_path: Path, local_engine
) -> None:
    run = mem0_runs["runs"]["w0"]
    ids, texts = run["ids"], TEXTS["w0"]
    config = tmp_path / "mem0.json"
    config.write_text(json.dumps(mem0_config(hm_service["url"], str(hm_service["dir"]), "w0")))
    target = tmp_path / "imported.sqlite"
    assert _import(hm_service, config, target) == {"added": 3, "skipped": 0, "duplicates": 0, "history": 6}
    m = Memory(target, embedder=local_engine)
    got = {r["id"]: r for r in m.get_all(user_id="w0")["results"]}
    assert list(got) == [ids[0], ids[1], ids[3]]  # Mem0's ids, in Mem0's order
    assert got[ids[1]]["memory"] == texts[1] + " Updated later."
    assert got[ids[1]]["metadata"] == {"category": "test", "n": 1} and got[ids[0]]["metadata"] is None
    assert got[ids[1]]["updated_at"] > got[ids[1]]["created_at"]
    assert m.search("food allergy", user_id="w0", top_k=1)["results"][0]["id"] == ids[0]
    # the full history, also of the memory Mem0 deleted, exactly as Mem0 recorded it
    mem0_rows = _mem0_history(hm_service["dir"] / "history-w0.db")
    ours = [(h["memory_id"], h["event"], h["old_memory"], h["new_memory"]) for i in ids for h in m.history(i)]
    assert sorted(ours) == sorted(mem0_rows) and len(ours) == 6
    assert [h["event"] for h in m.history(ids[2])] == ["ADD", "DELETE"]
    m.close()
    # again: nothing new, nothing duplicated
    assert _import(hm_service, config, target) == {"added": 0, "skipped": 3, "duplicates": 0, "history": 6}
    with Memory(target, embedder=local_engine) as again:
        assert again.count() == 3 and sum(len(again.history(i)) for i in ids) == 6


def test_import_errors_are_clear(tmp_path: Path) -> None:
    bad = _cli(dict(os.environ), "--from-mem0", "{not json", "--path", str(tmp_path / "m.sqlite"))
    assert bad.returncode == 2 and "neither a JSON file nor JSON text" in bad.stderr
    both = _cli(dict(os.environ), "x.jsonl", "--from-mem0", "{}")
    assert both.returncode == 2 and "one of them" in both.stderr
    assert not (tmp_path / "m.sqlite").exists()
