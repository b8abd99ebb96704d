"""The one client core under the threaded and the asyncio service clients: both follow the same
rules (frames, handshake, errors, fork check, options) because they share ``ClientCore``."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

import fake_service
import numpy as np
import pytest

import hivemem
from hivemem.errors import ProtocolError, ServiceBusy
from hivemem.service import wire
from hivemem.service.core import CHUNK_BYTES, CHUNK_TEXTS, ClientCore, chunks

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.mark.parametrize(
    "sizes",
    [
        [CHUNK_BYTES // 4 + 1, 10],  # a first text over CHUNK_BYTES/4 characters: was an empty first frame
        [CHUNK_BYTES // 4 + 1],
        [10, CHUNK_BYTES // 4 + 1, 10, CHUNK_BYTES // 4 + 1],
        [1] * (CHUNK_TEXTS * 2 + 3),
        [CHUNK_BYTES // 16] * 9,
    ],
)
def test_chunks_cover_every_text_in_order_and_are_never_empty(sizes: list[int]) -> None:
    items = ["x" * n for n in sizes]
    parts = list(chunks(items))
    assert all(parts), "an empty frame costs a round trip for nothing"
    assert [t for p in parts for t in p] == items
    for part in parts:
        assert len(part) <= CHUNK_TEXTS
        assert len(part) == 1 or sum(4 + 4 * len(t) for t in part) <= CHUNK_BYTES
    assert list(chunks([])) == []


def test_core_maps_an_error_reply_and_checks_request_ids() -> None:
    core = ClientCore("/nonexistent/x.sock", autostart=False)
    rid, data = core.frame(wire.HELLO)
    assert wire.parse_header(data[: wire.HEADER_SIZE], 0)[:2] == (wire.HELLO, rid)
    busy = bytearray(wire.encode_error(wire.E_BUSY, "full"))
    with pytest.raises(ServiceBusy, match="full"):
        core.welcome(rid, wire.ERROR, rid, busy)
    with pytest.raises(hivemem.ProtocolError, match="reply for request"):
        core.reply(rid, wire.VECTORS, rid + 1, bytearray(), wire.VECTORS)


def _fake(path: Path, mode: str) -> multiprocessing.process.BaseProcess:
    proc = multiprocessing.get_context("fork").Process(
        target=fake_service.serve, args=(str(path), mode), daemon=True
    )
    proc.start()
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline and proc.is_alive(), "the fake service did not start"
        time.sleep(0.01)
    return proc


def test_both_clients_map_an_error_reply_to_the_handshake(short_dir: Path) -> None:
    """The asyncio client took an ERROR answer to its hello for a protocol violation."""
    sock = short_dir / "busy.sock"
    fake = _fake(sock, "busy")
    try:
        with pytest.raises(ServiceBusy, match="warming up"):
            hivemem.connect(sock, autostart=False, timeout=10)
        with pytest.raises(ServiceBusy, match="warming up"):
            asyncio.run(hivemem.aconnect(sock, autostart=False, timeout=10))
    finally:
        fake.kill()


def test_a_forked_child_never_uses_the_async_client_s_pooled_streams(short_dir: Path) -> None:
    """The asyncio client had no fork check: a child reused its parent's connection."""
    sock = short_dir / "unit.sock"
    fake = _fake(sock, "unit")
    try:
        client = asyncio.run(hivemem.aconnect(sock, autostart=False, timeout=10))
        assert client._pool  # the connection of the handshake, kept for the next call
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            signal.alarm(20)
            code = 1
            try:
                code = 0 if asyncio.run(client.aembed(["x", "y"])).shape == (2, 384) else 2
            except BaseException as exc:
                print("child:", repr(exc), flush=True)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        fake.kill()


def test_aconnect_starts_a_service_with_the_options_of_connect(monkeypatch, short_dir: Path) -> None:
    """The asyncio client had no start_timeout and no variant/threads/replicas options."""
    from hivemem.service import spawn

    seen: list[tuple[list[str], float]] = []

    def ensure_running(sock: Path, args: list[str], deadline: float) -> None:
        seen.append((args, deadline - time.monotonic()))
        raise hivemem.ServiceUnavailable("not starting one in this test")

    monkeypatch.setattr(spawn, "ensure_running", ensure_running)
    options = {"variant": "fp32", "threads": 1, "replicas": 2, "idle_timeout": 5}
    for start in (lambda: hivemem.connect(short_dir / "none.sock", timeout=1, start_timeout=7, **options),
                  lambda: asyncio.run(hivemem.aconnect(short_dir / "none.sock", timeout=1, start_timeout=7,
                                                       **options))):  # fmt: skip
        with pytest.raises(hivemem.ServiceUnavailable, match="not starting"):
            start()
    assert [args for args, _ in seen] == [
        ["--idle-timeout", "5", "--variant", "fp32", "--threads", "1", "--replicas", "2"]
    ] * 2
    assert all(6 < left <= 7 for _, left in seen)  # start_timeout, not the 1 s call timeout


@pytest.mark.parametrize("mode", ["drip", "drip7"])
def test_the_client_reassembles_a_reply_that_arrives_in_pieces(short_dir: Path, mode: str) -> None:
    """The receive path reads header and payload together into one buffer (issue 25): a reply cut
    anywhere (pieces of 7 bytes split the 20-byte header), small or larger than that buffer, still
    comes back whole."""
    sock = short_dir / f"{mode}.sock"
    fake = _fake(sock, mode)
    try:
        with hivemem.connect(sock, autostart=False, timeout=30) as client:
            assert client.embed_one("one").shape == (384,)
            many = client.embed([f"text {i}" for i in range(100)])  # 150 KB: past the 64 KB buffer
            assert many.shape == (100, 384)
            assert np.allclose(many, 1 / 384**0.5)
    finally:
        fake.kill()


def test_bytes_after_a_reply_are_a_protocol_error(short_dir: Path) -> None:
    """One request in flight per connection: bytes that arrive with its reply answer nothing and
    must not be taken for the next call's reply."""
    sock = short_dir / "trailing.sock"
    fake = _fake(sock, "trailing")
    try:
        client = hivemem.connect(sock, autostart=False, timeout=30)
        with client, pytest.raises(hivemem.ProtocolError, match="after a reply"):
            client.embed_one("one")
    finally:
        fake.kill()


def test_bytes_that_come_after_a_reply_never_reach_the_next_call(short_dir: Path) -> None:
    """Bytes that arrive after the reply was read (a later segment) stayed in the pooled
    connection, and the next, unrelated call failed with a ProtocolError that is not retried
    (review finding 6): a pooled connection with anything to read is closed, not reused, in
    both clients."""
    sock = short_dir / "late.sock"
    fake = _fake(sock, "late")
    try:
        with hivemem.connect(sock, autostart=False, timeout=30) as client:
            for _ in range(3):
                assert client.embed_one("one").shape == (384,)
                time.sleep(0.2)  # the junk is in the pooled connection now

        async def calls() -> None:
            client = await hivemem.aconnect(sock, autostart=False, timeout=30)
            try:
                for _ in range(3):
                    assert (await client.aembed_one("one")).shape == (384,)
                    await asyncio.sleep(0.2)  # read into the pooled stream's buffer meanwhile
            finally:
                await client.aclose()

        asyncio.run(calls())
    finally:
        fake.kill()


def test_a_timeout_past_what_poll_can_wait_works(short_dir: Path) -> None:
    """poll() takes a C int of milliseconds: timeout=1e7 ("forever") raised a raw OverflowError
    at the hello (review finding 3); the wait is now cut into polls of at most 2**31-1 ms."""
    sock = short_dir / "forever.sock"
    fake = _fake(sock, "unit")
    try:
        with hivemem.connect(sock, autostart=False, timeout=1e7) as client:
            assert client.embed_one("one").shape == (384,)
    finally:
        fake.kill()


def test_a_reply_still_arriving_at_the_deadline_times_out(short_dir: Path) -> None:
    """The deadline was checked only when a read would block: a reply that keeps trickling in
    could outlast the call's timeout. Here the reply (past the 64 KB buffer) is all there but the
    deadline has passed after the first read: the call must raise TimeoutError."""
    from hivemem.service.client import _Connection

    path = short_dir / "late_reply.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    sent = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(wire.frame(wire.VECTORS, 1, b"x" * 100_000))  # before any request: ready at once
        sent.set()
        conn.recv(wire.HEADER_SIZE)
        time.sleep(1)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    conn = _Connection(path, 5)
    try:
        assert sent.wait(10)
        with pytest.raises(TimeoutError):
            conn.call(wire.header(wire.EMBED, 1, 0), time.monotonic() - 1)
    finally:
        conn.close()
        thread.join()
        listener.close()


def test_embed_one_sends_the_frame_of_a_one_text_list() -> None:
    for text in ("plain", "", "naïve café ☕ 𝄞"):
        assert wire.encode_one(text) == wire.encode_texts([text])
        assert wire.decode_texts(wire.encode_one(text)) == [text]


@pytest.mark.parametrize("rows", [1, 3])  # one row has its own path (a dot product): same verdicts
@pytest.mark.parametrize(
    ("norm", "ok"),
    [(1.0, True), (1.0009, True), (0.9991, True), (1.0015, False), (0.9985, False), (2.0, False),
     (0.0, False), (float("nan"), False), (float("inf"), False)],
)  # fmt: skip
def test_join_vectors_accepts_only_unit_vectors(rows: int, norm: float, ok: bool) -> None:
    vectors = np.full((rows, 384), 1 / 384**0.5, dtype="<f4")
    vectors[-1] *= np.float32(norm) if np.isfinite(norm) else 1
    if not np.isfinite(norm):
        vectors[-1, 0] = norm
    if ok:
        assert wire.join_vectors([vectors], rows, 384) is vectors
    else:
        with pytest.raises(ProtocolError, match=rf"for text {rows - 1} \(1 of {rows} not unit length\)"):
            wire.join_vectors([vectors], rows, 384)
