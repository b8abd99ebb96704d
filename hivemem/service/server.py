"""The service process: one engine and an asyncio Unix-socket server, plus any *companions* on the
same loop.

Threads: the event loop reads and writes frames for every connection; model compute runs on the
engine's queue thread(s). A connection's requests run as independent tasks, so one slow or dead
client only ever stalls its own replies.

Per-client bounds (the socket is the user's own, but one careless process must not stall the
others): a frame must arrive whole within ``read_timeout`` of its header, else the connection is
dropped with what it sent so far (a frame that declared 32 MiB and stalled held it forever); and
one connection may have at most ``max_conn_texts`` texts in flight — past that the service stops
reading its frames until replies went out, so a client that pipelines thousands of texts without
reading its replies waits on itself instead of filling the queue every other client shares.

Lifecycle: a pid file locked for the service's whole life proves a socket file is not stale;
SIGTERM/SIGINT (or a SHUTDOWN frame) stop accepting, finish in-flight requests, drain the queue,
then remove the socket.

Companions: servers that share the engine from the same process — ``hivemem serve --http`` runs the
HTTP application (``hivemem.http.companion.HttpServer``) as one. The service knows them only through
the small ``Companion`` protocol below: it hands them a ``Serving`` (engine, metrics, status), runs
them beside the socket, stops them first and closes them before the engine. It builds no memory
store, no worker pool and no web app itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hivemem.embed.onnx_backend import default_threads
from hivemem.errors import AlreadyRunning, FrameTooLarge, ProtocolError, QueueFull, ServiceBusy
from hivemem.infra import config as hm_config
from hivemem.infra.locks import FileLock
from hivemem.service import eventloop, paths, wire
from hivemem.service.admission import Admission
from hivemem.service.metrics import ServiceMetrics
from hivemem.service.replicas import build_engine, release_free_memory

log = logging.getLogger("hivemem.service")

# Seconds with no text in flight before the memory freed while serving goes back to the OS
# (``malloc_trim``): long enough that a fleet in full swing (gaps of milliseconds between its
# batches) never pays for it, short enough that a service between bursts stays small.
TRIM_AFTER_S = 0.2
# At most one trim per this many seconds: a lone client calling every ~0.3 s would otherwise have
# the service trim after every call (docs/service.md, "Trimming a lone client's service").
TRIM_EVERY_S = 10.0


@dataclass
class ServiceConfig:
    """The embedding service's options (the same names as ``hivemem serve``'s)."""

    socket: Path
    replicas: int = 1
    threads: int | None = None
    variant: str = "default"
    max_pending: int = 4096
    busy_timeout: float = 10.0
    idle_timeout: float = 0.0  # seconds without any connected client before exiting; 0 = never
    max_frame: int = wire.DEFAULT_MAX_FRAME
    write_timeout: float = 30.0
    read_timeout: float = 30.0  # seconds from a frame's header to its last payload byte
    max_conn_texts: int | None = None  # texts one connection may have in flight; None: max_pending // 4
    cache: bool = True
    # How this service was started (``spawn.start_command``): recorded next to the socket while it
    # runs, so that a replacement after kill -9 comes back with the same options. None: not recorded.
    replay: dict[str, Any] | None = None


@dataclass
class Serving:
    """What the service shares with its companions."""

    engine: Any  # EmbedderLike plus stats() and close(): the one queue and cache of this machine
    metrics: ServiceMetrics
    status: Callable[[], dict[str, Any]]  # the service's STATS (pid, model, queue, cache, metrics)
    admission: Admission  # permits for texts in flight, shared by every transport


class Companion(Protocol):
    """A server run on the service's loop beside the socket (see the module docstring)."""

    def prepare(self, serving: Serving) -> None:
        """Build what it serves; raising here stops the service before it listens."""

    async def serve(self) -> None:
        """Serve until ``stop``; raising stops the service."""

    def stop(self) -> None:
        """Stop taking requests and let ``serve`` return once the open ones are answered."""

    def close(self) -> None:
        """Release its own resources (run in a thread, after ``serve`` returned, before the engine
        closes)."""

    def status(self) -> dict[str, Any]:
        """Fields merged into the service's STATS reply."""

    def connections(self) -> int:
        """Clients connected to it now: while any are, an idle timeout does not run out."""


class PidLock:
    """An exclusive ``flock`` on ``<socket>.pid`` held while the service lives."""

    def __init__(self, sock: Path) -> None:
        self.path = paths.pid_path(sock)
        self._lock = FileLock(self.path)
        if not self._lock.acquire(timeout=0):
            owner = self._lock.read(32) or "?"
            self._lock.release()
            raise AlreadyRunning(f"a hivemem service (pid {owner}) is already running on {sock}")
        # The file is truncated, never unlinked: unlinking would let a second service lock a new inode.
        self._lock.write(f"{os.getpid()}\n")

    def release(self) -> None:
        self._lock.write("")
        self._lock.release()


class Service:
    """The socket server around one engine (``EmbedderLike`` plus ``stats()`` and ``close()``)."""

    def __init__(
        self,
        engine: Any,
        config: ServiceConfig,
        metrics: ServiceMetrics,
        companions: Sequence[Companion] = (),
    ) -> None:
        self.engine = engine
        self.config = config
        self.metrics = metrics
        self.companions = list(companions)
        self.admission = Admission(config.max_pending, config.busy_timeout, on_idle=self._idle)
        self.trims = 0  # times freed memory was given back after serving (``TRIM_AFTER_S``)
        self._trim_timer: asyncio.TimerHandle | None = None
        self._trimming = False
        self._last_trim = -math.inf
        self.clients = 0
        self.closing = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stop = asyncio.Event()
        self._idle_since = time.monotonic()
        self.event_loop = ""  # the kind of loop ``run`` runs on (eventloop.running)

    # ---- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self.event_loop = eventloop.running()
        sock = self.config.socket
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # we hold the pid lock, so any socket file here is stale
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            server = await asyncio.start_unix_server(self._handle, path=str(sock))
        finally:
            os.umask(old)
        sock.chmod(0o600)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        serving = Serving(self.engine, self.metrics, self.status, self.admission)
        try:
            for companion in self.companions:
                companion.prepare(serving)
        except BaseException:
            server.close()
            await asyncio.to_thread(self._close_companions)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            raise
        background = [asyncio.create_task(c.serve()) for c in self.companions]
        if self.config.idle_timeout > 0:
            background.append(asyncio.create_task(self._watch_idle()))
        log.info("hivemem service pid %d serving %s on %s", os.getpid(), self.engine.model_id, sock)
        try:
            waiter = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([waiter, *background], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not waiter and task.exception() is not None:
                    log.error("hivemem service: %r; shutting down", task.exception())
        finally:
            self.closing = True
            server.close()
            for companion in self.companions:
                companion.stop()
            if self._inflight:
                await asyncio.wait(self._inflight, timeout=60)
            if self.companions:  # they finish their open requests
                await asyncio.wait(background[: len(self.companions)], timeout=30)
            await asyncio.to_thread(self._close_companions)
            await asyncio.to_thread(self.engine.close)  # drains whatever is still queued
            for writer in list(self._writers):
                writer.close()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
            log.info("hivemem service pid %d stopped", os.getpid())

    def _close_companions(self) -> None:
        for companion in self.companions:
            try:
                companion.close()
            except Exception:
                log.exception("hivemem service: closing %r failed", companion)

    async def _watch_idle(self) -> None:
        period = min(1.0, self.config.idle_timeout / 4)
        while True:
            await asyncio.sleep(period)
            if any(c.connections() for c in self.companions):
                self._idle_since = time.monotonic()
            if self.clients == 0 and time.monotonic() - self._idle_since >= self.config.idle_timeout:
                log.info("hivemem service: no client for %g s, exiting", self.config.idle_timeout)
                self.stop()
                return

    def _idle(self) -> None:
        """The last texts in flight were answered: give freed memory back unless others come
        within ``TRIM_AFTER_S``."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._trim_timer = asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._trim)

    def _trim(self) -> None:
        """``malloc_trim`` in a thread (it walks every arena): the activations, token arrays and
        frames of the batches just served are free but would stay resident in glibc's arenas
        (docs/service.md, "Many callers (issue 25)")."""
        self._trim_timer = None
        if self.admission.in_flight or self._trimming or self.closing:
            return
        wait = self._last_trim + TRIM_EVERY_S - time.monotonic()
        if wait > 0:  # trimmed a moment ago: once more when the interval is over, if still idle
            self._trim_timer = asyncio.get_running_loop().call_later(wait, self._trim)
            return
        self._last_trim = time.monotonic()
        self._trimming = True
        self.trims += 1

        def done(_: object) -> None:
            self._trimming = False

        asyncio.get_running_loop().run_in_executor(None, release_free_memory).add_done_callback(done)

    def status(self) -> dict[str, Any]:
        engine = self.engine.stats()
        out = {
            "pid": os.getpid(),
            "model_id": self.engine.model_id,
            "dim": self.engine.dim,
            "socket": str(self.config.socket),
            "idle_timeout": self.config.idle_timeout,
            "uptime_s": round(time.time() - self.metrics.started, 3),
            "clients": self.clients,
            "replicas": engine.get("replicas", 1),
            "threads": self.config.threads or default_threads(),
            "queue": engine.get("queue"),
            "admission": self.admission.stats(),
            "cache": engine.get("cache"),
            "metrics": self.metrics.snapshot(),
            "memory_trims": self.trims,
            "event_loop": self.event_loop,  # uvloop or asyncio (HIVEMEM_EVENT_LOOP)
            # where this process keeps its files (``hivemem status`` shows them)
            "home": str(hm_config.home()),
            "cache_path": str(hm_config.cache_path()) if self.config.cache else None,
        }
        for companion in self.companions:
            out.update(companion.status())
        return out

    # ---- connections -----------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        self._writers.add(writer)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; its queued requests still finish for nobody
        finally:
            self.clients -= 1
            self._writers.discard(writer)
            if self.clients == 0:
                self._idle_since = time.monotonic()
            writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cap = self.config.max_conn_texts or max(1, self.config.max_pending // 4)
        flight = _InFlight(cap)
        while True:
            try:
                head = await reader.readexactly(wire.HEADER_SIZE)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    await self._refuse(writer, 0, wire.E_MALFORMED, "connection closed inside a frame header")
                return
            try:
                ftype, rid, length = wire.parse_header(head, self.config.max_frame)
                if ftype not in wire.REQUEST_TYPES:
                    raise ProtocolError(f"unknown request type {ftype}")
            except ProtocolError as exc:
                code = wire.E_TOO_LARGE if isinstance(exc, FrameTooLarge) else wire.E_MALFORMED
                await self._refuse(writer, 0, code, str(exc))
                return
            try:
                async with asyncio.timeout(self.config.read_timeout):
                    payload = await reader.readexactly(length)
            except TimeoutError:
                await self._refuse(
                    writer, rid, wire.E_MALFORMED,
                    f"a frame of {length} bytes did not arrive within {self.config.read_timeout:g} s",
                )  # fmt: skip
                return
            if ftype == wire.EMBED:
                try:
                    texts = wire.decode_texts(payload)
                except ProtocolError as exc:
                    await self._refuse(writer, rid, wire.E_MALFORMED, str(exc))
                    return
                del payload  # the texts are decoded: do not keep the frame while waiting below
                if self.closing:
                    self._send_error(writer, rid, wire.E_SHUTTING_DOWN, "the service is shutting down")
                    continue
                await flight.room(len(texts))  # not reading meanwhile: the client waits on itself
                task = asyncio.create_task(self._embed(writer, rid, texts))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                task.add_done_callback(flight.done(len(texts)))
            elif ftype == wire.HELLO:
                info = {"pid": os.getpid(), "model_id": self.engine.model_id, "dim": self.engine.dim}
                writer.write(wire.frame(wire.WELCOME, rid, wire.encode_json(info)))
            elif ftype == wire.STATS:
                writer.write(wire.frame(wire.STATS_REPLY, rid, wire.encode_json(self.status())))
            elif ftype == wire.SHUTDOWN:
                writer.write(wire.frame(wire.OK, rid))
                await writer.drain()
                self.stop()

    async def _embed(self, writer: asyncio.StreamWriter, rid: int, texts: list[str]) -> None:
        start = time.perf_counter()
        try:
            await self.admission.acquire(len(texts))  # (not ``permit``: no generator per request)
            try:
                vectors = await self.engine.aembed(texts)
            finally:
                self.admission.release(len(texts))
        except (ServiceBusy, QueueFull) as exc:
            self.metrics.error("busy")
            self._send_error(writer, rid, wire.E_BUSY, str(exc))
            return
        except (TypeError, ValueError) as exc:
            self.metrics.error("bad_request")
            self._send_error(writer, rid, wire.E_BAD_REQUEST, str(exc))
            return
        except Exception as exc:
            self.metrics.error("internal")
            log.exception("hivemem service: embedding failed")
            code = wire.E_SHUTTING_DOWN if self.closing else wire.E_INTERNAL
            self._send_error(writer, rid, code, f"{type(exc).__name__}: {exc}")
            return
        self.metrics.request("socket", len(texts), time.perf_counter() - start)
        if writer.is_closing():
            return
        payload = wire.encode_vectors(vectors)
        writer.write(wire.header(wire.VECTORS, rid, len(payload)) + payload)
        transport = writer.transport
        if transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]:
            return  # not paused: drain() would return at once (wait_for costs a task per reply)
        try:
            await asyncio.wait_for(writer.drain(), self.config.write_timeout)
        except (TimeoutError, ConnectionError):
            writer.transport.abort()  # a client that stopped reading loses its connection, nobody else

    def _send_error(self, writer: asyncio.StreamWriter, rid: int, code: int, message: str) -> None:
        if not writer.is_closing():
            writer.write(wire.frame(wire.ERROR, rid, wire.encode_error(code, message)))

    async def _refuse(self, writer: asyncio.StreamWriter, rid: int, code: int, message: str) -> None:
        """Answer a broken frame with an error frame, then close: the stream cannot be resynced."""
        self.metrics.error("malformed" if code == wire.E_MALFORMED else "too_large")
        log.warning("hivemem service: refusing a connection: %s", message)
        self._send_error(writer, rid, code, message)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), 5)


class _InFlight:
    """The texts one connection has in flight (admitted, computing, or replies not yet written),
    at most ``cap``; a request larger than that goes alone."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.texts = 0
        self._changed = asyncio.Event()

    async def room(self, n: int) -> None:
        while self.texts and self.texts + n > self.cap:
            self._changed.clear()
            await self._changed.wait()
        self.texts += n

    def done(self, n: int) -> Callable[[Any], None]:
        def release(_task: Any) -> None:
            self.texts -= n
            self._changed.set()

        return release


def serve(config: ServiceConfig, companions: Sequence[Companion] = ()) -> None:
    """Run a service in this process until stopped (what ``hivemem serve`` calls), with
    ``companions`` (the HTTP application) on its loop."""
    config.socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = PidLock(config.socket)  # before loading the model: a second service fails in milliseconds
    try:
        loop = eventloop.choose()  # a bad HIVEMEM_EVENT_LOOP fails here too, before the model loads
        if config.replay is not None:
            from hivemem.service.spawn import write_options

            write_options(config.socket, config.replay)
        metrics = ServiceMetrics()
        engine = build_engine(
            metrics=metrics,
            variant=config.variant,
            # Default: one per core (faster on a quiet machine). Under heavy outside load ONNX
            # Runtime's spinning threads can starve the event loop that feeds them: there, pass
            # ``--threads 1`` (docs/service.md#benchmark-benchmarkssharedpy).
            threads=config.threads or default_threads(),
            replicas=config.replicas,
            max_pending=None,  # admission by permits bounds the texts in flight (Service.admission)
            cache=config.cache,
        )
        eventloop.run(Service(engine, config, metrics, companions).run(), loop)
        with contextlib.suppress(FileNotFoundError):  # stopped cleanly: nothing to bring back
            paths.options_path(config.socket).unlink()
    finally:
        lock.release()
