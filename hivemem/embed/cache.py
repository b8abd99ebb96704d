"""The content-addressed embedding cache: never compute the same vector twice on this machine.

Key = BLAKE2b-128 of (model id, exact text), so a different model (or variant) can never read
another's vectors. Two tiers: a small in-process LRU for hot texts, in front of one SQLite file in
WAL mode shared by every process of the user (readers never block writers; one writer at a time,
batched). Vectors are raw float32 bytes. The file is bounded: past ``max_bytes`` the oldest
entries are evicted first.

A third, optional tier is shared by every host: Redis or Valkey at ``$HIVEMEM_CACHE_URL``
(``hivemem.embed.shared_cache``), asked for what the first two lack. Its hits are copied into the
local tiers; vectors computed here, and SQLite hits, are written back to it in the background.
When it is unreachable the cache works as before, with a warning and a counter.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.embed.shared_cache import RedisTier, from_env
from hivemem.infra import config
from hivemem.infra.sqlitedb import Connections, enable_wal, in_chunks, retry_locked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    model TEXT NOT NULL,
    vec BLOB NOT NULL
);
"""
log = logging.getLogger("hivemem.cache")
_ROW_OVERHEAD = 80  # bytes of key, index entry and page slack per row, measured roughly
_EVICT_EVERY = 1024  # inserts between size checks


@dataclass
class Lookup:
    """A lookup in progress: a vector or None per text, and the keys still missing (key → the
    positions of the texts with that key)."""

    found: list[np.ndarray | None]
    missing: dict[bytes, list[int]]


def cache_key(model_id: str, text: str) -> bytes:
    return hashlib.blake2b(model_id.encode() + b"\x00" + text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """In-process LRU (``memory_items``) over a shared SQLite store at ``path``.

    ``path=None`` uses the machine-wide default (``hivemem.infra.config.cache_path()``); ``persistent=False``
    keeps only the in-process tier. ``shared``: the Redis/Valkey tier shared by hosts, as a URL
    (``redis://host:6379/0``) or a ``RedisTier``; ``None`` reads ``$HIVEMEM_CACHE_URL``, ``False``
    turns it off. Safe to use from many threads and processes.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        memory_items: int = 10_000,
        max_bytes: int = 1 << 30,
        persistent: bool = True,
        shared: str | RedisTier | bool | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else config.cache_path()
        self.persistent = persistent
        self.memory_items = memory_items
        self.max_bytes = max_bytes
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._conns = Connections(self._connect)  # one per thread and process
        self._inserts = 0
        self.hits_memory = 0
        self.hits_disk = 0
        self.hits_shared = 0
        self.misses = 0
        if persistent:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            retry_locked(lambda: self._db().executescript(_SCHEMA), timeout=30.0)
        self._owns_shared = not isinstance(shared, RedisTier)
        if isinstance(shared, RedisTier):
            self.shared: RedisTier | None = shared
        elif isinstance(shared, str):
            self.shared = RedisTier(shared)
        elif shared is None or shared is True:
            self.shared = from_env()
            if shared is True and self.shared is None:
                raise ValueError("shared=True needs $HIVEMEM_CACHE_URL (or pass the redis:// URL)")
        else:
            self.shared = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=30000")
        retry_locked(lambda: enable_wal(db), timeout=30.0)
        db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last entries, never corrupt
        return db

    def _db(self) -> sqlite3.Connection:
        return self._conns.get()

    def get_many(self, model_id: str, dim: int, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Cached vectors for ``texts`` (``None`` where missing), refreshing the LRU."""
        lookup = self.lookup_memory(model_id, texts)
        self.lookup_rest(model_id, dim, lookup)
        return lookup.found

    @property
    def needs_io(self) -> bool:
        """Whether a lookup can go beyond this process (the SQLite file, the shared tier)."""
        return self.persistent or self.shared is not None

    def lookup_memory(self, model_id: str, texts: Sequence[str]) -> Lookup:
        """The first step of ``get_many``: the in-process tier only — no I/O, microseconds, so an
        event loop may run it; ``lookup_rest`` (I/O) finishes the lookup."""
        keys = [cache_key(model_id, t) for t in texts]
        found: list[np.ndarray | None] = [None] * len(keys)
        missing: dict[bytes, list[int]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                vec = self._lru.get(key)
                if vec is not None:
                    self._lru.move_to_end(key)
                    found[i] = vec
                else:
                    missing.setdefault(key, []).append(i)
            self.hits_memory += len(keys) - sum(len(v) for v in missing.values())
        return Lookup(found, missing)

    def lookup_rest(self, model_id: str, dim: int, lookup: Lookup) -> None:
        """The second step of ``get_many``: the SQLite file, then the shared tier, for what the
        first step did not find (fills ``lookup.found`` in place). Does I/O: keep it off an
        event loop (``Embedder.aembed`` runs it in a thread)."""
        found, missing = lookup.found, lookup.missing
        if missing and self.persistent:
            rows = self._select(list(missing))
            width = dim * 4
            fresh: list[tuple[bytes, np.ndarray]] = []
            for key, blob in rows:
                if len(blob) != width:
                    continue  # written by a model of another width: not ours
                vec = np.frombuffer(blob, dtype=np.float32)
                fresh.append((key, vec))
                for i in missing.pop(key):
                    found[i] = vec
            with self._lock:
                self.hits_disk += sum(1 for _ in fresh)
                self._remember(fresh)
            if self.shared is not None:
                self.shared.put_many(model_id, fresh)  # promote: other hosts may lack them
        if missing and self.shared is not None:
            wanted = list(missing)
            got = self.shared.get_many(model_id, dim, wanted)
            remote = [(k, v) for k, v in zip(wanted, got, strict=True) if v is not None]
            for key, vec in remote:
                for i in missing.pop(key):
                    found[i] = vec
            if remote:
                with self._lock:
                    self.hits_shared += len(remote)
                    self._remember(remote)
                if self.persistent:  # next time this host finds them without the network
                    try:
                        self._insert(model_id, remote, dim)
                    except sqlite3.Error as exc:  # the caller has its vectors; the copy can wait
                        log.warning("hivemem: copying shared-cache hits into %s failed: %s", self.path, exc)
        with self._lock:
            self.misses += sum(len(v) for v in missing.values())

    def _select(self, keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        rows: list[tuple[bytes, bytes]] = []
        db = self._db()
        for marks, chunk in in_chunks(keys):
            rows.extend(db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({marks})", chunk))
        return rows

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors (rows of ``vectors``) for ``texts``; existing entries are kept."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        items = [(cache_key(model_id, t), vectors[i].copy()) for i, t in enumerate(texts)]
        for _, vec in items:
            vec.flags.writeable = False
        with self._lock:
            self._remember(items)
        if self.shared is not None:
            self.shared.put_many(model_id, items)
        if self.persistent and items:
            self._insert(model_id, items, vectors.shape[1])

    def _insert(self, model_id: str, items: list[tuple[bytes, np.ndarray]], dim: int) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO vectors (key, model, vec) VALUES (?, ?, ?)",
                [(key, model_id, vec.tobytes()) for key, vec in items],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._inserts += len(items)
        if self._inserts >= _EVICT_EVERY:
            self._inserts = 0
            self._evict(row_bytes=dim * 4 + _ROW_OVERHEAD)

    def _remember(self, items: list[tuple[bytes, np.ndarray]]) -> None:
        for key, vec in items:
            self._lru[key] = vec
            self._lru.move_to_end(key)
        while len(self._lru) > self.memory_items:
            self._lru.popitem(last=False)

    def _evict(self, row_bytes: int) -> None:
        """Delete the oldest rows beyond the size bound (ids grow with insertion order)."""
        limit = max(1, self.max_bytes // row_bytes)
        db = self._db()
        low, high = db.execute("SELECT min(id), max(id) FROM vectors").fetchone()
        if low is not None and high - low + 1 > limit:
            db.execute("DELETE FROM vectors WHERE id <= ?", (high - limit,))

    def stats(self) -> dict[str, Any]:
        """Entries and bytes on disk (per model) plus this process's hit/miss counters."""
        out: dict[str, Any] = {
            "path": str(self.path) if self.persistent else None,
            "memory_entries": len(self._lru),
            "hits_memory": self.hits_memory,
            "hits_disk": self.hits_disk,
            "hits_shared": self.hits_shared,
            "misses": self.misses,
        }
        if self.shared is not None:
            out["shared"] = self.shared.stats()
        if self.persistent:
            rows = (
                self._db()
                .execute("SELECT model, count(*), sum(length(vec)) FROM vectors GROUP BY model")
                .fetchall()
            )
            out["models"] = {m: {"entries": n, "vector_bytes": b} for m, n, b in rows}
            out["entries"] = sum(n for _, n, _ in rows)
            out["file_bytes"] = sum(
                p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file()
            )
        return out

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until the writes queued for the shared tier were sent (True when none is left)."""
        return True if self.shared is None else self.shared.flush(timeout)

    def clear(self, model_id: str | None = None) -> int:
        """Drop every entry (or one model's) of this machine's tiers; returns how many rows were
        deleted on disk. The shared tier is left alone: other hosts use it (``redis-cli FLUSHDB``)."""
        with self._lock:
            self._lru.clear()
        if not self.persistent:
            return 0
        db = self._db()
        if model_id is None:
            deleted = db.execute("DELETE FROM vectors").rowcount
        else:
            deleted = db.execute("DELETE FROM vectors WHERE model = ?", (model_id,)).rowcount
        db.execute("VACUUM")
        return deleted

    def close(self) -> None:
        if self.shared is not None and self._owns_shared:
            self.shared.close()
            self.shared = None
        self._conns.close()  # every thread's connection, not only the caller's
