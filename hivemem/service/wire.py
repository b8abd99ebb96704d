"""The service's wire format: length-prefixed binary frames over a Unix socket.

Every frame is a 20-byte little-endian header followed by ``length`` payload bytes::

    magic  4s  b"HVMM"
    version B  1
    type   B  see the constants below
    flags  H  reserved, 0
    id     Q  request id, echoed in the reply (0 for connection-level errors)
    length I  payload bytes

Payloads: texts are ``u32 count``, ``count × u32 byte lengths``, then the UTF-8 bytes back to back;
vectors are ``u32 rows, u32 dim`` then ``rows × dim`` raw float32 (no JSON for vectors: JSON text
is several times larger, and parsing it costs more than computing the vector:
docs/service.md#measurements-behind-the-design).
Metadata replies (hello, stats) are small JSON objects. Errors are ``u16 code`` + a UTF-8 message.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from hivemem.errors import FrameTooLarge, ProtocolError

MAGIC = b"HVMM"
VERSION = 1
HEADER = struct.Struct("<4sBBHQI")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME = 32 << 20  # 32 MiB: ~20k long texts; the client splits larger calls
MAX_REPLY = 1 << 30

# requests
HELLO = 1
EMBED = 2
STATS = 3
SHUTDOWN = 4
# replies
WELCOME = 17
VECTORS = 18
STATS_REPLY = 19
OK = 20
ERROR = 31

REQUEST_TYPES = frozenset({HELLO, EMBED, STATS, SHUTDOWN})

# error codes
E_MALFORMED = 1
E_TOO_LARGE = 2
E_BAD_REQUEST = 3
E_BUSY = 4
E_INTERNAL = 5
E_SHUTTING_DOWN = 6

_U32 = struct.Struct("<I")
_DIMS = struct.Struct("<II")
_ONE = struct.Struct("<II")  # count 1, then its byte length
_ERR = struct.Struct("<H")


def header(ftype: int, request_id: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, ftype, 0, request_id, length)


def frame(ftype: int, request_id: int, payload: bytes = b"") -> bytes:
    return header(ftype, request_id, len(payload)) + payload


def parse_header(data: bytes, max_length: int) -> tuple[int, int, int]:
    """``(type, request id, payload length)``, or ProtocolError saying which field is wrong."""
    magic, version, ftype, _flags, request_id, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a hivemem frame (expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    if length > max_length:
        raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {max_length} bytes")
    return ftype, request_id, length


def encode_texts(texts: list[str]) -> bytes:
    blobs = [t.encode("utf-8") for t in texts]
    return b"".join([_U32.pack(len(blobs)), struct.pack(f"<{len(blobs)}I", *map(len, blobs)), *blobs])


def encode_one(text: str) -> bytes:
    """``encode_texts([text])``, without the list's machinery (a worker's single-text call)."""
    blob = text.encode("utf-8")
    return _ONE.pack(1, len(blob)) + blob


def decode_texts(payload: bytes | memoryview) -> list[str]:
    """Texts of an EMBED payload; ProtocolError if counts and lengths do not add up or UTF-8 is bad."""
    view = memoryview(payload)
    if len(view) < 4:
        raise ProtocolError("EMBED payload shorter than its 4-byte count")
    (count,) = _U32.unpack_from(view)
    table_end = 4 + 4 * count
    if table_end > len(view):
        raise ProtocolError(f"EMBED payload announces {count} texts but is only {len(view)} bytes")
    lengths = struct.unpack_from(f"<{count}I", view, 4)
    if table_end + sum(lengths) != len(view):
        raise ProtocolError(
            f"EMBED payload text lengths sum to {sum(lengths)} bytes but {len(view) - table_end} follow"
        )
    texts = []
    pos = table_end
    for i, n in enumerate(lengths):
        try:
            texts.append(str(view[pos : pos + n], "utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"text {i} is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
        pos += n
    return texts


def encode_vectors(vectors: np.ndarray) -> bytes:
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    rows, dim = vectors.shape
    return _DIMS.pack(rows, dim) + vectors.tobytes()


def decode_vectors(payload: bytearray | memoryview) -> np.ndarray:
    """A writable ``rows × dim`` float32 view over the received buffer (no copy)."""
    if len(payload) < _DIMS.size:
        raise ProtocolError("VECTORS payload shorter than its 8-byte shape")
    rows, dim = _DIMS.unpack_from(payload)
    if len(payload) != _DIMS.size + rows * dim * 4:
        raise ProtocolError(f"VECTORS payload of {len(payload)} bytes does not hold {rows}×{dim} float32")
    return np.frombuffer(payload, dtype="<f4", offset=_DIMS.size).reshape(rows, dim)


# The model's vectors are L2-normalised; a reply that is not (all zeros, NaN, a fake service) is refused.
UNIT_TOLERANCE = 1e-3
# |‖v‖ − 1| ≤ UNIT_TOLERANCE, as bounds on ‖v‖² (no square root per row)
_LOW, _HIGH = (1 - UNIT_TOLERANCE) ** 2, (1 + UNIT_TOLERANCE) ** 2


def join_vectors(parts: list[np.ndarray], n: int, dim: int) -> np.ndarray:
    """The replies to one call's chunks as one ``n × dim`` array of unit vectors, or ProtocolError.

    The check runs in every worker on every call: one row (``embed_one``) is one dot product,
    ~1 µs, where ``np.linalg.norm`` and its comparisons took ~6–7 µs of a call's ~36 µs of CPU
    (docs/service.md, "Round 3"); many rows are one ``einsum``."""
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if out.shape != (n, dim):
        raise ProtocolError(f"service returned {out.shape} vectors for {n} texts")
    if n == 1:
        square = float(out[0] @ out[0])
        if not _LOW <= square <= _HIGH:  # NaN compares false: it is refused too
            raise _not_unit(square, 0, 1, 1)
        return out
    squares = np.einsum("ij,ij->i", out, out)
    bad = ~((squares >= _LOW) & (squares <= _HIGH))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _not_unit(float(squares[i]), i, int(bad.sum()), n)
    return out


def _not_unit(square: float, i: int, bad: int, n: int) -> ProtocolError:
    norm = square**0.5  # (NaN stays NaN, inf stays inf)
    return ProtocolError(
        f"service returned a vector of norm {norm:.4g} for text {i} ({bad} of {n} not unit length); "
        "refusing the reply: the model's vectors are normalised"
    )


def encode_error(code: int, message: str) -> bytes:
    return _ERR.pack(code) + message.encode("utf-8", "replace")


def decode_error(payload: bytes | bytearray | memoryview) -> tuple[int, str]:
    if len(payload) < _ERR.size:
        return E_MALFORMED, "error frame without a code"
    (code,) = _ERR.unpack_from(payload)
    return code, bytes(payload[_ERR.size :]).decode("utf-8", "replace")


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode_json(payload: bytes | bytearray | memoryview) -> Any:
    try:
        return json.loads(bytes(payload))
    except ValueError as exc:
        raise ProtocolError(f"metadata reply is not JSON: {exc}") from None
