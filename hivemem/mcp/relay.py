"""``hivemem mcp``: the stdio MCP server an agent starts — a thin relay, standard library only.

The protocol is handled once per machine, by the service (``hivemem.mcp.host``). This process
sends a one-line hello carrying the agent's scope and store over the service's MCP socket
(``<socket>.mcp``), then copies newline-delimited JSON-RPC from stdin to the socket and back to
stdout. It imports no numpy, no MCP SDK and no model, which is what keeps it light
(``benchmarks/mcp.py``; an SDK stdio server costs ~48 MB PSS before it holds any model).

If nobody listens, the service is started as ``hivemem.connect()`` starts it (``spawn``). If the
connection drops (the service restarted, even after ``kill -9``) the relay reconnects, replays the
``initialize`` handshake (its answer is swallowed) and sends each unanswered request once more;
a request is sent at most twice, so a message that kills the service cannot take down a third.
Repeating a request is safe: an add of a text already stored in its scope answers ``NONE`` and
stores nothing, updates and deletes land on the same state. Requests that cannot be delivered get
a JSON-RPC error; the relay stays up and tries again with the next message.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from hivemem.errors import HivememError, ServiceUnavailable
from hivemem.infra.settings import Settings
from hivemem.service import paths
from hivemem.service.peer import check_peer, trusted_uids

MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one JSON-RPC message (line), both ways; as --max-body
PROTOCOL = 1  # the hello's version
MAX_SENDS = 2  # a request is sent at most twice (see the module docstring)
ENTITY_ENV = {"user_id": "HIVEMEM_USER_ID", "agent_id": "HIVEMEM_AGENT_ID", "run_id": "HIVEMEM_RUN_ID"}
LOST = -32000  # JSON-RPC server error code of a request the relay could not deliver


class Refused(HivememError):
    """The service refused the hello (a bad scope or store): fatal, the relay exits 1."""


def hello(scope: dict[str, str], store: str | None) -> bytes:
    return json.dumps({"hivemem_mcp": PROTOCOL, "scope": scope, "store": store}).encode() + b"\n"


def _store(arg: str | None) -> str | None:
    """``--store`` or ``$HIVEMEM_MEMORY_URL`` as ``Memory()`` here would read it: a relative path is
    made absolute (the service runs elsewhere); None: the service's default store."""
    value = arg or Settings.from_env().memory_url
    if value is None or "://" in value:
        return value
    return str(Path(value).expanduser().absolute())


def _error(rid: Any, message: str) -> bytes:
    body = {"jsonrpc": "2.0", "id": rid, "error": {"code": LOST, "message": f"hivemem mcp: {message}"}}
    return json.dumps(body).encode() + b"\n"


class Relay:
    """One agent's connection to the service's MCP host (see the module docstring)."""

    def __init__(
        self,
        sock: Path,
        greeting: bytes,
        *,
        timeout: float,
        stdout: BinaryIO,
        service_args: list[str] | None = None,
    ) -> None:
        self.sock = sock
        self.path = paths.mcp_path(sock)
        self.greeting = greeting
        self.timeout = timeout
        self.service_args = service_args or []
        self.trusted = trusted_uids()
        self.out = stdout
        self._out_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the connection and the bookkeeping below
        self._conn: socket.socket | None = None
        self._pending: dict[str, list[Any]] = {}  # json id -> [line, sends, id]
        self._init: bytes | None = None  # the agent's initialize request, replayed on reconnect
        self._init_key: str | None = None
        self._init_answered = False
        self._initialized: bytes | None = None  # its notifications/initialized
        self._wanted = threading.Event()  # a message waits for a connection
        self.reconnects = 0

    # ---- connecting ----------------------------------------------------------------------------

    def open(self) -> tuple[socket.socket, BinaryIO]:
        """A connection that passed the hello, starting the service if nobody listens; raises
        ``ServiceUnavailable`` after ``timeout`` s, ``Refused`` at once."""
        deadline = time.monotonic() + self.timeout
        pause = 0.02
        last: BaseException | None = None
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.settimeout(max(0.1, min(10.0, deadline - time.monotonic())))
                conn.connect(str(self.path))
                check_peer(conn, self.path, self.trusted)
                conn.sendall(self.greeting)
                reader = conn.makefile("rb")
                reply = reader.readline(65536)
                if reply:
                    answer = json.loads(reply)
                    if "error" in answer:
                        raise Refused(str(answer["error"]))
                    conn.settimeout(None)
                    return conn, reader
                last = ConnectionError("the service closed the connection during the hello")
            except (OSError, ValueError) as exc:
                last = exc
            except BaseException:
                conn.close()
                raise
            conn.close()
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(
                    f"no hivemem MCP host at {self.path} ({last}); is the service running without it?"
                )
            from hivemem.service import spawn  # only when the service is missing (subprocess: ~0.5 MB)

            if not spawn.can_connect(self.sock):
                deadline = spawn.ensure_running(self.sock, self.service_args, deadline)  # + a first export
            else:  # the service is up; its MCP host starts listening a moment later, or it is dying
                time.sleep(pause)
                pause = min(pause * 2, 0.5)

    def _resume(self, conn: socket.socket, reader: BinaryIO) -> None:
        """On a new connection (lock held): replay the handshake, then resend what is unanswered."""
        if self._init is not None and self._init_answered:
            message = json.loads(self._init)
            message["id"] = f"hivemem-relay-{os.urandom(16).hex()}"
            conn.sendall(json.dumps(message).encode() + b"\n")
            while True:  # nothing else was sent yet on this connection: the next reply is ours
                line = reader.readline(MAX_MESSAGE + 1)
                if not line:
                    raise ConnectionError("the service closed the connection during the handshake")
                if json.loads(line).get("id") == message["id"]:
                    break
            if self._initialized is not None:
                conn.sendall(self._initialized)
        for key, entry in list(self._pending.items()):
            if entry[1] >= MAX_SENDS:
                del self._pending[key]
                self._write(
                    _error(entry[2], "the service was lost twice while this request ran; not sent again")
                )
                continue
            entry[1] += 1
            conn.sendall(entry[0])

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            failed, self._pending = list(self._pending.values()), {}
        for entry in failed:
            self._write(_error(entry[2], f"cannot reach the hivemem service: {why}"))

    # ---- the two directions ------------------------------------------------------------------

    def _write(self, line: bytes) -> None:
        with self._out_lock:
            self.out.write(line)
            self.out.flush()

    def serve_replies(self, conn: socket.socket, reader: BinaryIO) -> None:
        """The socket → stdout direction (a daemon thread), reconnecting whenever the service is lost."""
        while True:
            try:
                while True:
                    line = reader.readline(MAX_MESSAGE + 1)
                    if not line or not line.endswith(b"\n"):
                        break
                    self._reply(line)
            except OSError:
                pass
            with self._lock:
                self._conn = None
            conn.close()
            while True:  # reconnect (at once if requests wait, else when the next one comes)
                with self._lock:
                    waiting = bool(self._pending)
                if not waiting:
                    self._wanted.wait()
                self._wanted.clear()
                try:
                    conn, reader = self.open()
                    with self._lock:
                        self._resume(conn, reader)
                        self._conn = conn
                    self.reconnects += 1
                    break
                except (HivememError, OSError, ValueError) as exc:
                    self._fail_pending(str(exc))

    def _reply(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict) and "method" not in message and "id" in message:
            key = json.dumps(message["id"])
            with self._lock:
                self._pending.pop(key, None)
                if key == self._init_key:
                    # Only a successful initialize made this a handshake-era session. One answered
                    # with an error (a client that fell back to it while its server/discover probe
                    # waited for a slow service start, the probe having set the modern era) must
                    # not be replayed: it would open the next connection in the wrong era.
                    self._init_answered = "result" in message
                    if not self._init_answered:
                        self._init = self._init_key = None
        self._write(line)

    def forward(self, line: bytes) -> None:
        """One stdin line → the service (kept for resending if it is a request)."""
        if len(line) > MAX_MESSAGE:
            self._write(
                _error(None, f"message of {len(line)} bytes exceeds the limit of {MAX_MESSAGE} bytes")
            )
            return
        if not line.endswith(b"\n"):
            line += b"\n"
        try:
            message = json.loads(line)
        except ValueError:
            message = None  # the service answers the parse error
        with self._lock:
            if isinstance(message, dict) and "method" in message:
                method = message["method"]
                if "id" in message:
                    key = json.dumps(message["id"])
                    self._pending[key] = [line, 0, message["id"]]
                    if method == "initialize":
                        self._init, self._init_key, self._init_answered = line, key, False
                elif method == "notifications/initialized":
                    self._initialized = line
                elif method == "notifications/cancelled":
                    params = message.get("params") or {}
                    if isinstance(params, dict):
                        self._pending.pop(json.dumps(params.get("requestId")), None)
            if self._conn is None:
                self._wanted.set()
                return
            try:
                if isinstance(message, dict) and "method" in message and "id" in message:
                    self._pending[json.dumps(message["id"])][1] += 1
                self._conn.sendall(line)
            except OSError:
                self._conn.shutdown(socket.SHUT_RDWR)  # the reply thread reconnects and resends

    def run(self, stdin: BinaryIO) -> None:
        conn, reader = self.open()
        with self._lock:
            self._conn = conn
        threading.Thread(target=self.serve_replies, args=(conn, reader), daemon=True).start()
        while True:
            line = stdin.readline(MAX_MESSAGE + 1)
            if not line:
                break
            if line.strip():
                self.forward(line)
        with self._lock:  # the agent is gone: so is this session
            if self._conn is not None:
                self._conn.close()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hivemem mcp",
        description="MCP server over stdio for one agent: the memory tools of the machine's shared "
        "hivemem service, in the scope given here (docs/mcp.md).",
    )
    settings = Settings.from_env()
    for name, env in ENTITY_ENV.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, dest=name, default=getattr(settings, name), help=f"Scope (default: ${env})."
        )
    parser.add_argument(
        "--store",
        default=None,
        help="The memory store: a SQLite file or a postgresql:// URL (default: $HIVEMEM_MEMORY_URL, "
        "else the service's default store).",
    )
    parser.add_argument("--socket", default=None, help="The service's socket (default: $HIVEMEM_SOCKET).")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="Seconds to reach (or start) the service (default 120)."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``hivemem mcp …``: relay until the agent closes stdin; 1 when the service cannot be reached
    or refuses the scope."""
    args = parse(argv)
    scope = {name: value for name in ENTITY_ENV if (value := getattr(args, name))}
    if not scope:
        print(
            "hivemem mcp: name a scope: --user-id, --agent-id or --run-id "
            "(or HIVEMEM_USER_ID / HIVEMEM_AGENT_ID / HIVEMEM_RUN_ID)",
            file=sys.stderr,
        )
        return 2
    relay = Relay(
        paths.socket_path(args.socket),
        hello(scope, _store(args.store)),
        timeout=args.timeout,
        stdout=sys.stdout.buffer,
    )
    try:
        relay.run(sys.stdin.buffer)
    except HivememError as exc:
        print(f"hivemem mcp: {exc}", file=sys.stderr)
        return 1
    return 0
