"""The machine's MCP host: a companion of the embedding service (``hivemem serve`` composes it) that
serves the ``hivemem mcp`` relays on ``<socket>.mcp``.

One process per machine speaks MCP, so the SDK (~48 MB) and the stores are paid for once, and the
memory stores embed with the service's own engine, in process (no socket round trip). Each relay
connection sends a hello line ``{"hivemem_mcp": 1, "scope": {...}, "store": ...}``, answered
``{"ok": true}`` or ``{"error": …}``; then it carries newline-delimited JSON-RPC, served by the one
SDK server of ``hivemem.mcp.toolserver`` with the connection's ``Target`` attached to every message.
The SDK is imported on the first connection, so a service nobody reaches over MCP never loads it.

Limits: a message (line) is at most ``relay.MAX_MESSAGE`` bytes (a longer one closes the
connection with an error line); at most ``MAX_STORES`` stores are open at once. The socket is
0600 in the service's 0700 directory: only the service's own user connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivemem.errors import HivememError, LimitExceeded
from hivemem.mcp.relay import MAX_MESSAGE, PROTOCOL
from hivemem.mcp.tools import Caller
from hivemem.memory.records import ENTITIES, check_entity
from hivemem.service import paths

if TYPE_CHECKING:  # pragma: no cover
    from hivemem.service.server import Serving

log = logging.getLogger("hivemem.mcp")

MAX_STORES = 16  # memory stores one service keeps open for relays (each holds a connection pool)


class Stores:
    """``hivemem.Memory`` objects by location, opened on first use with the service's engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, store: str | None) -> Any:
        from hivemem.memory.storage.locate import resolve
        from hivemem.memory.store import Memory

        if store is not None and (not isinstance(store, str) or not store.strip()):
            raise ValueError("store must be a non-empty string (a SQLite file or a postgresql:// URL)")
        key = str(resolve(store))
        with self._lock:
            memory = self._open.get(key)
            if memory is None:
                if len(self._open) >= MAX_STORES:
                    raise LimitExceeded(
                        f"this service already has {MAX_STORES} memory stores open (MAX_STORES)",
                        limit_name="MAX_STORES",
                        limit=MAX_STORES,
                        field="store",
                    )
                memory = Memory(store, embedder=self.engine)
                self._open[key] = memory
            return memory

    def locations(self) -> list[str]:
        with self._lock:
            return [m.location for m in self._open.values()]

    def close(self) -> None:
        with self._lock:
            stores, self._open = list(self._open.values()), {}
        for memory in stores:
            memory.close()


def caller_of(hello: Any) -> tuple[Caller, str | None]:
    """The scope and store a relay's hello asks for, checked (ValueError/TypeError naming the field)."""
    if not isinstance(hello, dict) or hello.get("hivemem_mcp") != PROTOCOL:
        raise ValueError(f"not a hivemem mcp hello of protocol {PROTOCOL}")
    scope = hello.get("scope")
    if not isinstance(scope, dict) or set(scope) - set(ENTITIES):
        raise ValueError(f"scope must be an object of {', '.join(ENTITIES)}")
    fixed = {n: v for n in ENTITIES if (v := check_entity(n, scope.get(n))) is not None}
    if not fixed:
        raise ValueError("scope names no user_id, agent_id or run_id")
    return Caller(fixed=fixed), hello.get("store")


class McpHost:
    """The service companion serving relays (see the module docstring)."""

    def __init__(self, sock: Path) -> None:
        self.path = paths.mcp_path(sock)
        self.sessions = 0
        self.served = 0
        self._stores: Stores | None = None
        self._server: Any = None
        self._build_lock: asyncio.Lock | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # ---- Companion -----------------------------------------------------------------------------

    def prepare(self, serving: Serving) -> None:
        self._stores = Stores(serving.engine)

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        self._build_lock = asyncio.Lock()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # the service holds the pid lock: a socket file here is stale
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(self.path), limit=MAX_MESSAGE + 1)
        finally:
            os.umask(old)
        log.info("hivemem service: MCP relays on %s", self.path)
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()  # relays reconnect to the next service and resend what is unanswered
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def close(self) -> None:
        if self._stores is not None:
            self._stores.close()

    def connections(self) -> int:
        return self.sessions

    def status(self) -> dict[str, Any]:
        stores = self._stores.locations() if self._stores is not None else []
        return {"mcp": {"socket": str(self.path), "sessions": self.sessions, "stores": stores}}

    # ---- one relay -----------------------------------------------------------------------------

    async def _sdk_server(self) -> Any:
        assert self._build_lock is not None
        async with self._build_lock:
            if self._server is None:

                def build() -> Any:
                    from hivemem.mcp.toolserver import build_server

                    return build_server()

                self._server = await asyncio.to_thread(build)  # importing the SDK takes ~1 s
        return self._server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        self._writers.add(writer)
        try:
            target = await self._greet(reader, writer)
            if target is not None:
                await self._session(reader, writer, target)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the relay went away (its agent exited or was killed)
        except Exception:
            log.exception("hivemem MCP: a relay session failed")
        finally:
            self.sessions -= 1
            self._writers.discard(writer)
            writer.close()

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        from hivemem.mcp.toolserver import Target

        try:
            line = await reader.readline()
            caller, store = caller_of(json.loads(line))
            assert self._stores is not None
            memory = await asyncio.to_thread(self._stores.get, store)
            await self._sdk_server()
        except (HivememError, ValueError, TypeError) as exc:
            writer.write(json.dumps({"error": str(exc)}).encode() + b"\n")
            await writer.drain()
            return None
        writer.write(json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
        return Target(memory=memory, caller=caller, entities=False)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: Any) -> None:
        import anyio
        import mcp_types as types
        from mcp.shared.message import ServerMessageMetadata, SessionMessage

        server = self._server
        read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)

        async def pump_in() -> None:
            async with read_send:
                while True:
                    try:
                        line = await reader.readline()
                    except ValueError:  # longer than MAX_MESSAGE: the stream cannot be resynced
                        error = {"code": -32600, "message": f"message exceeds {MAX_MESSAGE} bytes"}
                        writer.write(
                            json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode() + b"\n"
                        )
                        return
                    if not line:
                        return
                    if not line.strip():
                        continue
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    except Exception as exc:
                        await read_send.send(exc)
                        continue
                    await read_send.send(
                        SessionMessage(message, metadata=ServerMessageMetadata(request_context=target))
                    )

        async def pump_out() -> None:
            async with write_recv:
                async for outgoing in write_recv:
                    text = outgoing.message.model_dump_json(by_alias=True, exclude_unset=True)
                    writer.write(text.encode() + b"\n")
                    await writer.drain()

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            await server.run(read_recv, write_send, server.create_initialization_options())
            tg.cancel_scope.cancel()
