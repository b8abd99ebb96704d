"""A fake "service" speaking the wire protocol, for the trust tests: it answers every EMBED with
vectors of the caller's choosing (zeros, wrong norms, unit vectors), optionally as another user;
``busy`` answers every HELLO with an ERROR frame instead; ``drip`` sends each reply in pieces of
997 bytes, ``drip7`` in pieces of 7 bytes for its first 700 bytes (the 20-byte header split too),
``trailing`` sends bytes right after it, ``late`` sends bytes 50 ms after it.

Started in a forked child (``multiprocessing`` fork context) so that it can drop to another uid
before it listens: ``SO_PEERCRED`` reports the credentials in effect at ``listen()``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

from hivemem.service import wire

DIM = 384


def _vectors(n: int, mode: str) -> bytes:
    import numpy as np

    if mode == "zeros":
        out = np.zeros((n, DIM), dtype="<f4")
    elif mode == "double":
        out = np.full((n, DIM), 2 / DIM**0.5, dtype="<f4")
    elif mode == "nan":
        out = np.full((n, DIM), np.nan, dtype="<f4")
    else:  # "unit"
        out = np.full((n, DIM), 1 / DIM**0.5, dtype="<f4")
    return wire.encode_vectors(out)


def _read(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def serve(path: str, mode: str, uid: int | None = None) -> None:
    """Listen on ``path`` (as ``uid`` if given) and answer hello and embed requests forever."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    Path(path).unlink(missing_ok=True)
    old = os.umask(0)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    os.umask(old)
    listener.listen(8)
    # published only once it listens: tests wait for the path to exist, and a connect between
    # bind and listen is refused (seen once under load: 'connection refused')
    os.rename(path + ".new", path)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn, mode), daemon=True).start()


def _answer(conn: socket.socket, mode: str) -> None:
    """Answer one connection's requests until it closes (each connection in its own thread)."""
    try:
        while True:
            ftype, rid, length = wire.parse_header(_read(conn, wire.HEADER_SIZE), 1 << 30)
            payload = _read(conn, length)
            if ftype == wire.HELLO and mode == "busy":  # refuses every client with an ERROR frame
                conn.sendall(wire.frame(wire.ERROR, rid, wire.encode_error(wire.E_BUSY, "warming up")))
            elif ftype == wire.HELLO:
                info = {"pid": os.getpid(), "model_id": "all-MiniLM-L6-v2/onnx-int8", "dim": DIM}
                conn.sendall(wire.frame(wire.WELCOME, rid, wire.encode_json(info)))
            elif ftype == wire.EMBED:
                (count,) = struct.unpack_from("<I", payload)
                reply = wire.frame(wire.VECTORS, rid, _vectors(count, mode))
                if mode == "trailing":  # bytes after the reply: no request asked for them
                    reply += b"junk"
                if mode in ("drip", "drip7"):  # the reply in pieces, header included
                    small = 700 if mode == "drip7" else 0
                    pieces = [reply[i : i + 7] for i in range(0, min(small, len(reply)), 7)]
                    pieces += [reply[i : i + 997] for i in range(small, len(reply), 997)]
                    for piece in pieces:
                        conn.sendall(piece)
                        time.sleep(0.001)
                else:
                    conn.sendall(reply)
                if mode == "late":  # bytes in a later segment, once the client has its reply
                    time.sleep(0.05)
                    conn.sendall(b"late junk")
    except (EOFError, OSError):
        conn.close()


def drop(path: str, seconds: float) -> None:
    """A dying listener: for ``seconds`` accept every connection and close it at once (what a
    service killed with SIGKILL can look like for a moment), then remove the socket and exit."""
    Path(path).unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(0.05)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.close()
    Path(path).unlink(missing_ok=True)
    listener.close()
