"""The service's event loop (``hivemem.service.eventloop``): uvloop where installed, asyncio's own on
request or where uvloop is missing, a clear error for a bad ``HIVEMEM_EVENT_LOOP``; and a real
service on each loop serving the socket and HTTP, then stopping cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import httpx
import pytest
from service_helpers import PY, ROOT, free_port, start_service, wait_healthy

from hivemem.errors import ServiceError
from hivemem.service import eventloop
from hivemem.service.client import ServiceClient

pytest.importorskip("uvloop")  # in the package's dependencies (pyproject.toml)


@pytest.mark.fast
@pytest.mark.parametrize(
    ("setting", "kind"), [(None, "uvloop"), ("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")]
)
def test_choose_and_run(setting: str | None, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVEMEM_EVENT_LOOP", raising=False)
    assert eventloop.choose(setting) == kind

    async def which() -> str:
        await asyncio.sleep(0)
        return eventloop.running()

    assert eventloop.run(which(), kind) == kind


@pytest.mark.fast
def test_the_environment_chooses_and_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIVEMEM_EVENT_LOOP", " AsyncIO ")
    assert eventloop.choose() == "asyncio"
    monkeypatch.setenv("HIVEMEM_EVENT_LOOP", "trio")
    with pytest.raises(ServiceError, match="must be one of auto, uvloop, asyncio, got 'trio'"):
        eventloop.choose()


@pytest.mark.fast
def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # ``import uvloop`` raises ImportError
    assert eventloop.choose("auto") == "asyncio"
    with pytest.raises(ServiceError, match="uvloop cannot be imported"):
        eventloop.choose("uvloop")


@pytest.mark.fast
def test_a_bad_setting_stops_hivemem_serve_before_the_model_loads(short_dir) -> None:
    env = {"HIVEMEM_SOCKET": str(short_dir / "s.sock"), "HIVEMEM_EVENT_LOOP": "nope", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [PY, "-m", "hivemem", "serve", "--no-mcp"],
        env={**env, "HIVEMEM_HOME": str(short_dir / "home"), "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "HIVEMEM_EVENT_LOOP must be one of" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("setting", ["auto", "asyncio"])
def test_a_service_on_each_loop_serves_and_stops_cleanly(setting: str, service_env: dict[str, str]) -> None:
    port = free_port()
    env = {**service_env, "HIVEMEM_EVENT_LOOP": setting}
    proc = start_service(env, "--http", f"127.0.0.1:{port}", "--no-mcp")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        with ServiceClient(env["HIVEMEM_SOCKET"], autostart=False) as client:
            assert client.embed_one("a cat sat").shape == (384,)
            assert client.stats()["event_loop"] == ("uvloop" if setting == "auto" else "asyncio")
        added = httpx.post(f"{url}/v1/memories", json={"messages": "I like tea", "user_id": "u"}, timeout=30)
        assert added.status_code == 200, added.text
        found = httpx.post(f"{url}/v1/memories/search", json={"query": "tea", "user_id": "u"}, timeout=30)
        assert found.status_code == 200 and found.json()["results"][0]["memory"] == "I like tea"
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
