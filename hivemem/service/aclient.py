"""``await hivemem.aconnect()``: the service client for asyncio code, on native asyncio streams.

Same frames, same trust checks, same options and the same retry rule as the threaded client —
they are one ``hivemem.service.core.ClientCore`` — but a request never occupies a thread: an async
web backend can keep hundreds in flight. Starting the service (a blocking wait on a lock file)
runs in a worker thread. This module only does the asyncio I/O.

``aconnect`` takes the options of ``connect`` (``url=``, ``fallback="local"`` included) and every
object it returns has one surface: ``aembed``/``aembed_one``/``astats``/``aclose``, a ``closed``
state after which calls raise ``ServiceError``, and ``async with``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hivemem.embed.validate import check_text
from hivemem.errors import ServiceError
from hivemem.service import spawn, wire
from hivemem.service.client import check_fallback, local_fallback, remote_url
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

_POOL_MAX = 16
_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _call(conn: _Stream, data: bytes) -> tuple[int, int, bytearray]:
    """Send ``data`` and read one reply ``(type, request id, payload)``."""
    reader, writer = conn
    try:
        writer.write(data)
        await writer.drain()
        rtype, rrid, length = ClientCore.reply_header(await reader.readexactly(wire.HEADER_SIZE))
        return rtype, rrid, bytearray(await reader.readexactly(length))
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise Lost(str(exc) or type(exc).__name__) from None


@runtime_checkable
class AsyncEmbedder(Protocol):
    """What ``aconnect`` returns, whichever embedder stands behind it."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aembed_one(self, text: str) -> np.ndarray: ...

    async def astats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class AsyncServiceClient:
    """``aembed``/``aembed_one``/``astats``/``ashutdown``/``aclose``; build it with ``aconnect()``."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.socket_path = core.socket_path
        self._pool: list[_Stream] = []
        self._closed = False

    @property
    def model_id(self) -> str:
        return self.core.model_id

    @property
    def dim(self) -> int:
        return self.core.dim

    @property
    def info(self) -> dict[str, Any]:
        return self.core.info

    @property
    def service_pid(self) -> int:
        return int(self.core.info["pid"])

    @property
    def restarts(self) -> int:
        return self.core.restarts

    @property
    def closed(self) -> bool:
        return self._closed

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        items, payloads = self.core.embed_frames(texts)
        return self.core.vectors([await self._request(wire.EMBED, p) for p in payloads], len(items))

    async def aembed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = (await self.aembed([check_text(text)]))[0]
        return one

    async def astats(self) -> dict[str, Any]:
        """The service's status (pid, model, uptime, queue, cache, clients, metrics)."""
        return dict(wire.decode_json(await self._request(wire.STATS, b"", expect=wire.STATS_REPLY)))

    async def ashutdown(self) -> None:
        """Ask the service to drain its queue and exit (for every client, not only this one)."""
        await self._request(wire.SHUTDOWN, b"", expect=wire.OK, retry=False)

    async def aclose(self) -> None:
        """Close every connection; later calls raise ``ServiceError`` (closing twice is fine)."""
        self._closed = True
        self._drop_pool()

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, []
        for _, writer in pool:
            writer.close()

    async def _request(
        self, ftype: int, payload: bytes, *, expect: int = wire.VECTORS, retry: bool = True
    ) -> bytearray:
        if self._closed:
            raise ServiceError("this client is closed")
        try:
            return await asyncio.wait_for(
                self._attempts(ftype, payload, self.core.call_deadline(), expect, retry), self.core.timeout
            )
        except TimeoutError:
            raise self.core.timed_out() from None

    async def _attempts(
        self, ftype: int, payload: bytes, deadline: float, expect: int, retry: bool
    ) -> bytearray:
        core = self.core
        for attempt in core.attempts(retry):
            conn: _Stream | None = None
            try:
                if core.forked():  # the parent's streams are not ours to use
                    self._pool = []
                conn = self._take()
                if conn is None:
                    conn = await self._open(deadline)
                rid, data = core.frame(ftype, payload)
                body = core.reply(rid, *await _call(conn, data), expect)
            except Lost as exc:
                if conn is not None:
                    conn[1].close()
                self._drop_pool()  # its other connections went to the same dead service
                core.lost(exc, attempt, retry)
                continue
            except BaseException:
                if conn is not None:
                    conn[1].close()
                raise
            if not self._closed and len(self._pool) < _POOL_MAX:
                self._pool.append(conn)
            else:
                conn[1].close()
            return body
        raise AssertionError("unreachable")

    def _take(self) -> _Stream | None:
        """A pooled stream with nothing to read, or None. Bytes that came after a reply (they
        answer no request) or the service's end of stream: that stream is closed, not reused."""
        while self._pool:
            conn = self._pool.pop()
            reader = conn[0]
            # asyncio has no public "bytes buffered" on a StreamReader; _buffer is its bytearray
            if not reader.at_eof() and not getattr(reader, "_buffer", None):
                return conn
            conn[1].close()
        return None

    async def _open(self, deadline: float) -> _Stream:
        """A new connection that has said hello (see ``ServiceClient._open``)."""
        core = self.core
        pause = core.first_pause
        while True:
            try:
                conn = await asyncio.open_unix_connection(str(core.socket_path))
            except OSError as exc:
                core.unreachable(exc, deadline)
                deadline = await asyncio.to_thread(
                    spawn.ensure_running, core.socket_path, core.service_args, deadline
                )
                continue
            try:
                check_peer(conn[1].get_extra_info("socket"), core.socket_path, core.trusted)
                rid, data = core.frame(wire.HELLO)
                core.welcome(rid, *await _call(conn, data))
            except Lost as exc:  # a listener that is dying: try again shortly, until the deadline
                conn[1].close()
                wait, pause = pause, core.dying(exc, pause, deadline)
                await asyncio.sleep(wait)
                continue
            except BaseException:
                conn[1].close()
                raise
            return conn


class AsyncOverThreads:
    """The ``aconnect`` surface over an embedder that is not the service: a ``RemoteEmbedder``
    (``url=``) or the in-process ``Embedder`` (``fallback="local"``). Their ``aembed`` already runs
    off the event loop; ``astats``/``aclose`` run their blocking twins on a worker thread."""

    def __init__(self, embedder: EmbedderLike) -> None:
        self.embedder = embedder
        self._closed = False

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def closed(self) -> bool:
        return self._closed

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        self._check_open()
        return await self.embedder.aembed(texts)

    async def aembed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = (await self.aembed([check_text(text)]))[0]
        return one

    async def astats(self) -> dict[str, Any]:
        self._check_open()
        stats = getattr(self.embedder, "stats", None)
        return dict(await asyncio.to_thread(stats)) if stats is not None else {}

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self.embedder, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def __aenter__(self) -> AsyncOverThreads:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceError("this client is closed")


async def aconnect(
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
) -> AsyncServiceClient | AsyncOverThreads:
    """The asyncio twin of ``hivemem.connect()``, with the same options and rules: attach to the
    service (starting it in auto mode; the service options apply only to a service this call
    starts), or embed on other hosts (``url=`` / ``$HIVEMEM_EMBEDDER_URL``), or, with
    ``fallback="local"``, in this process when no service can be reached. Blocking work (starting
    a service, probing hosts, loading a local model) runs on a worker thread."""
    check_fallback(fallback)
    url = remote_url(socket_path, url)
    if url is not None:
        from hivemem.embed.remote import RemoteEmbedder

        remote = await asyncio.to_thread(RemoteEmbedder, url, api_key=api_key, timeout=timeout)
        return AsyncOverThreads(remote)
    core = ClientCore(
        socket_path,
        timeout=timeout,
        autostart=autostart,
        start_timeout=start_timeout,
        service_args=service_args(
            idle_timeout=idle_timeout, variant=variant, threads=threads, replicas=replicas
        ),
        trust_uids=trust_uids,
    )
    client = AsyncServiceClient(core)
    try:
        try:
            conn = await client._open(core.first_deadline())
        except (Lost, TimeoutError) as exc:
            raise core.unavailable(exc) from None
    except (ServiceError, OSError) as exc:
        if fallback is None:
            raise
        return AsyncOverThreads(await asyncio.to_thread(local_fallback, exc, variant, threads))
    client._pool.append(conn)
    return client
