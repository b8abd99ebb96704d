"""Reply slots: a connection's vectors through shared memory instead of a frame on the socket.

A client that asks for it in its HELLO (header flag ``wire.F_SLOT``) gets, with the WELCOME, two
file descriptors over the Unix socket (``SCM_RIGHTS``): a sealed ``memfd`` of ``SLOT_BYTES`` (the
slot: no file anywhere, only the two processes can map it, and the seals stop the client from
shrinking it under the service) and an ``eventfd``. An EMBED frame flagged ``F_SLOT`` is then
answered by writing the VECTORS payload into the slot and adding 1 to the eventfd; the client waits
with one ``poll`` on the eventfd and the socket together, so a service that dies mid-call is seen
at once (the socket's end of stream) and every wait stays bounded by the call's deadline. Errors,
and replies larger than the slot, still come as frames. One request is in flight per connection,
so one slot per connection is enough. Old clients (no flag) and old services (no descriptors)
keep using frames.

Slot layout: ``u64 request id | u32 payload length | padding to 64 bytes | payload``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct

SLOT_BYTES = 64 << 10  # a reply of up to 42 vectors of 384 floats; larger replies come as frames
DATA = 64
_HEAD = struct.Struct("<QI")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class ServiceSlot:
    """The service's end of one connection's slot (made at HELLO, closed with the connection)."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("hivemem-reply", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, SLOT_BYTES)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
            self.mm = mmap.mmap(self.fd, SLOT_BYTES)
            self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except BaseException:
            os.close(self.fd)
            raise

    def fds(self) -> list[int]:
        return [self.fd, self.efd]

    def put(self, request_id: int, payload: bytes) -> bool:
        """Write a reply into the slot and wake the client; False (nothing written) if it does
        not fit: the caller sends a frame instead."""
        if DATA + len(payload) > SLOT_BYTES:
            return False
        self.mm[DATA : DATA + len(payload)] = payload
        _HEAD.pack_into(self.mm, 0, request_id, len(payload))
        os.eventfd_write(self.efd, 1)
        return True

    def close(self) -> None:
        self.mm.close()
        os.close(self.efd)
        os.close(self.fd)


class ClientSlot:
    """The client's end: a read-only mapping of the service's memfd and the eventfd to wait on."""

    def __init__(self, fds: list[int]) -> None:
        if len(fds) != 2:
            raise ValueError(f"a reply slot needs 2 descriptors, got {len(fds)}")
        mem, self.efd = fds
        try:
            if os.fstat(mem).st_size != SLOT_BYTES:
                raise ValueError("the reply slot has the wrong size")
            if fcntl.fcntl(mem, fcntl.F_GET_SEALS) & _SEALS != _SEALS:
                raise ValueError("the reply slot is not sealed: it could shrink under this process")
            self.mm = mmap.mmap(mem, SLOT_BYTES, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self.efd)
            raise
        finally:
            os.close(mem)  # the mapping keeps the memory

    def take(self, request_id: int) -> bytearray | None:
        """The reply to ``request_id`` once the eventfd said it is there (a copy: the slot is
        reused by the next call); None if the slot holds another request's reply."""
        os.eventfd_read(self.efd)
        rid, length = _HEAD.unpack_from(self.mm)
        if rid != request_id or length > SLOT_BYTES - DATA:
            return None
        return bytearray(self.mm[DATA : DATA + length])

    def close(self) -> None:
        self.mm.close()
        os.close(self.efd)
