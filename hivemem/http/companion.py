"""Running the HTTP application inside ``hivemem serve --http``, on the service's event loop.

The embedding service (``hivemem.service``) runs *companions* beside its socket and knows nothing
else about them; ``HttpServer`` is the one that composes the HTTP application: it builds the
memory store (``hivemem.Memory`` on the service's own engine, so HTTP, socket and memory embedding
share one queue and one cache) and the warm agent pool, mounts them with ``app.create_app`` and
serves the app with uvicorn. ``HttpConfig`` holds its options (``hivemem serve``'s HTTP options).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hivemem.http.keys import Scope
from hivemem.http.limits import DEFAULT_MAX_BODY, DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:  # pragma: no cover
    from hivemem.service.server import Serving

log = logging.getLogger("hivemem.http")


@dataclass
class HttpConfig:
    """What ``hivemem serve`` can set for HTTP (the same names as its options)."""

    bind: str  # HOST:PORT
    api_key: str | None = None
    keys: dict[str, Scope] = field(default_factory=dict)  # key → scope (hivemem.http.keys)
    memory: bool = True  # serve the memory store under /v1/memories
    mcp: bool = True  # and its MCP tools at /mcp (Streamable HTTP)
    memory_path: str | Path | None = None  # a file or a postgresql:// URL; None: Memory's default
    agent_factory: Callable[[], Any] | None = None
    agent_fn: Callable[..., Any] | None = None
    agent_workers: int = 2
    agent_kind: Literal["process", "thread"] = "process"
    max_body: int = DEFAULT_MAX_BODY
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds to receive one whole request (408 after)


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → ``(host, port)``; ValueError naming the problem."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--http expects HOST:PORT (e.g. 127.0.0.1:8080), got {bind!r}")
    return host.strip("[]"), int(port)


class HttpServer:
    """The HTTP application as a companion of the embedding service (``hivemem.service.server``).

    Built before the service loads its model, so a bad bind address or a missing key fails in
    milliseconds; ``prepare`` (on the service's loop, with the engine) opens the memory store and
    starts the agent pool; ``serve`` runs uvicorn until ``stop``; ``close`` releases the store and
    the pool after the last request, before the engine closes.
    """

    def __init__(self, config: HttpConfig) -> None:
        from hivemem.http.app import check_binding

        self.config = config
        self.host, self.port = parse_bind(config.bind)
        check_binding(self.host, config.api_key or config.keys)
        if (config.agent_factory is None) != (config.agent_fn is None):
            raise ValueError("an agent route needs both a factory and a function")
        self._server: Any = None
        self._closers: list[Callable[[], Any]] = []
        self._memory_path: str | None = None
        self._mcp: Any = None

    def prepare(self, serving: Serving) -> None:
        import uvicorn

        from hivemem.http.app import create_app
        from hivemem.http.limits import read_timeout_protocol

        config = self.config
        memory = pool = None
        if config.memory:
            from hivemem.memory.store import Memory

            memory = Memory(config.memory_path, embedder=serving.engine)  # the service's engine, not a client
            self._memory_path = memory.location  # a PostgreSQL URL without its password
            self._closers.append(memory.close)
        if config.agent_fn is not None and config.agent_factory is not None:
            from hivemem.pool.pool import WorkerPool

            agents = WorkerPool(config.agent_factory, size=config.agent_workers, kind=config.agent_kind)
            pool = agents
            self._closers.append(lambda: agents.close(cancel_pending=True))
        app = create_app(
            serving.engine,
            api_key=config.api_key,
            host=self.host,
            metrics=serving.metrics,
            admission=serving.admission,
            status=serving.status,
            keys=config.keys,
            memory=memory,
            mcp=config.mcp,
            agent_pool=pool,
            agent_fn=config.agent_fn,
            max_body=config.max_body,
        )
        http = read_timeout_protocol(config.read_timeout)
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=self.host, port=self.port, log_level="warning", lifespan="off", http=http
            )
        )
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # our signals
        self._server = server
        self._mcp = getattr(app.state, "mcp", None)

    async def serve(self) -> None:
        log.info("hivemem service: HTTP on http://%s:%d", self.host, self.port)
        async with self._mcp.manager.run() if self._mcp is not None else contextlib.nullcontext():
            await self._server.serve()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # uvicorn finishes the open requests, then returns

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def status(self) -> dict[str, Any]:
        return {"http": self.config.bind, "memory_path": self._memory_path}

    def connections(self) -> int:
        return 0  # HTTP clients hold no connection the idle timeout should wait for
