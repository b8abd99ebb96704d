"""What the two service clients share: every decision that is not I/O (sans-I/O, as httpx's
``BaseClient`` under its sync and async clients).

``ClientCore`` holds a client's options and state and decides everything: which frame a call
sends and how large calls are cut into frames, what a reply means (ERROR frames mapped to typed
errors, shapes and unit norms checked), whether a lost connection is retried, when the service is
started and when to give up, and that a forked child never uses its parent's connections. The
threaded client (``client.ServiceClient``) and the asyncio one (``aclient.AsyncServiceClient``)
only open connections, write bytes and read bytes, so the two cannot drift apart again: before
this module the asyncio client ignored an ERROR reply to its hello, had no fork check, no
``start_timeout`` and no ``variant``/``threads``/``replicas`` options.

The retry rule: a call that loses its connection (the service died, even ``kill -9``, or is
restarting) reconnects — waiting out a listener that is still dying, restarting the service in
auto mode — and is sent once more; a request is sent at most twice, so a text that kills the
service cannot take down a third one. Every call returns or raises within ``timeout``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.embed.validate import check_texts
from hivemem.errors import (
    ProtocolError,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
)
from hivemem.service import paths, wire
from hivemem.service.peer import trusted_uids

CHUNK_TEXTS = 1024  # texts per frame for large calls (well under the frame limit, keeps latency fair)
CHUNK_BYTES = 8 << 20
DEFAULT_TIMEOUT = 60.0
DEFAULT_START_TIMEOUT = 120.0
_PAUSE_MIN, _PAUSE_MAX = 0.02, 0.5  # waiting out a dying listener: doubling pauses between these


class Lost(Exception):
    """The connection broke (service gone or restarting): reconnect and retry once."""


def service_args(
    *,
    idle_timeout: float | None = None,
    variant: str | None = None,
    threads: int | None = None,
    replicas: int | None = None,
) -> list[str]:
    """``hivemem serve`` options for a service a client starts (they never change a running one)."""
    args: list[str] = []
    for flag, value in (
        ("--idle-timeout", idle_timeout),
        ("--variant", variant),
        ("--threads", threads),
        ("--replicas", replicas),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args


def chunks(items: list[str]) -> Iterator[list[str]]:
    """Cut a call into frames of at most ``CHUNK_TEXTS`` texts and about ``CHUNK_BYTES`` bytes (a
    text longer than that goes alone); never an empty frame."""
    start, size = 0, 0
    for i, text in enumerate(items):
        cost = 4 + len(text) * 4  # UTF-8 never exceeds 4 bytes per code point
        if i > start and (i - start >= CHUNK_TEXTS or size + cost > CHUNK_BYTES):
            yield items[start:i]
            start, size = i, 0
        size += cost
    if start < len(items):
        yield items[start:]


def raise_error(body: bytearray | bytes) -> None:
    """Raise the error an ERROR frame stands for (``Lost`` for a service that is shutting down)."""
    code, message = wire.decode_error(body)
    if code == wire.E_BUSY:
        raise ServiceBusy(message)
    if code == wire.E_BAD_REQUEST:
        raise ValueError(message)
    if code in (wire.E_MALFORMED, wire.E_TOO_LARGE):
        raise ProtocolError(message)
    if code == wire.E_SHUTTING_DOWN:
        raise Lost(message)
    raise ServiceError(f"the service failed: {message}")


class ClientCore:
    """A service client's options and state, and every rule it follows (see the module docstring)."""

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        autostart: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        service_args: Sequence[str] = (),
        trust_uids: Iterable[int] | None = None,
    ) -> None:
        if not timeout > 0 or not start_timeout > 0:
            raise ValueError("timeout and start_timeout must be positive numbers of seconds")
        self.socket_path = paths.socket_path(socket_path)
        self.timeout = float(timeout)
        self.autostart = autostart
        self.start_timeout = float(start_timeout)
        self.service_args = list(service_args)
        self.trusted = trusted_uids(trust_uids)
        self.info: dict[str, Any] = {}  # the service's WELCOME: pid, model_id, dim
        self.restarts = 0  # services this client (re)started after losing one
        self._ids = itertools.count(1)
        self._pid = os.getpid()

    # ---- identity ------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return str(self.info["model_id"])

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def forked(self) -> bool:
        """True once per fork, in the child: its parent's pooled connections must be dropped."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        return True

    # ---- deadlines -----------------------------------------------------------------------------

    def first_deadline(self) -> float:
        """Until when the first connection may take (starting the service included)."""
        return time.monotonic() + max(self.timeout, self.start_timeout if self.autostart else 0.0)

    def call_deadline(self) -> float:
        return time.monotonic() + self.timeout

    @staticmethod
    def remaining(deadline: float) -> float:
        return max(0.001, deadline - time.monotonic())

    # ---- frames --------------------------------------------------------------------------------

    def frame(self, ftype: int, payload: bytes = b"") -> tuple[int, bytes]:
        """``(request id, bytes to send)`` for one request."""
        rid = next(self._ids)
        return rid, wire.header(ftype, rid, len(payload)) + payload

    @staticmethod
    def reply_header(head: bytes) -> tuple[int, int, int]:
        """``(type, request id, payload length)`` of a reply header."""
        return wire.parse_header(head, wire.MAX_REPLY)

    @staticmethod
    def reply(rid: int, rtype: int, rrid: int, body: bytearray, expect: int) -> bytearray:
        """The payload of the reply to request ``rid``, or the error it stands for."""
        if rrid != rid and rrid != 0:
            raise ProtocolError(f"reply for request {rrid} while waiting for {rid}")
        if rtype == wire.ERROR:
            raise_error(body)
        if rtype != expect:
            raise ProtocolError(f"expected reply type {expect}, got {rtype}")
        return body

    def welcome(self, rid: int, rtype: int, rrid: int, body: bytearray) -> None:
        """Take the service's answer to our HELLO (refusing a service that changed its model)."""
        info = wire.decode_json(self.reply(rid, rtype, rrid, body, wire.WELCOME))
        if self.info and info["model_id"] != self.info["model_id"]:
            raise ServiceError(
                f"the service now serves {info['model_id']!r}, not {self.info['model_id']!r}: "
                "refusing to mix vectors of different models"
            )
        self.info = info

    # ---- embedding -----------------------------------------------------------------------------

    @staticmethod
    def embed_frames(texts: Sequence[str]) -> tuple[list[str], list[bytes]]:
        """The validated texts of a call and the EMBED payloads that carry them."""
        items = check_texts(texts)
        return items, [wire.encode_texts(c) for c in chunks(items)]

    def vectors(self, bodies: list[bytearray], n: int) -> np.ndarray:
        """The replies to one call's frames as one ``n × dim`` array of unit vectors."""
        if n == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return wire.join_vectors([wire.decode_vectors(b) for b in bodies], n, self.dim)

    # ---- what to do when things go wrong -------------------------------------------------------

    def unreachable(self, exc: OSError, deadline: float) -> None:
        """Nobody accepts on the socket: raise, or return so that the caller starts the service
        (``spawn.ensure_running``) and tries again."""
        if not self.autostart:
            raise ServiceUnavailable(
                f"no hivemem service at {self.socket_path} ({exc.strerror or exc}); "
                "start one with `hivemem serve` or use connect(autostart=True)"
            )
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(f"cannot reach the service at {self.socket_path}: {exc}")
        if self.info:
            self.restarts += 1

    def dying(self, exc: Lost, pause: float, deadline: float) -> float:
        """A listener dropped our hello (it is going away): raise past the deadline, else return
        how long to pause before trying again (the next pause is twice as long)."""
        if time.monotonic() + pause >= deadline:
            raise ServiceUnavailable(f"lost the hivemem service at {self.socket_path}: {exc}")
        return min(pause * 2, _PAUSE_MAX)

    first_pause = _PAUSE_MIN

    def attempts(self, retry: bool = True) -> range:
        """Attempt numbers of one request: sent at most twice (once without ``retry``)."""
        return range(2 if retry else 1)

    def lost(self, exc: Lost, attempt: int, retry: bool = True) -> None:
        """The connection broke under a request: raise if it was the last attempt."""
        if attempt + 1 >= len(self.attempts(retry)):
            raise ServiceUnavailable(f"lost the hivemem service at {self.socket_path}: {exc}")

    def timed_out(self) -> ServiceError:
        return ServiceError(
            f"no answer from the hivemem service within {self.timeout:g} s ({self.socket_path})"
        )

    def unavailable(self, exc: BaseException) -> ServiceUnavailable:
        """The error for a first connection that failed with ``Lost`` or a timeout."""
        if isinstance(exc, Lost):
            return ServiceUnavailable(f"the hivemem service at {self.socket_path} went away: {exc}")
        return ServiceUnavailable(f"no answer from the hivemem service at {self.socket_path}")
