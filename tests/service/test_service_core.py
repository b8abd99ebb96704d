"""One real service process (socket + loopback HTTP) exercised by real clients."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service_helpers import PY, ROOT, start_service, stop_pid

from hivemem.embed.corpus import sentences
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME  # vectors across batches
from hivemem.errors import ServiceUnavailable
from hivemem.service import wire
from hivemem.service.client import ServiceClient, connect

TEXTS = sentences(40, seed=7)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_vectors_equal_in_process(shared_service, local_embedder) -> None:
    with connect(shared_service["socket"], autostart=False) as client:
        assert client.model_id == local_embedder.model_id and client.dim == 384
        remote = client.embed(TEXTS)
        one = client.embed_one(TEXTS[3])
        assert client.embed([]).shape == (0, 384)
    local = local_embedder.embed(TEXTS)
    assert remote.dtype == np.float32 and remote.shape == (40, 384)
    assert cosines(remote, local).min() >= SAME
    assert float(one @ local[3]) >= SAME


def test_socket_is_private(shared_service) -> None:
    mode = stat.S_IMODE(os.stat(shared_service["socket"]).st_mode)
    assert mode == 0o600
    assert stat.S_ISSOCK(os.stat(shared_service["socket"]).st_mode)


def test_threads_share_one_client(shared_service, local_embedder) -> None:
    client = connect(shared_service["socket"], autostart=False)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = np.stack([client.embed_one(t) for t in TEXTS[i::8]])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert not errors
    local = local_embedder.embed(TEXTS)
    for i in range(8):
        assert cosines(results[i], local[i::8]).min() >= SAME


def test_bad_input_is_refused_before_sending(shared_service) -> None:
    with connect(shared_service["socket"], autostart=False) as client:
        with pytest.raises(TypeError, match="bare str"):
            client.embed("not a list")
        with pytest.raises(TypeError, match=r"texts\[1\]"):
            client.embed(["ok", 3])
        with pytest.raises(ValueError, match="surrogate"):
            client.embed_one("bad \ud800")


def _raw(sock: Path, data: bytes) -> tuple[int, str, bool]:
    """Send raw bytes; return (error code, message, whether the service then closed the stream)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(data)
        head = s.recv(wire.HEADER_SIZE, socket.MSG_WAITALL)
        ftype, _, length = wire.parse_header(head, 1 << 20)
        assert ftype == wire.ERROR
        code, message = wire.decode_error(s.recv(length, socket.MSG_WAITALL))
        closed = s.recv(1) == b""
    return code, message, closed


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        (b"GET / HTTP/1.1\r\n\r\n\0\0", wire.E_MALFORMED, "bad magic"),
        (wire.header(wire.EMBED, 1, wire.DEFAULT_MAX_FRAME + 1), wire.E_TOO_LARGE, "exceeds the limit"),
        (wire.header(99, 1, 0), wire.E_MALFORMED, "unknown request type"),
        (wire.frame(wire.EMBED, 1, b"\x05\0\0\0\x01\0\0\0"), wire.E_MALFORMED, "announces 5 texts"),
        (wire.frame(wire.EMBED, 1, b"\x01\0\0\0\x02\0\0\0\xff\xfe"), wire.E_MALFORMED, "not valid UTF-8"),
        (wire.HEADER.pack(wire.MAGIC, 9, wire.EMBED, 0, 1, 0), wire.E_MALFORMED, "version 9"),
    ],
)
def test_malformed_frames_get_an_error_and_the_service_lives(shared_service, data, code, needle) -> None:
    got_code, message, closed = _raw(shared_service["socket"], data)
    assert got_code == code and needle in message and closed
    with connect(shared_service["socket"], autostart=False) as client:
        assert client.embed_one("still alive").shape == (384,)


def test_status_cli_and_a_second_service_refused(shared_service, tmp_path) -> None:
    env = {**shared_service["env"], "COLUMNS": "200"}
    store = tmp_path / "extra.sqlite"
    with connect(shared_service["socket"], autostart=False) as client:
        from hivemem import Memory

        with Memory(store, embedder=client) as m:
            m.add_batch([{"messages": "one", "user_id": "u"}, {"messages": "two", "user_id": "u"}])

    def status(*args: str) -> subprocess.CompletedProcess:
        cmd = [PY, "-m", "hivemem.app.cli", "status", *args]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)

    out = status("--json", "--memory", str(store))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["running"] and info["pid"] == shared_service["proc"].pid
    assert info["model_id"].startswith("all-MiniLM-L6-v2") and info["uptime_s"] > 0
    assert {"queue", "cache", "clients", "metrics", "threads", "files"} <= set(info)
    assert info["process_memory"]["pss_mb"] > 10
    extra = next(s for s in info["stores"] if s["role"] == "--memory")
    assert extra["memories"] == 2 and extra["model_id"] == info["model_id"]
    assert info["files"]["socket"] == str(shared_service["socket"])
    table = status("--memory", str(store))
    assert table.returncode == 0, table.stderr
    variant = info["model_id"].partition("/onnx-")[2]
    assert re.search(rf"variant\s+│ {variant}\s", table.stdout) and re.search(
        r"memory\s+│ PSS \d+ MB", table.stdout
    )
    for needle in [
        "hivemem service",
        str(info["pid"]),
        "cache hit rate",
        "memory stores",
        str(store),
        "HIVEMEM_HOME",
    ]:
        assert needle in table.stdout, needle
    gone = status("--socket", str(tmp_path / "none.sock"))
    assert gone.returncode == 1 and "not running" in gone.stdout
    second = subprocess.run(
        [PY, "-m", "hivemem", "serve"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 3 and "already running" in second.stderr


def test_no_service_and_no_autostart_is_a_clear_error(short_dir) -> None:
    with pytest.raises(ServiceUnavailable, match="no hivemem service"):
        ServiceClient(short_dir / "none.sock", autostart=False)


def test_client_imports_no_model_runtime(shared_service) -> None:
    code = (
        "import sys, hivemem\n"
        f"c = hivemem.connect({str(shared_service['socket'])!r}, autostart=False)\n"
        "assert c.embed_one('hello').shape == (384,)\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tokenizers', 'sentence_transformers', 'fastapi')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [PY, "-c", code], env=shared_service["env"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_asyncio_clients(shared_service, local_embedder) -> None:
    import asyncio

    import hivemem

    async def main() -> tuple[np.ndarray, np.ndarray]:
        client = await hivemem.aconnect(shared_service["socket"], autostart=False)
        rows = await asyncio.gather(*(client.aembed_one(t) for t in TEXTS[:10]))
        await client.aclose()
        threaded = connect(shared_service["socket"], autostart=False)
        other = await threaded.aembed(TEXTS[:10])
        threaded.close()
        return np.stack(rows), other

    rows, other = asyncio.run(main())
    local = local_embedder.embed(TEXTS[:10])
    assert cosines(rows, local).min() >= SAME and cosines(other, local).min() >= SAME


def test_openai_client_over_http(shared_service, local_embedder) -> None:
    import httpx
    from openai import OpenAI

    client = OpenAI(base_url=shared_service["url"] + "/v1", api_key="unused")
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[:5])
    got = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert [d.index for d in result.data] == list(range(5))
    assert cosines(got, local_embedder.embed(TEXTS[:5])).min() >= SAME
    assert result.usage.prompt_tokens > 5 * 5
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input="one", encoding_format="float")
    assert len(floats.data[0].embedding) == 384
    assert httpx.get(shared_service["url"] + "/health").json()["status"] == "ok"
    metrics = httpx.get(shared_service["url"] + "/metrics").text
    assert "hivemem_queue_depth" in metrics and "hivemem_batch_size_bucket" in metrics
    wrong = httpx.post(shared_service["url"] + "/v1/embeddings", json={"input": ["x"], "model": "gpt-9"})
    assert wrong.status_code == 404 and "not served" in wrong.json()["error"]["message"]


def test_stop_drains_and_removes_the_socket(service_env) -> None:
    proc = start_service(service_env, "--idle-timeout", "0")
    sock = Path(service_env["HIVEMEM_SOCKET"])
    client = connect(sock, autostart=False)
    results: list[object] = []

    def burst() -> None:
        try:
            results.append(client.embed(sentences(64, seed=3)))
        except Exception as exc:
            results.append(exc)

    worker = threading.Thread(target=burst)
    worker.start()
    out = subprocess.run(
        [PY, "-m", "hivemem.app.cli", "serve", "--stop"],
        env=service_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    worker.join(60)
    client.close()
    assert out.returncode == 0 and "stopped" in out.stdout
    assert proc.wait(10) == 0
    assert not sock.exists()
    # the burst either finished before the stop or was refused clearly — never hung
    assert len(results) == 1
    assert isinstance(results[0], np.ndarray) or "service" in str(results[0])


def test_idle_timeout_exits(service_env) -> None:
    proc = start_service(service_env, "--idle-timeout", "0.5")
    assert proc.wait(30) == 0
    assert not Path(service_env["HIVEMEM_SOCKET"]).exists()


if sys.platform != "linux":  # pragma: no cover
    pytest.skip("the service is tested on Linux", allow_module_level=True)


def test_full_queue_is_service_busy_not_a_hang(service_env) -> None:
    import asyncio

    import hivemem
    from hivemem.errors import ServiceBusy

    proc = start_service(service_env, "--max-pending", "1", "--busy-timeout", "0")
    texts = sentences(64, seed=5)

    async def main() -> list[object]:
        client = await hivemem.aconnect(autostart=False)
        replies = await asyncio.gather(
            *(client.aembed(texts[i : i + 8]) for i in range(0, 64, 8)), return_exceptions=True
        )
        await client.aclose()
        return replies

    try:
        replies = asyncio.run(main())
    finally:
        stop_pid(proc.pid)
        proc.wait(10)
    busy = [r for r in replies if isinstance(r, ServiceBusy)]
    assert busy and "stayed full" in str(busy[0])
    assert all(isinstance(r, ServiceBusy) or r.shape == (8, 384) for r in replies)


def test_memory_uses_a_service_running_on_the_default_socket(service_env, short_dir, monkeypatch) -> None:
    """Issue: memory embeds through the service when one is running, with no configuration."""
    from hivemem import Memory
    from hivemem.service.paths import socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    monkeypatch.delenv("HIVEMEM_SOCKET")
    default = socket_path()
    assert default.parent == short_dir / "hivemem"
    without_service = Memory(short_dir / "alone.sqlite")
    assert not isinstance(without_service.embedder, ServiceClient)
    without_service.close()
    proc = start_service({**service_env, "HIVEMEM_SOCKET": str(default), "XDG_RUNTIME_DIR": str(short_dir)})
    try:
        mem = Memory(short_dir / "m.sqlite")
        mem.add("Alice is allergic to peanuts", user_id="alice")
        hits = mem.search("what must alice not eat?", filters={"user_id": "alice"})["results"]
        assert hits[0]["memory"] == "Alice is allergic to peanuts"
        assert isinstance(mem.embedder, ServiceClient)
        mem.close()
    finally:
        stop_pid(proc.pid)


def test_freed_memory_goes_back_after_serving(shared_service) -> None:
    """Issue 25: the memory freed after the batches (activations, token arrays, frames) stayed in
    glibc's arenas; the service now calls ``malloc_trim`` once nothing is in flight for
    ``TRIM_AFTER_S`` (the count is in its status)."""
    with connect(shared_service["socket"], autostart=False) as client:
        before = client.stats()["memory_trims"]
        client.embed(sentences(30, seed=99))
        deadline = time.monotonic() + 30
        while client.stats()["memory_trims"] == before:
            assert time.monotonic() < deadline, "no trim after the service went idle"
            time.sleep(0.05)


def test_a_lone_client_calling_every_half_second_is_not_trimmed_after_every_call(shared_service) -> None:
    """With calls further apart than ``TRIM_AFTER_S`` the service trimmed after every one, and
    the next call could meet the trim (arena locks, pages faulted back in): at most one trim per
    ``server.TRIM_EVERY_S`` now (docs/service.md, benchmarks/service_trim.py)."""
    from hivemem.service.server import TRIM_EVERY_S

    with connect(shared_service["socket"], autostart=False) as client:
        before = client.stats()["memory_trims"]
        client.embed(sentences(5, seed=98))
        deadline = time.monotonic() + TRIM_EVERY_S + 30
        while client.stats()["memory_trims"] == before:  # a trim now: the interval starts here
            assert time.monotonic() < deadline, "no trim after the service went idle"
            time.sleep(0.05)
        trimmed, started = client.stats()["memory_trims"], time.monotonic()
        for text in sentences(4, seed=97):
            time.sleep(0.5)  # idle for longer than TRIM_AFTER_S between calls
            client.embed_one(text)
        time.sleep(0.5)
        if time.monotonic() - started < TRIM_EVERY_S:  # a box so slow that the interval passed proves nothing
            assert client.stats()["memory_trims"] == trimmed
