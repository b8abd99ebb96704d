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

These rules live in ``hivemem.service.core`` (shared with the asyncio client, ``aclient``); this
module only does the blocking socket I/O.
"""

from __future__ import annotations

import math
import select
import socket
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivemem.embed.validate import check_text, check_texts
from hivemem.errors import ProtocolError, ServiceError
from hivemem.infra.settings import Settings
from hivemem.service import spawn, wire
from hivemem.service.core import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Lost,
    service_args,
)
from hivemem.service.peer import check_peer

if TYPE_CHECKING:  # pragma: no cover
    from hivemem.embed.protocol import EmbedderLike

_POOL_MAX = 8
_RECV_BUF = 64 << 10  # a connection's reply buffer: a reply of up to ~40 vectors fits whole


class _Connection:
    """One socket to the service: sends a request's bytes, reads its reply.

    Non-blocking, waited on with ``poll`` against the call's deadline: a request is one ``send``,
    one ``poll`` and, for a reply of a few vectors, one ``recv_into`` this connection's own buffer
    (header and payload together) — against ~9 system calls before (a ``settimeout`` per read,
    a ``poll`` before each of ``send`` and two ``recv``s). Under 25 worker processes on 2 cores a
    caller's own CPU is a cost the model pays for (docs/service.md, "Many callers (issue 25)").
    """

    def __init__(self, sock: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(sock))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._readable = select.poll()
        self._readable.register(self.sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(self.sock, select.POLLOUT)
        self._buf = bytearray(_RECV_BUF)
        self._view = memoryview(self._buf)

    def call(self, data: bytes, deadline: float) -> tuple[int, int, bytearray]:
        """Send ``data`` and read one reply ``(type, request id, payload)`` before ``deadline``."""
        try:
            self._send(data, deadline)
            view = self._view
            got = self._recv(view, deadline, wait=True)
            while got < wire.HEADER_SIZE:
                got += self._recv(view[got:], deadline)
            rtype, rrid, length = ClientCore.reply_header(bytes(view[: wire.HEADER_SIZE]))
            end = wire.HEADER_SIZE + length
            if got > end:  # one request in flight per connection: nothing may follow its reply
                # (bytes that come later are caught by ``idle`` before the connection's next call)
                raise ProtocolError(f"{got - end} bytes after a reply of {length} bytes")
            if end <= len(view):
                while got < end:
                    got += self._recv(view[got:end], deadline)
                return rtype, rrid, bytearray(view[wire.HEADER_SIZE : end])
            body = bytearray(length)  # a large reply: read straight into its own buffer
            have = got - wire.HEADER_SIZE
            body[:have] = view[wire.HEADER_SIZE : got]
            rest = memoryview(body)
            while have < length:
                have += self._recv(rest[have:], deadline)
            return rtype, rrid, body
        except TimeoutError:
            raise
        except (OSError, EOFError) as exc:
            raise Lost(str(exc) or type(exc).__name__) from None

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self.sock.send(view[sent:])
            except BlockingIOError:
                _wait(self._writable, deadline)

    def _recv(self, into: memoryview, deadline: float, wait: bool = False) -> int:
        """Bytes read into ``into`` (at least one); ``wait``: poll first (a reply is not there yet).
        The deadline is checked before every read: a reply that trickles in cannot outlast it."""
        while True:
            if wait:
                _wait(self._readable, deadline)
            elif time.monotonic() >= deadline:
                raise TimeoutError("the service did not answer in time")
            try:
                k = self.sock.recv_into(into)
            except BlockingIOError:
                wait = True
                continue
            if k == 0:
                raise EOFError("the service closed the connection")
            return k

    def idle(self) -> bool:
        """Nothing to read: no bytes that answer no request, no end of stream. A pooled
        connection that is not idle is closed instead of being used for the next call."""
        return not self._readable.poll(0)

    def close(self) -> None:
        self.sock.close()


_POLL_MAX_MS = 2**31 - 1  # poll() takes a C int of milliseconds (~24.8 days)


def _wait(poller: select.poll, deadline: float) -> None:
    """Until ``poller``'s socket is ready, or TimeoutError at ``deadline`` (any timeout, even one
    past what a single ``poll`` can wait)."""
    while not poller.poll(min(_POLL_MAX_MS, math.ceil(ClientCore.remaining(deadline) * 1000))):
        if time.monotonic() >= deadline:
            raise TimeoutError("the service did not answer in time")


class ServiceClient:
    """An ``EmbedderLike`` whose model lives in the service process (see ``connect``).

    Non-blocking sockets waited on with ``poll`` (``_Connection``), a small pool of them so that
    threads can share the client; all the rules live in ``hivemem.service.core.ClientCore``.
    """

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
        self.core = ClientCore(
            socket_path,
            timeout=timeout,
            autostart=autostart,
            start_timeout=start_timeout,
            service_args=service_args,
            trust_uids=trust_uids,
        )
        self.socket_path = self.core.socket_path
        self._pool: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            conn = self._open(self.core.first_deadline())
        except (Lost, TimeoutError) as exc:
            raise self.core.unavailable(exc) from None
        self._checkin(conn)

    # ---- EmbedderLike ----------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.core.model_id

    @property
    def dim(self) -> int:
        return self.core.dim

    @property
    def service_pid(self) -> int:
        return int(self.core.info["pid"])

    @property
    def info(self) -> dict[str, Any]:
        return self.core.info

    @property
    def restarts(self) -> int:
        return self.core.restarts

    @property
    def closed(self) -> bool:
        """``close()`` was called: every later call raises ``ServiceError``."""
        return self._closed

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items, payloads = self.core.embed_frames(texts)
        return self.core.vectors([self._request(wire.EMBED, p) for p in payloads], len(items))

    def embed_one(self, text: str) -> np.ndarray:
        """One text's vector: the same frame as ``embed([text])``, built without the list's
        validation and chunking (the path every worker's single-text call takes)."""
        body = self._request(wire.EMBED, wire.encode_one(check_text(text)))
        one: np.ndarray = self.core.vectors([body], 1)[0]
        return one

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` on a worker thread: the event loop is never blocked."""
        import asyncio  # here, not at the top: start-up cost (docs/service.md#measurements-behind-the-design)

        items = check_texts(texts)
        return await asyncio.to_thread(self.embed, items)

    async def aembed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = (await self.aembed([check_text(text)]))[0]
        return one

    def stats(self) -> dict[str, Any]:
        """The service's status (pid, model, uptime, queue, cache, clients, metrics)."""
        return dict(wire.decode_json(self._request(wire.STATS, b"", expect=wire.STATS_REPLY)))

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

    # ---- I/O -------------------------------------------------------------------------------------

    def _request(
        self, ftype: int, payload: bytes, *, expect: int = wire.VECTORS, retry: bool = True
    ) -> bytearray:
        if self._closed:
            raise ServiceError("this client is closed")
        core = self.core
        deadline = core.call_deadline()
        for attempt in core.attempts(retry):
            conn: _Connection | None = None
            try:
                conn = self._checkout(deadline)
                rid, data = core.frame(ftype, payload)
                body = core.reply(rid, *conn.call(data, deadline), expect)
            except Lost as exc:
                if conn is not None:
                    conn.close()
                self._drop_pool()  # its other connections went to the same dead service
                core.lost(exc, attempt, retry)
                continue
            except TimeoutError:
                if conn is not None:
                    conn.close()
                raise core.timed_out() from None
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._checkin(conn)
            return body
        raise AssertionError("unreachable")

    def _checkout(self, deadline: float) -> _Connection:
        with self._lock:
            if self.core.forked():  # the parent's sockets are not ours to use
                self._pool = []
            while self._pool:
                conn = self._pool.pop()
                if conn.idle():
                    return conn
                conn.close()  # late bytes answering nothing, or the service closed it: not reused
        return self._open(deadline)

    def _drop_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, []
        for conn in pool:
            conn.close()

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._pool) < _POOL_MAX and not self.core.forked():
                self._pool.append(conn)
                return
        conn.close()

    def _open(self, deadline: float) -> _Connection:
        """A new connection that has said hello; starts the service first in auto mode.

        Until ``deadline`` it waits out a service that is going away: after ``kill -9`` the socket
        may still accept for a moment (then drop the hello), or refuse until a new service listens.
        """
        core = self.core
        pause = core.first_pause
        while True:
            try:
                conn = _Connection(core.socket_path, core.remaining(deadline))
            except OSError as exc:
                core.unreachable(exc, deadline)
                deadline = spawn.ensure_running(core.socket_path, core.service_args, deadline)
                continue
            try:
                check_peer(conn.sock, core.socket_path, core.trusted)
                rid, data = core.frame(wire.HELLO)
                core.welcome(rid, *conn.call(data, deadline))
            except Lost as exc:  # a listener that is dying (or shutting down): try again shortly
                conn.close()
                wait, pause = pause, core.dying(exc, pause, deadline)
                time.sleep(wait)
                continue
            except BaseException:
                conn.close()
                raise
            return conn


_warned_fallback = False


def remote_url(socket_path: str | Path | None, url: str | Sequence[str] | None) -> str | Sequence[str] | None:
    """The HTTP embedders to use instead of the socket: ``url``, else ``$HIVEMEM_EMBEDDER_URL``
    when no ``socket_path`` is given (shared by ``connect`` and ``aconnect``)."""
    if url is None and socket_path is None:
        return Settings.from_env().embedder_url
    return url


def check_fallback(fallback: str | None) -> None:
    if fallback not in (None, "local"):
        raise ValueError(f"fallback must be None or 'local', got {fallback!r}")


def local_fallback(exc: BaseException, variant: str | None, threads: int | None) -> EmbedderLike:
    """``fallback="local"``: warn once per process that no service answered, and embed in this
    process instead (an in-process ``hivemem.Embedder``)."""
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"hivemem: no embedding service ({exc}); embedding in this process instead",
            RuntimeWarning,
            stacklevel=3,
        )
    from hivemem.embed.engine import Embedder

    return Embedder(variant=variant or "default", threads=threads)


def connect(
    socket_path: str | Path | None = None,
    *,
    autostart: bool = True,
    fallback: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    idle_timeout: float | None = None,
    variant: str | None = None,
    threads: int | None = None,
    replicas: int | None = None,
    trust_uids: Iterable[int] | None = None,
    url: str | Sequence[str] | None = None,
    api_key: str | None = None,
) -> EmbedderLike:
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
    check_fallback(fallback)
    url = remote_url(socket_path, url)
    if url is not None:
        from hivemem.embed.remote import RemoteEmbedder

        return RemoteEmbedder(url, api_key=api_key, timeout=timeout)
    args = service_args(idle_timeout=idle_timeout, variant=variant, threads=threads, replicas=replicas)
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
        return local_fallback(exc, variant, threads)
