"""How one JSON value (one top-level field of a task) is stored: JSON bytes, optionally compressed.

Why per value, with a codec number beside it: small values (ids, types, short strings) stay plain
(compressing them costs more than it saves); only values of at least ``COMPRESS_MIN`` bytes are
compressed. Writing uses orjson where installed (the converter's speed); reading always uses the
stdlib ``json``: importing orjson costs a worker ~2 MB, and orjson would read integers beyond 64
bits back as floats.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable
from typing import Any, Literal

Compression = Literal["none", "zlib", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("none", "zlib", "zstd")

PLAIN, ZLIB, ZSTD = 0, 1, 2
COMPRESS_MIN = 512


@functools.cache
def _orjson_dumps() -> Callable[[Any], bytes] | None:
    try:  # optional speed-up for the writer; the JSON is equivalent either way
        import orjson
    except ImportError:  # pragma: no cover - exercised only where orjson is absent
        return None
    return orjson.dumps


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON for one value."""
    fast = _orjson_dumps()
    if fast is not None:
        try:
            return fast(value)
        except TypeError:  # integers beyond 64 bits, nesting deeper than 255
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


@functools.cache
def _zstd_compressor(level: int) -> Any:
    import zstandard  # imported only by writers and readers of zstd libraries

    return zstandard.ZstdCompressor(level=level)


def encode(value: Any, compression: str = "none", level: int | None = None) -> tuple[int, bytes]:
    """``value`` → ``(codec, blob)``; ``compression`` is ``none``, ``zlib`` or ``zstd``."""
    data = dumps(value)
    if compression == "none" or len(data) < COMPRESS_MIN:
        return PLAIN, data
    if compression == "zlib":
        return ZLIB, zlib.compress(data, 6 if level is None else level)
    if compression == "zstd":
        return ZSTD, _zstd_compressor(3 if level is None else level).compress(data)
    raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


def decode(codec: int, blob: bytes) -> Any:
    """``(codec, blob)`` → a fresh value. Raises ``ValueError`` on damaged data or unknown codecs."""
    if codec == ZLIB:
        blob = zlib.decompress(blob)
    elif codec == ZSTD:
        import zstandard

        blob = zstandard.ZstdDecompressor().decompress(blob)
    elif codec != PLAIN:
        raise ValueError(f"unknown value codec {codec}")
    return json.loads(blob)


def check_compression(compression: str) -> None:
    """Fail early, before any work, on an unknown or unavailable compression."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    if compression == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "compression 'zstd' needs the 'zstandard' package (pip install zstandard)"
            ) from exc
