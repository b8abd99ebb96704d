"""Whose service a client talks to: the peer's uid on a Unix socket (``SO_PEERCRED``) must be ours
or one the user trusts on purpose. Standard library only: the embedding clients (``core``) and the
MCP relay (``hivemem mcp``, one per agent, kept light) share it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from hivemem.errors import UntrustedService
from hivemem.infra.settings import Settings

_PEERCRED = struct.Struct("3i")  # Linux struct ucred: pid, uid, gid


def trusted_uids(extra: Iterable[int] | None = None) -> frozenset[int]:
    """Our own uid, plus ``extra`` and ``HIVEMEM_TRUST_UIDS`` (comma-separated): whose service we use."""
    uids = {os.getuid()}
    uids.update(Settings.from_env().trust_uids)
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
