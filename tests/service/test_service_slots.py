"""Reply slots (``hivemem.service.slot``): vectors through a connection's shared memory, woken by
its eventfd; frames for errors, replies too big for the slot and clients that do not ask."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hivemem.service.client import ServiceClient

pytestmark = pytest.mark.model

TEXTS = [f"slot text {i}: a short sentence about cats and dogs" for i in range(100)]


def _slots(pid: int) -> int:
    """Reply slots the process holds open (their memfds)."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sum(link.startswith("/memfd:hivemem-reply") for link in links) // 2  # the fd, mmap's dup


def test_slot_replies_equal_frame_replies(service) -> None:
    slotted = ServiceClient(autostart=False)
    framed = ServiceClient(autostart=False, slots=False)  # what an older client does
    try:
        assert slotted._pool[0].slot is not None
        assert framed._pool[0].slot is None
        one = slotted.embed_one(TEXTS[0])
        assert np.array_equal(one, framed.embed_one(TEXTS[0]))
        one[0] = 5.0  # the caller owns its copy: the slot is reused by the next call
        some = slotted.embed(TEXTS[:30])  # 30 vectors fit the 64 KB slot
        assert np.array_equal(some, framed.embed(TEXTS[:30]))
        many = slotted.embed(TEXTS)  # 100 do not: a frame, on the same connection
        assert np.array_equal(many, framed.embed(TEXTS))
        assert np.array_equal(slotted.embed_one(TEXTS[0]), framed.embed_one(TEXTS[0]))
    finally:
        slotted.close()
        framed.close()


def test_caller_killed_holding_a_slot_frees_it(service) -> None:
    client = ServiceClient(autostart=False)
    assert _slots(service.pid) == 1  # this client's
    code = (
        "import sys, hivemem\ne = hivemem.connect(autostart=False)\ne.embed_one('held')\n"
        "print('ready', flush=True)\nsys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert _slots(service.pid) == 2
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while _slots(service.pid) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _slots(service.pid) == 1
        assert client.embed_one(TEXTS[1]).shape == (384,)
    finally:
        if child.poll() is None:
            child.kill()
        client.close()
