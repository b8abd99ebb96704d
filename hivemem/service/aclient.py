"""``await hivemem.aconnect()``: the service client for asyncio code, on native asyncio streams.

Same frames, same trust checks and the same retry rule as the threaded client (reconnect, waiting
out a dying listener and restarting in auto mode, then send once more), but a request never occupies
a thread: an async web backend can keep hundreds in flight. Starting
the service (a blocking wait on a lock file) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.embed.validate import check_text, check_texts
from hivemem.errors import ProtocolError, ServiceError, ServiceUnavailable
from hivemem.service import paths, spawn, wire
from hivemem.service.client import _chunks, _Lost, _raise_error, check_peer, trusted_uids

_POOL_MAX = 16


class AsyncServiceClient:
    """``aembed``/``aembed_one``/``model_id``/``dim``/``aclose``; build it with ``aconnect()``."""

    def __init__(
        self,
        sock: Path,
        *,
        timeout: float,
        autostart: bool,
        service_args: list[str],
        trust_uids: Iterable[int] | None = None,
    ) -> None:
        self.socket_path = sock
        self.timeout = timeout
        self.autostart = autostart
        self.service_args = service_args
        self.trusted = trusted_uids(trust_uids)
        self.info: dict[str, Any] = {}
        self._pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._ids = itertools.count(1)

    @property
    def model_id(self) -> str:
        return self.info["model_id"]

    @property
    def dim(self) -> int:
        return self.info["dim"]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [wire.decode_vectors(await self._request(wire.encode_texts(c))) for c in _chunks(items)]
        return wire.join_vectors(parts, len(items), self.dim)

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
        deadline = time.monotonic() + self.timeout
        try:
            return await asyncio.wait_for(self._attempts(payload, deadline), self.timeout)
        except TimeoutError:
            raise ServiceError(f"no answer from the hivemem service within {self.timeout:g} s") from None

    async def _attempts(self, payload: bytes, deadline: float) -> bytearray:
        for attempt in (0, 1):
            conn = None
            try:
                conn = self._pool.pop() if self._pool else await self._open(deadline)
                rtype, body = await _call(conn, wire.EMBED, next(self._ids), payload)
                if rtype == wire.ERROR:
                    _raise_error(body)
                if rtype != wire.VECTORS:
                    raise ProtocolError(f"expected VECTORS, got frame type {rtype}")
            except _Lost as exc:
                if conn is not None:
                    conn[1].close()
                await self.aclose()
                if attempt:
                    raise ServiceUnavailable(
                        f"lost the hivemem service at {self.socket_path}: {exc}"
                    ) from None
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

    async def _open(self, deadline: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pause = 0.02
        while True:
            try:
                conn = await asyncio.open_unix_connection(str(self.socket_path))
            except OSError as exc:
                if not self.autostart or time.monotonic() >= deadline:
                    raise ServiceUnavailable(f"no hivemem service at {self.socket_path} ({exc})") from None
                await asyncio.to_thread(spawn.ensure_running, self.socket_path, self.service_args, deadline)
                continue
            try:
                check_peer(conn[1].get_extra_info("socket"), self.socket_path, self.trusted)
                rtype, body = await _call(conn, wire.HELLO, next(self._ids), b"")
            except _Lost as exc:  # a listener that is dying: try again shortly, until the deadline
                conn[1].close()
                if time.monotonic() + pause >= deadline:
                    raise ServiceUnavailable(
                        f"lost the hivemem service at {self.socket_path}: {exc}"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            except BaseException:
                conn[1].close()
                raise
            if rtype != wire.WELCOME:
                conn[1].close()
                raise ProtocolError(f"expected WELCOME, got frame type {rtype}")
            info = wire.decode_json(body)
            if self.info and info["model_id"] != self.info["model_id"]:
                conn[1].close()
                raise ServiceError(
                    f"the service now serves {info['model_id']!r}, not {self.info['model_id']!r}"
                )
            self.info = info
            return conn


async def _call(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], ftype: int, rid: int, payload: bytes
) -> tuple[int, bytearray]:
    reader, writer = conn
    try:
        writer.write(wire.header(ftype, rid, len(payload)) + payload)
        await writer.drain()
        rtype, rrid, length = wire.parse_header(await reader.readexactly(wire.HEADER_SIZE), wire.MAX_REPLY)
        body = bytearray(await reader.readexactly(length))
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise _Lost(str(exc) or type(exc).__name__) from None
    if rrid not in (rid, 0):
        raise ProtocolError(f"reply for request {rrid} while waiting for {rid}")
    return rtype, body


async def aconnect(
    socket_path: str | Path | None = None,
    *,
    autostart: bool = True,
    timeout: float = 60.0,
    idle_timeout: float | None = None,
    trust_uids: Iterable[int] | None = None,
) -> AsyncServiceClient:
    """The asyncio twin of ``hivemem.connect()`` (attach, or start the service in auto mode)."""
    args = ["--idle-timeout", str(idle_timeout)] if idle_timeout is not None else []
    client = AsyncServiceClient(
        paths.socket_path(socket_path),
        timeout=timeout,
        autostart=autostart,
        service_args=args,
        trust_uids=trust_uids,
    )
    conn = await client._open(time.monotonic() + max(timeout, 120.0 if autostart else 0.0))
    client._pool.append(conn)
    return client
