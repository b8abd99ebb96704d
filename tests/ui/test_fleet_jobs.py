"""The fleet page's runs and task libraries: real ``hivemem run`` and ``hivemem tasks convert``
processes register themselves in a private runtime directory, the page (over HTTP, no browser)
lists them for an admin key and not for a user key. Storage only: the app embeds with a hash of
the text (NOT a model; tests/ui/test_ui_limits.py), since no text is embedded here."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_ui_limits import BASE, HashEmbedder

from hivemem import Memory
from hivemem.http.app import create_app
from hivemem.http.keys import Scope
from hivemem.http.ui import jobs

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
N = 6
JOB = """
import os, time


def work(item):
    if item["x"] == 3:
        raise ValueError("three is refused")
    if os.path.exists(item["hang"]):
        time.sleep(600)
    return item["x"] * 2
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime directory (the registries live there), for this process and its children."""
    where = tmp_path / "xdg"
    where.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(where))
    return where


def _project(tmp_path: Path, hang: bool) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "fleetjob.py").write_text(JOB)
    flag = project / "hang.flag"
    if hang:
        flag.touch()
    items = "".join(
        json.dumps({"id": i, "x": i, "hang": str(flag) if i >= 4 else "-"}) + "\n" for i in range(N)
    )
    (project / "items.jsonl").write_text(items)
    return project


def _run_cmd(project: Path) -> list[str]:
    cmd = [sys.executable, "-m", "hivemem.app.cli", "run", "fleetjob:work", "--items", "items.jsonl"]
    return [*cmd, "--results", "out.jsonl", "--workers", "2", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _signed_in(memory: Memory, key: str) -> TestClient:
    keys = {"admin-key": Scope(admin=True), "alice-key": Scope(user_id="alice")}
    c = TestClient(create_app(HashEmbedder(), keys=keys, memory=memory, host="127.0.0.1"), base_url=BASE)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/ui/login").text).group(1)
    r = c.post("/ui/login", data={"key": key, "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    return c


def _runs_rows(html: str) -> list[str]:
    section = html.split('id="runs-title"', 1)[1].split("</section>", 1)[0]
    return re.findall(r"<tr><td><code>.*?</tr>", section, flags=re.S)


def test_a_finished_run_and_a_converted_library_show_for_an_admin_only(runtime: Path, tmp_path: Path) -> None:
    project = _project(tmp_path, hang=False)
    done = subprocess.run(
        _run_cmd(project), env=_env(), cwd=project, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1 and "5 ok, 1 errors" in done.stdout, (done.stdout, done.stderr)  # item 3
    (tmp_path / "tasks.json").write_text(
        json.dumps({"math": [{"id": f"m{i}"} for i in range(3)], "code": [{"id": "c0"}]})
    )
    conv = [sys.executable, "-m", "hivemem.app.cli", "tasks", "convert", "tasks.json", "tasks.db"]
    converted = subprocess.run(conv, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr
    with Memory(tmp_path / "m.sqlite", embedder=HashEmbedder()) as memory:
        admin = _signed_in(memory, "admin-key").get("/ui/fleet/panel").text
        user = _signed_in(memory, "alice-key").get("/ui/fleet/panel").text
    (row,) = _runs_rows(admin)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.S)
    assert cells[0] == f"<code>{(project / 'out.jsonl').resolve()}</code>"
    assert cells[1:5] == ["finished", "5", "1", "6"], cells  # state, done, failed, items
    lib = admin.split('id="libraries-title"', 1)[1]
    assert str((tmp_path / "tasks.db").resolve()) in lib
    assert re.search(r'<td class="num">4</td>\s*<td>math: 3, code: 1</td>', lib), lib
    assert "out.jsonl" not in user and "tasks.db" not in user and "Runs" not in user
    assert "Service" in user


def _left_over(project: Path) -> list[int]:
    """Live processes whose command line names the project (the run, its workers, its forkserver)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(project).encode() in (entry / "cmdline").read_bytes():
                    stat = (entry / "stat").read_text()
                    if stat.rpartition(")")[2].split()[0] != "Z":
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_killed_run_shows_as_died_with_what_it_recorded(runtime: Path, tmp_path: Path) -> None:
    project = _project(tmp_path, hang=True)
    proc = subprocess.Popen(
        _run_cmd(project), env=_env(), cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    out = project / "out.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or out.read_bytes().count(b"\n") < 4:  # items 0-3 done, 4-5 hang
            assert proc.poll() is None and time.monotonic() < deadline, "the run never recorded items 0-3"
            time.sleep(0.2)
        with Memory(tmp_path / "m.sqlite", embedder=HashEmbedder()) as memory:
            admin = _signed_in(memory, "admin-key")
            (running,) = _runs_rows(admin.get("/ui/fleet/panel").text)
            assert ">running<" in running, running
            os.killpg(proc.pid, signal.SIGKILL)  # the runner, as a crash would
            proc.wait(30)
            (died,) = _runs_rows(admin.get("/ui/fleet/panel").text)
        # its workers run in sessions of their own (the kill above does not reach them), one
        # hung in user code: they and their forkserver follow the runner (docs/pool.md)
        deadline = time.monotonic() + 60
        while _left_over(project) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _left_over(project), "processes of the killed run outlived it"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in _left_over(project):  # on failure: nothing may outlive the test
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", died, flags=re.S)
    assert cells[1:5] == ["died", "3", "1", "6"], cells


def test_progress_is_counted_incrementally_and_a_huge_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "MAX_READ_BYTES", 64)
    path = tmp_path / "out.jsonl"
    lines = [{"key": i, "ok": i % 3 != 0, "result": "x" * (10 if i != 4 else 500)} for i in range(8)]
    path.write_bytes(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in lines))
    tally = jobs._Tally()
    reads = 0
    while True:
        before = tally.offset
        tally.advance(path)
        reads += 1
        assert tally.offset - before <= 64  # never more than one bounded read per refresh
        if tally.caught_up and tally.offset == path.stat().st_size:
            break
    assert (tally.ok, tally.failed) == (5, 3) and reads > 5
    with open(path, "ab") as f:  # a torn last line waits until it is whole
        f.write(b'{"key":9,"ok":true')
    tally.advance(path)
    assert (tally.ok, tally.failed) == (5, 3)
    with open(path, "ab") as f:
        f.write(b"}\n")
    tally.advance(path)
    assert (tally.ok, tally.failed) == (6, 3)
