"""Many real worker processes against one service: auto-start races and kill -9 mid-load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from service_helpers import PY, ROOT, stop_pid

from hivemem.service.client import connect

WORKER = """
import json, sys, time
import hivemem
from hivemem.errors import ServiceError
client = hivemem.connect(timeout=20)
print(json.dumps({"ready": client.service_pid}), flush=True)
mode = sys.argv[1]
if mode == "loop":
    ok = errors = 0
    slowest = 0.0
    deadline = time.monotonic() + float(sys.argv[2])
    i = 0
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            v = client.embed_one(f"worker text {sys.argv[3]} {i}")
            assert v.shape == (384,)
            ok += 1
        except ServiceError as exc:
            errors += 1
            print(json.dumps({"error": str(exc)[:200]}), flush=True)
        slowest = max(slowest, time.monotonic() - start)
        i += 1
    final = {"ok": ok, "errors": errors, "slowest": slowest, "pid": client.service_pid}
    print(json.dumps({**final, "restarts": client.restarts}), flush=True)
"""


def _services(sock: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and str(sock) in cmd:
            found.append(p)
    return found


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-c", WORKER, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_processes_auto_start_exactly_one_service(service_env) -> None:
    sock = Path(service_env["HIVEMEM_SOCKET"])
    workers = [_spawn(service_env, "ready") for _ in range(8)]
    try:
        outs = [w.communicate(timeout=120) for w in workers]
        assert all(w.returncode == 0 for w in workers), [o[1][-500:] for o in outs]
        pids = {json.loads(o[0].splitlines()[0])["ready"] for o in outs}
        assert len(pids) == 1
        running = _services(sock)
        assert [p.pid for p in running] == list(pids)
        log = Path(str(sock) + ".log").read_text()
        assert log.count(" serving ") == 1, log
    finally:
        for p in _services(sock):
            stop_pid(p.pid)


def test_kill_9_mid_load_every_call_completes_or_fails_clearly(service_env) -> None:
    sock = Path(service_env["HIVEMEM_SOCKET"])
    workers = [_spawn(service_env, "loop", "8", str(i)) for i in range(4)]
    try:
        first = [json.loads(w.stdout.readline())["ready"] for w in workers]
        assert len(set(first)) == 1
        time.sleep(1.5)  # all workers are in their loops, requests in flight
        os.kill(first[0], signal.SIGKILL)
        outs = [w.communicate(timeout=60) for w in workers]
        assert all(w.returncode == 0 for w in workers), [o[1][-800:] for o in outs]
        finals = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
        # nobody hung: the slowest call stayed within the 20 s client timeout
        assert all(f["slowest"] < 20 for f in finals)
        # the service came back (one new process) and every worker kept working on it
        new_pids = {f["pid"] for f in finals}
        assert len(new_pids) == 1 and first[0] not in new_pids
        assert all(f["ok"] > 0 for f in finals)
        assert sum(f["restarts"] for f in finals) >= 1
        assert len(_services(sock)) == 1
        with connect(sock, autostart=False) as client:
            assert client.embed_one("after the crash").shape == (384,)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        for p in _services(sock):
            stop_pid(p.pid)
