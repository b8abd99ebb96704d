"""``hivemem.connect()``: the thin client every worker process holds.

Light by design: socket, struct and numpy — no onnxruntime, tokenizers or torch — so a worker costs
a few MB instead of a model. Thread-safe through a small pool of connections (a thread takes one for
the length of a request; requests carry ids and replies are checked against them). When the
service dies mid-request (even ``kill -9``) the client reconnects — waiting out a listener that is
still dying, restarting the service if it is in auto mode — and sends the request once more; every
call either returns or raises within ``timeout``. A request is sent at most twice, so a text that
kills the service cannot take down a third one.

Trust: the client talks only to a service run by its own user, checked on every connection with
``SO_PEERCRED`` (``trust_uids`` / ``HIVEMEM_TRUST_UIDS`` allow others on purpose), and accepts
only unit-length vectors (``wire.join_vectors``): a socket path shared with another user, or a fake
service answering zeros, is refused instead of believed.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.embed.validate import check_text, check_texts
from hivemem.errors import (
    ProtocolError,
    ServiceBusy,
    ServiceError,
    ServiceUnavailable,
    UntrustedService,
)
from hivemem.service import paths, spawn, wire

CHUNK_TEXTS = 1024  # texts per frame for large calls (well under the frame limit, keeps latency fair)
CHUNK_BYTES = 8 << 20
_POOL_MAX = 8
_PEERCRED = struct.Struct("3i")  # Linux struct ucred: pid, uid, gid


class _Lost(Exception):
    """The connection broke (service gone or restarting): reconnect and retry once."""


def trusted_uids(extra: Iterable[int] | None = None) -> frozenset[int]:
    """Our own uid, plus ``extra`` and ``HIVEMEM_TRUST_UIDS`` (comma-separated): whose service we use."""
    uids = {os.getuid()}
    for part in os.environ.get("HIVEMEM_TRUST_UIDS", "").replace(",", " ").split():
        if not part.isdigit():
            raise ValueError(f"HIVEMEM_TRUST_UIDS must list numeric uids, got {part!r}")
        uids.add(int(part))
    for uid in extra or ():
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 0:
            raise ValueError(f"trust_uids must be numeric uids, got {uid!r}")
        uids.add(uid)
    return frozenset(uids)


def check_peer(sock: socket.socket, path: Path, trusted: frozenset[int]) -> None:
    """Refuse a service run by a user not in ``trusted`` (UntrustedService naming it and the opt-in)."""
    pid: int | None = None
    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    else:  # pragma: no cover - not Linux: the socket file's owner is the best evidence there
        uid = os.stat(path).st_uid
    if uid in trusted:
        return
    try:
        import pwd

        name = f" ({pwd.getpwuid(uid).pw_name})"
    except (ImportError, KeyError):
        name = ""
    raise UntrustedService(
        f"the service on {path} runs as uid {uid}{name} (pid {pid}), not as you (uid {os.getuid()}): "
        "refusing to send it your texts. If you trust that user's service, pass "
        f"trust_uids=[{uid}] to connect() or set HIVEMEM_TRUST_UIDS={uid}"
    )


class _Connection:
    def __init__(self, sock: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(sock))
        except OSError:
            self.sock.close()
            raise

    def call(self, ftype: int, rid: int, payload: bytes, deadline: float) -> tuple[int, bytearray]:
        """Send one request and read its reply (type, payload) before ``deadline``."""
        try:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            self.sock.sendall(wire.header(ftype, rid, len(payload)) + payload)
            head = self._read(wire.HEADER_SIZE, deadline)
            rtype, rrid, length = wire.parse_header(bytes(head), wire.MAX_REPLY)
            body = self._read(length, deadline)
        except TimeoutError:
            raise
        except (OSError, EOFError) as exc:
            raise _Lost(str(exc) or type(exc).__name__) from None
        if rrid != rid and rrid != 0:
            raise ProtocolError(f"reply for request {rrid} while waiting for {rid}")
        return rtype, body

    def _read(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise EOFError("the service closed the connection")
            got += k
        return buf

    def close(self) -> None:
        self.sock.close()


def _raise_error(body: bytearray) -> None:
    code, message = wire.decode_error(body)
    if code == wire.E_BUSY:
        raise ServiceBusy(message)
    if code == wire.E_BAD_REQUEST:
        raise ValueError(message)
    if code in (wire.E_MALFORMED, wire.E_TOO_LARGE):
        raise ProtocolError(message)
    if code == wire.E_SHUTTING_DOWN:
        raise _Lost(message)
    raise ServiceError(f"the service failed: {message}")


class ServiceClient:
    """An ``EmbedderLike`` whose model lives in the service process (see ``connect``)."""

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        timeout: float = 60.0,
        autostart: bool = True,
        start_timeout: float = 120.0,
        service_args: Sequence[str] = (),
        trust_uids: Iterable[int] | None = None,
    ) -> None:
        self.socket_path = paths.socket_path(socket_path)
        self.timeout = timeout
        self.autostart = autostart
        self.start_timeout = start_timeout
        self.service_args = list(service_args)
        self.trusted = trusted_uids(trust_uids)
        self._pool: list[_Connection] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pid = os.getpid()
        self._closed = False
        self.restarts = 0
        self.info: dict[str, Any] = {}
        try:
            conn = self._open(time.monotonic() + max(timeout, start_timeout if autostart else 0))
        except _Lost as exc:
            raise ServiceUnavailable(f"the hivemem service at {self.socket_path} went away: {exc}") from None
        except TimeoutError:
            raise ServiceUnavailable(f"no answer from the hivemem service at {self.socket_path}") from None
        self._checkin(conn)

    # ---- EmbedderLike ----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def dim(self) -> int:
        return self.info["dim"]

    @property
    def service_pid(self) -> int:
        return self.info["pid"]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [wire.decode_vectors(self._request(wire.EMBED, wire.encode_texts(c))) for c in _chunks(items)]
        return wire.join_vectors(parts, len(items), self.dim)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([check_text(text)])[0]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` on a worker thread: the event loop is never blocked."""
        import asyncio  # here, not at the top: it costs a worker ~30 ms of start-up

        items = check_texts(texts)
        return await asyncio.to_thread(self.embed, items)

    async def aembed_one(self, text: str) -> np.ndarray:
        return (await self.aembed([check_text(text)]))[0]

    def stats(self) -> dict[str, Any]:
        """The service's status (pid, model, uptime, queue, cache, clients, metrics)."""
        return wire.decode_json(self._request(wire.STATS, b"", expect=wire.STATS_REPLY))

    def shutdown(self) -> None:
        """Ask the service to drain its queue and exit (for every client, not only this one)."""
        self._request(wire.SHUTDOWN, b"", expect=wire.OK, retry=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing --------------------------------------------------------------------------------

    def _request(
        self, ftype: int, payload: bytes, *, expect: int = wire.VECTORS, retry: bool = True
    ) -> bytearray:
        if self._closed:
            raise ServiceError("this client is closed")
        deadline = time.monotonic() + self.timeout
        for attempt in (0, 1):
            conn: _Connection | None = None
            try:
                conn = self._checkout(deadline)
                rtype, body = conn.call(ftype, next(self._ids), payload, deadline)
                if rtype == wire.ERROR:
                    _raise_error(body)
                if rtype != expect:
                    raise ProtocolError(f"expected reply type {expect}, got {rtype}")
            except _Lost as exc:
                if conn is not None:
                    conn.close()
                self._drop_pool()  # its other connections went to the same dead service
                if attempt or not retry:
                    raise ServiceUnavailable(
                        f"lost the hivemem service at {self.socket_path}: {exc}"
                    ) from None
                continue
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise ServiceError(
                    f"no answer from the hivemem service within {self.timeout:g} s ({self.socket_path})"
                ) from None
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._checkin(conn)
            return body
        raise AssertionError("unreachable")

    def _checkout(self, deadline: float) -> _Connection:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
                self._pool, self._pid = [], os.getpid()
            if self._pool:
                return self._pool.pop()
        return self._open(deadline)

    def _drop_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._pool) < _POOL_MAX and self._pid == os.getpid():
                self._pool.append(conn)
                return
        conn.close()

    def _open(self, deadline: float) -> _Connection:
        """A new connection that has said hello; starts the service first in auto mode.

        Until ``deadline`` it waits out a service that is going away: after ``kill -9`` the socket
        may still accept for a moment (then drop the hello), or refuse until a new service listens.
        """
        pause = 0.02
        while True:
            try:
                conn = _Connection(self.socket_path, max(0.001, deadline - time.monotonic()))
            except OSError as exc:
                if not self.autostart:
                    raise ServiceUnavailable(
                        f"no hivemem service at {self.socket_path} ({exc.strerror or exc}); "
                        "start one with `hivemem serve` or use connect(autostart=True)"
                    ) from None
                if time.monotonic() >= deadline:
                    where = self.socket_path
                    raise ServiceUnavailable(f"cannot reach the service at {where}: {exc}") from None
                if self.info:
                    self.restarts += 1
                spawn.ensure_running(self.socket_path, self.service_args, deadline)
                continue
            try:
                check_peer(conn.sock, self.socket_path, self.trusted)
                rtype, body = conn.call(wire.HELLO, next(self._ids), b"", deadline)
                if rtype == wire.ERROR:
                    _raise_error(body)
                if rtype != wire.WELCOME:
                    raise ProtocolError(f"expected WELCOME, got frame type {rtype}")
            except _Lost as exc:  # a listener that is dying (or shutting down): try again shortly
                conn.close()
                if time.monotonic() + pause >= deadline:
                    where = self.socket_path
                    raise ServiceUnavailable(f"lost the hivemem service at {where}: {exc}") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            except BaseException:
                conn.close()
                raise
            info = wire.decode_json(body)
            if self.info and info["model_id"] != self.info["model_id"]:
                conn.close()
                raise ServiceError(
                    f"the service now serves {info['model_id']!r}, not {self.info['model_id']!r}: "
                    "refusing to mix vectors of different models"
                )
            self.info = info
            return conn


def _chunks(items: list[str]) -> Any:
    start, size = 0, 0
    for i, text in enumerate(items):
        size += 4 + len(text) * 4  # UTF-8 never exceeds 4 bytes per code point
        if i - start >= CHUNK_TEXTS or size > CHUNK_BYTES:
            yield items[start:i]
            start, size = i, 4 + len(text) * 4
    yield items[start:]


_warned_fallback = False


def connect(
    socket_path: str | Path | None = None,
    *,
    autostart: bool = True,
    fallback: str | None = None,
    timeout: float = 60.0,
    start_timeout: float = 120.0,
    idle_timeout: float | None = None,
    variant: str | None = None,
    threads: int | None = None,
    replicas: int | None = None,
    trust_uids: Iterable[int] | None = None,
    url: str | Sequence[str] | None = None,
    api_key: str | None = None,
) -> Any:
    """Attach to the machine's embedding service, starting it if none runs (``autostart``).

    ``url="http://host:port"`` (several: a list or commas), or ``$HIVEMEM_EMBEDDER_URL`` when no
    ``socket_path`` is given: embed on other hosts over the OpenAI ``/v1/embeddings`` API instead
    (a ``hivemem.embed.remote.RemoteEmbedder``; ``api_key`` else ``$HIVEMEM_API_KEY``; ``timeout``
    applies, the service options do not).

    Returns a ``ServiceClient`` (an ``EmbedderLike``). ``fallback="local"``: when no service can be
    reached or started, warn once and return an in-process ``hivemem.Embedder`` instead. The
    ``idle_timeout``/``variant``/``threads``/``replicas`` options apply only to a service this call
    starts (an auto-started service exits after ``spawn.AUTO_IDLE_TIMEOUT`` = 600 s without clients
    unless ``idle_timeout`` says otherwise; one that replaces a lost service keeps that service's
    options). ``trust_uids``: other users whose service may be used (default: only your own).
    """
    if fallback not in (None, "local"):
        raise ValueError(f"fallback must be None or 'local', got {fallback!r}")
    if url is None and socket_path is None:
        url = os.environ.get("HIVEMEM_EMBEDDER_URL") or None
    if url is not None:
        from hivemem.embed.remote import RemoteEmbedder

        return RemoteEmbedder(url, api_key=api_key, timeout=timeout)
    args: list[str] = []
    for flag, value in (
        ("--idle-timeout", idle_timeout),
        ("--variant", variant),
        ("--threads", threads),
        ("--replicas", replicas),
    ):
        if value is not None:
            args += [flag, str(value)]
    try:
        return ServiceClient(
            socket_path,
            timeout=timeout,
            autostart=autostart,
            start_timeout=start_timeout,
            service_args=args,
            trust_uids=trust_uids,
        )
    except (ServiceError, OSError) as exc:
        if fallback is None:
            raise
        global _warned_fallback
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"hivemem: no embedding service ({exc}); embedding in this process instead",
                RuntimeWarning,
                stacklevel=2,
            )
        from hivemem.embed.engine import Embedder

        return Embedder(variant=variant or "default", threads=threads)
