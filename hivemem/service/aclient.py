"""``await hivemem.aconnect()``: the service client for asyncio code, on native asyncio streams.

Same frames, same trust checks, same options and the same retry rule as the threaded client —
they are one ``hivemem.service.core.ClientCore`` — but a request never occupies a thread: an async
web backend can keep hundreds in flight. Starting the service (a blocking wait on a lock file)
runs in a worker thread. This module only does the asyncio I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hivemem.embed.validate import check_text
from hivemem.service import spawn, wire
from hivemem.service.core import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    ClientCore,
    Lost,
    service_args,
)
from hivemem.service.peer import check_peer

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


class AsyncServiceClient:
    """``aembed``/``aembed_one``/``model_id``/``dim``/``aclose``; build it with ``aconnect()``."""

    def __init__(self, core: ClientCore) -> None:
        self.core = core
        self.socket_path = core.socket_path
        self._pool: list[_Stream] = []

    @property
    def model_id(self) -> str:
        return self.core.model_id

    @property
    def dim(self) -> int:
        return self.core.dim

    @property
    def info(self) -> dict:
        return self.core.info

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        items, payloads = self.core.embed_frames(texts)
        return self.core.vectors([await self._request(p) for p in payloads], len(items))

    async def aembed_one(self, text: str) -> np.ndarray:
        return (await self.aembed([check_text(text)]))[0]

    async def aclose(self) -> None:
        pool, self._pool = self._pool, []
        for _, writer in pool:
            writer.close()

    async def __aenter__(self) -> AsyncServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, payload: bytes) -> bytearray:
        try:
            return await asyncio.wait_for(
                self._attempts(payload, self.core.call_deadline()), self.core.timeout
            )
        except TimeoutError:
            raise self.core.timed_out() from None

    async def _attempts(self, payload: bytes, deadline: float) -> bytearray:
        core = self.core
        for attempt in core.attempts():
            conn: _Stream | None = None
            try:
                if core.forked():  # the parent's streams are not ours to use
                    self._pool = []
                conn = self._pool.pop() if self._pool else await self._open(deadline)
                rid, data = core.frame(wire.EMBED, payload)
                body = core.reply(rid, *await _call(conn, data), wire.VECTORS)
            except Lost as exc:
                if conn is not None:
                    conn[1].close()
                await self.aclose()  # its other connections went to the same dead service
                core.lost(exc, attempt)
                continue
            except BaseException:
                if conn is not None:
                    conn[1].close()
                raise
            if len(self._pool) < _POOL_MAX:
                self._pool.append(conn)
            else:
                conn[1].close()
            return body
        raise AssertionError("unreachable")

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


async def aconnect(
    socket_path: str | Path | None = None,
    *,
    autostart: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    idle_timeout: float | None = None,
    variant: str | None = None,
    threads: int | None = None,
    replicas: int | None = None,
    trust_uids: Iterable[int] | None = None,
) -> AsyncServiceClient:
    """The asyncio twin of ``hivemem.connect()`` (attach, or start the service in auto mode); the
    same options, which apply only to a service this call starts."""
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
        conn = await client._open(core.first_deadline())
    except (Lost, TimeoutError) as exc:
        raise core.unavailable(exc) from None
    client._pool.append(conn)
    return client
