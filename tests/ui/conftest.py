"""The dashboard's browser tests: a real ``hivemem serve --http`` (real model, real memories, keys
for alice, bob and an admin) and Debian's chromium driven by Playwright's Python API.

Playwright never downloads a browser here: the tests use ``/usr/bin/chromium`` (or
``$HIVEMEM_CHROMIUM``) and SKIP, saying why, where it or the ``playwright`` package is absent
(``make test``'s ``-ra`` summary shows the reason). ``.ci/run`` installs chromium where it can.
The server's output goes to a file, so the tests can read what it logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "service"))
from service_helpers import PY, free_port, stop_pid, wait_healthy  # noqa: E402
from ui_helpers import CHROMIUM, KEYS, why_no_browser  # noqa: E402


@pytest.fixture(scope="session")
def model_home(hivemem_home: Path) -> Path:
    """The session's private HIVEMEM_HOME with the prepared model (tests/conftest.py)."""
    return hivemem_home


@pytest.fixture(scope="module")
def server(model_home: Path) -> Iterator[dict[str, Any]]:
    """``hivemem serve --http`` on a loopback port with the keys above and a fresh memory store;
    yields ``url``, ``log`` (the path of its output), ``dir`` and ``env`` (its environment, with a
    private ``XDG_RUNTIME_DIR``). Skips first where no browser can run."""
    why = why_no_browser()
    if why:
        pytest.skip(f"browser tests skipped: {why}")
    directory = Path(tempfile.mkdtemp(prefix="hmui", dir="/tmp"))
    (directory / "keys.json").write_text(json.dumps(KEYS))
    (directory / "xdg").mkdir(mode=0o700)  # a private runtime dir: the runs and libraries it lists
    port = free_port()
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(directory / "xdg"),
        "HIVEMEM_HOME": str(model_home),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    log = directory / "server.log"
    args = ["--http", f"127.0.0.1:{port}", "--keys", str(directory / "keys.json")]
    args += ["--memory-url", str(directory / "memory.sqlite")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PY, "-m", "hivemem", "serve", *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, proc, timeout=120)
        except httpx.TransportError:
            raise RuntimeError(f"service did not start: {log.read_text()}") from None
        yield {"url": url, "log": log, "dir": directory, "proc": proc, "env": env}
    finally:
        stop_pid(proc.pid)
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = why_no_browser()
    if why:
        pytest.skip(f"browser tests skipped: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()


class Recorder:
    """Every request URL, response body and console message of one browser context."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.bodies: list[tuple[str, str]] = []
        self.console: list[str] = []

    def attach(self, context: Any) -> None:
        context.on("request", lambda r: self.urls.append(r.url))
        context.on("response", self._response)

    def _response(self, response: Any) -> None:
        try:
            body = response.body().decode("utf-8", "replace")
        except Exception:  # a redirect has no body to read
            body = ""
        self.bodies.append((response.url, body))

    def watch(self, page: Any) -> None:
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))


@pytest.fixture
def context(browser: Any) -> Iterator[tuple[Any, Recorder]]:
    """A fresh browser context (no cookies) with a recorder attached."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    recorder = Recorder()
    recorder.attach(ctx)
    yield ctx, recorder
    ctx.close()
