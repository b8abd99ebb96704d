"""Issue 26 (low): per-client bounds on the service socket. A frame that declares 32 MiB and then
stalls is dropped after the read deadline (it was held forever); a client that pipelines many
requests without reading its replies cannot make another client wait behind all of them (it got
``ServiceBusy``). A real service process with the real model, started with ``ServiceConfig``
options; no timing threshold: the stalled connection must be closed, the other client's calls
must all succeed."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import PY, ROOT, stop_pid

from hivemem import connect
from hivemem.service import wire
from hivemem.service.spawn import can_connect


@pytest.fixture
def bounded(service_env: dict[str, str], short_dir: Path) -> Iterator[Path]:
    """A service with a 2 s frame deadline and a 60 s busy timeout (so that only being queued
    behind another client's whole pipeline, not a slow moment of a shared machine, makes a call
    busy)."""
    sock = short_dir / "b.sock"
    code = (
        "from pathlib import Path; from hivemem.service.server import ServiceConfig, serve; "
        f"serve(ServiceConfig(socket=Path({str(sock)!r}), read_timeout=2.0, busy_timeout=60.0))"
    )
    proc = subprocess.Popen(
        [PY, "-c", code], env=service_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not can_connect(sock):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        yield sock
    finally:
        stop_pid(proc.pid)
        proc.wait(30)


def test_a_stalled_frame_is_dropped_after_the_deadline(bounded: Path) -> None:
    stalled = []
    for _ in range(4):  # several clients, each holding half of a 32 MiB frame
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(120)  # far past the service's 2 s: the service must close first
        s.connect(str(bounded))
        s.sendall(wire.header(wire.EMBED, 1, wire.DEFAULT_MAX_FRAME) + b"\0" * (wire.DEFAULT_MAX_FRAME // 2))
        stalled.append(s)
    for s in stalled:
        with s:
            head = s.recv(wire.HEADER_SIZE, socket.MSG_WAITALL)
            assert head, "the service closed without saying why"
            ftype, _, length = wire.parse_header(head, 1 << 20)
            code, message = wire.decode_error(s.recv(length, socket.MSG_WAITALL))
            assert (ftype, code) == (wire.ERROR, wire.E_MALFORMED), message
            assert "did not arrive within 2 s" in message, message
            assert s.recv(1) == b""  # and closed
    with connect(bounded, autostart=False) as client:
        assert client.embed_one("still serving").shape == (384,)


def test_a_pipelining_client_does_not_starve_others(bounded: Path) -> None:
    greedy = socket.socket(socket.AF_UNIX)
    greedy.connect(str(bounded))
    frames = [
        wire.frame(wire.EMBED, i + 1, wire.encode_texts([f"greedy {i} {j}" for j in range(500)]))
        for i in range(200)
    ]  # 100,000 texts, sent without ever reading a reply

    def flood() -> None:
        try:
            for f in frames:
                greedy.sendall(f)
        except OSError:
            pass  # shut down below

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        time.sleep(1)  # let the flood start (the test does not depend on how far it got)
        with connect(bounded, autostart=False) as client:
            for i in range(5):
                assert client.embed([f"polite {i}", "another"]).shape == (2, 384)
    finally:
        greedy.shutdown(socket.SHUT_RDWR)
        greedy.close()
        flooder.join(60)
