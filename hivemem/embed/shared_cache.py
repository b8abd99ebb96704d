"""The shared tier of the embedding cache: one Redis (or Valkey) for every host.

``HIVEMEM_CACHE_URL=redis://cache-host:6379/0`` puts it behind each process's in-process LRU and
each machine's SQLite file, so a vector computed on any host is computed nowhere else. Keys are the
same 16-byte digests as the other tiers (BLAKE2b-128 of model id + text) under the prefix
``hivemem:emb:``; values are raw little-endian float32 behind a 12-byte header (magic ``HVE1``,
``u32`` dim, the first 4 bytes of BLAKE2b(model id)), so a value written for another model or
width is never used. Reads are one pipelined round trip of ``MGET`` s of 1,000 keys; writes (newly
computed vectors, and SQLite hits the shared tier lacked) go through a background thread in
pipelined ``SET`` s, so they never add to a caller's latency.

Never required. When Redis is unreachable or errors, lookups count as misses and writes are
dropped; one warning is logged per minute at most, the ``errors``/``dropped`` counters grow, and
the tier is left alone for a backoff (1 s doubling to 30 s) before redis-py reconnects. Its size is
Redis' business: run it with ``maxmemory`` and ``maxmemory-policy allkeys-lru``; ``ttl`` (or
``HIVEMEM_CACHE_TTL`` seconds) expires entries besides.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hivemem.infra.settings import Settings

log = logging.getLogger("hivemem.cache")

ENV_URL = "HIVEMEM_CACHE_URL"
ENV_TTL = "HIVEMEM_CACHE_TTL"
PREFIX = b"hivemem:emb:"
_MAGIC = b"HVE1"
_HEADER = struct.Struct("<4sI4s")  # magic, dim, model tag
_CHUNK = 1000  # keys per MGET / SETs per pipeline execute
_WRITE_QUEUE = 256  # batches waiting for the writer before new ones are dropped
_BACKOFF_MIN_S = 1.0
_BACKOFF_MAX_S = 30.0
_WARN_EVERY_S = 60.0


def model_tag(model_id: str) -> bytes:
    return hashlib.blake2b(model_id.encode(), digest_size=4).digest()


def encode(model_id: str, vec: np.ndarray) -> bytes:
    vec = np.ascontiguousarray(vec, dtype="<f4")
    return _HEADER.pack(_MAGIC, vec.shape[0], model_tag(model_id)) + vec.tobytes()


def decode(blob: bytes, tag: bytes, dim: int) -> np.ndarray | None:
    """The vector in ``blob`` if it was written for this model and width, else None."""
    if len(blob) != _HEADER.size + 4 * dim:
        return None
    magic, width, got = _HEADER.unpack_from(blob)
    if magic != _MAGIC or width != dim or got != tag:
        return None
    vec = np.frombuffer(blob, dtype="<f4", offset=_HEADER.size).astype(np.float32, copy=False)
    return vec


class RedisTier:
    """Pipelined reads and background writes to one Redis/Valkey (see the module docstring).

    ``url``: ``redis://[:password@]host:6379/0`` (``rediss://`` for TLS, ``unix:///path``).
    ``ttl``: seconds an entry lives (None: until Redis evicts it). ``timeout``: seconds per
    network operation, so a stalled Redis costs a lookup this long at most before it is skipped.
    """

    def __init__(self, url: str, *, ttl: float | None = None, timeout: float = 1.0) -> None:
        try:
            import redis
        except ImportError:
            raise ImportError(
                f"the shared cache tier ({ENV_URL}) needs redis-py: pip install 'hivemem[cluster]'"
            ) from None
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
        self.url = url
        self.ttl = None if ttl is None else max(1, round(ttl))
        try:
            self._redis = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
            )
        except ValueError as exc:
            raise ValueError(f"shared cache URL {_redact(url)!r} ({ENV_URL}): {exc}") from None
        self._errors_cls: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._backoff = 0.0
        self._warned_at = -_WARN_EVERY_S
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.errors = 0
        self.dropped = 0  # vectors not written (Redis down, or the write queue full)
        self._writes: queue.Queue[Any] = queue.Queue(maxsize=_WRITE_QUEUE)
        self._writer = threading.Thread(target=self._write_loop, name="hivemem-redis-writer", daemon=True)
        self._writer.start()

    @property
    def available(self) -> bool:
        """False while backing off after an error."""
        return time.monotonic() >= self._down_until

    # ---- reads ---------------------------------------------------------------------------------

    def get_many(self, model_id: str, dim: int, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Vectors for ``keys`` (None where missing, or when Redis cannot be asked now)."""
        found: list[np.ndarray | None] = [None] * len(keys)
        if not keys:
            return found
        if not self.available:
            self.misses += len(keys)
            return found
        try:
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.mget([PREFIX + k for k in keys[start : start + _CHUNK]])
            blobs = [b for part in pipe.execute() for b in part]
        except self._errors_cls as exc:
            self._failed("read", exc)
            self.misses += len(keys)
            return found
        self._ok()
        tag = model_tag(model_id)
        hits = 0
        for i, blob in enumerate(blobs):
            if blob is not None:
                vec = decode(blob, tag, dim)
                if vec is not None:
                    found[i] = vec
                    hits += 1
        self.hits += hits
        self.misses += len(keys) - hits
        return found

    # ---- writes --------------------------------------------------------------------------------

    def put_many(self, model_id: str, items: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Queue ``(key, vector)`` pairs for the writer thread; never blocks, never raises."""
        if not items:
            return
        if not self.available:
            self.dropped += len(items)
            return
        try:
            self._writes.put_nowait((model_id, list(items)))
        except queue.Full:
            self.dropped += len(items)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every queued write was sent (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._writes.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _write_loop(self) -> None:
        while True:
            job = self._writes.get()
            try:
                if job is None:
                    return
                self._write(*job)
            finally:
                self._writes.task_done()

    def _write(self, model_id: str, items: list[tuple[bytes, np.ndarray]]) -> None:
        if not self.available:
            self.dropped += len(items)
            return
        try:
            for start in range(0, len(items), _CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for key, vec in items[start : start + _CHUNK]:
                    pipe.set(PREFIX + key, encode(model_id, vec), ex=self.ttl)
                pipe.execute()
                self.writes += min(_CHUNK, len(items) - start)
        except self._errors_cls as exc:
            self._failed("write", exc)
            self.dropped += len(items)
            return
        self._ok()

    # ---- health --------------------------------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            self._backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, self._backoff * 2))
            self._down_until = now + self._backoff
            warn = now - self._warned_at >= _WARN_EVERY_S
            if warn:
                self._warned_at = now
        if warn:
            log.warning(
                "hivemem: the shared embedding cache at %s failed a %s (%s: %s); embedding goes on "
                "without it, retrying in %.0f s (this warning repeats at most once a minute)",
                _redact(self.url),
                what,
                type(exc).__name__,
                exc,
                self._backoff,
            )

    def _ok(self) -> None:
        if self._backoff:
            with self._lock:
                self._backoff = 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "url": _redact(self.url),
            "available": self.available,
            "hits": self.hits,
            "misses": self.misses,
            "writes": self.writes,
            "errors": self.errors,
            "dropped": self.dropped,
        }

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (up to ``timeout``), then stop the writer and drop the connections."""
        if self._writer.is_alive():
            self.flush(timeout)
            with contextlib.suppress(queue.Full):
                self._writes.put(None, timeout=timeout)
            self._writer.join(timeout)
        self._redis.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages and stats."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def from_env() -> RedisTier | None:
    """The tier ``$HIVEMEM_CACHE_URL`` names (with ``$HIVEMEM_CACHE_TTL``), or None."""
    settings = Settings.from_env()
    if not settings.cache_url:
        return None
    return RedisTier(settings.cache_url, ttl=settings.cache_ttl)
