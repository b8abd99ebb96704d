"""First use on a never-prepared home: the one-time export runs in a short-lived child process, so
neither the machine's service nor an in-process engine ever has torch loaded (issue 20: the first
service kept the export's ~750 MB), and two processes starting at once export once.

This is the one test that pays for a real export of its own (about a minute on 2 cores): a home
that has never seen the model is exactly what it checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TORCH_MODULES = ("torch", "transformers", "sentence_transformers", "onnx", "hivemem.embed.prepare")

IN_PROCESS = f"""
import json, sys
import hivemem
emb = hivemem.Embedder(cache=False)
vec = emb.embed(["a cat sat on the mat"])
emb.close()
print(json.dumps({{"shape": list(vec.shape), "loaded": [m for m in {TORCH_MODULES!r} if m in sys.modules]}}))
"""

THROUGH_SERVICE = """
import json, sys
import hivemem
emb = hivemem.connect()
vec = emb.embed(["a dog ran in the park"])
print(json.dumps({"shape": list(vec.shape), "pid": emb.stats()["pid"]}), flush=True)
sys.stdin.readline()   # hold the service while the test looks at it
"""


def _mapped_torch(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if "torch" in line.split()[-1]})


@pytest.mark.slow
@pytest.mark.timeout(1200)  # a real export: ~1 min alone on 2 cores, several under load
def test_a_fresh_home_prepares_once_in_a_child_and_serves_without_torch(tmp_path: Path) -> None:
    home = tmp_path / "never-prepared"
    sock = tmp_path / "s.sock"
    env = {**os.environ, "HIVEMEM_HOME": str(home), "HIVEMEM_SOCKET": str(sock), "HF_HUB_OFFLINE": "1"}
    service_user = subprocess.Popen(
        [sys.executable, "-c", THROUGH_SERVICE],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its group (and the export child in it) is killed if the test fails
    )
    engine_user = subprocess.Popen(
        [sys.executable, "-c", IN_PROCESS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = engine_user.communicate(timeout=900)
        assert engine_user.returncode == 0, err[-3000:]
        in_process = json.loads(out)
        assert in_process == {"shape": [1, 384], "loaded": []}

        assert service_user.stdout is not None and service_user.stdin is not None
        line = service_user.stdout.readline()
        through = json.loads(line) if line else {}
        assert through.get("shape") == [1, 384], service_user.communicate(timeout=60)[1][-3000:]
        assert _mapped_torch(through["pid"]) == []  # the service started by the first connect()
        _, service_err = service_user.communicate("\n", timeout=120)  # lets it go

        # One export for the two first users: every "preparing … for first use" but one met the
        # finished export when its turn at the lock came (an export's progress reaches the stderr
        # of whoever waits for it: the connect()ing worker, or the in-process engine's user).
        log = err + service_err + Path(f"{sock}.log").read_text()
        assert log.count("for first use") - log.count("was prepared by another process meanwhile") == 1, log
        manifest = json.loads((home / "models" / "all-MiniLM-L6-v2" / "manifest.json").read_text())
        assert manifest["variants"][manifest["default"]]["accepted"]
        assert not [
            p for p in (home / "models").iterdir() if p.name.startswith(".all-MiniLM") and p.is_dir()
        ]  # no half-written export directories left behind
    finally:
        for proc in (engine_user, service_user):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(
            [sys.executable, "-m", "hivemem.app.cli", "serve", "--stop", "--socket", str(sock)],
            env=env,
            capture_output=True,
            timeout=120,
        )
