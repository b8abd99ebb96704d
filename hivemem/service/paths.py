"""Where the service's socket, lock, pid and log files live.

All are derived from the socket path so that a service started with ``HIVEMEM_SOCKET`` (tests, a
second service for another model) has its own lock and log and never collides with the default one.
"""

from __future__ import annotations

from pathlib import Path

from hivemem.infra import config
from hivemem.infra.settings import Settings

SOCKET_NAME = "embed.sock"


def socket_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$HIVEMEM_SOCKET``, else ``embed.sock`` in the per-user runtime dir (0700)."""
    if path is not None:
        return Path(path)
    env = Settings.from_env().socket
    if env:
        return Path(env).expanduser()
    return config.runtime_dir() / SOCKET_NAME


def start_lock_path(sock: Path) -> Path:
    """Held by the one client that starts the service while it waits for the socket."""
    return sock.with_name(sock.name + ".start.lock")


def pid_path(sock: Path) -> Path:
    """Locked by the running service for its whole life: proof that the socket is not stale."""
    return sock.with_name(sock.name + ".pid")


def log_path(sock: Path) -> Path:
    """Output of an auto-started service (read it when a start fails)."""
    return sock.with_name(sock.name + ".log")


def options_path(sock: Path) -> Path:
    """How the running service was started (its options, for a replacement after ``kill -9``)."""
    return sock.with_name(sock.name + ".options.json")


def mcp_path(sock: Path) -> Path:
    """Where the service's MCP host (``hivemem.mcp.host``) listens for ``hivemem mcp`` relays."""
    return sock.with_name(sock.name + ".mcp")
