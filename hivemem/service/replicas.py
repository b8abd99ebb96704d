"""The service's engine: one ``hivemem.Embedder``, or N replicas for machines with more cores.

Every connection's requests go into the same engine, so single texts from many processes meet in
one micro-batch. With ``replicas > 1`` each replica is a full ``Embedder`` (own model, own queue and
worker thread, ``threads`` intra-op threads) sharing one cache; a request goes to the replica with
the fewest texts waiting. That is the simplest dispatcher that keeps every replica busy; see
``docs/service.md`` for when it pays (not on a 2-core machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from hivemem.embed.cache import EmbeddingCache
from hivemem.embed.engine import Embedder, make_backend
from hivemem.service.metrics import MeteredBackend, ServiceMetrics


class ReplicaSet:
    """Several embedders behind the ``EmbedderLike`` interface (least-loaded dispatch)."""

    def __init__(self, embedders: list[Embedder]) -> None:
        if not embedders:
            raise ValueError("a ReplicaSet needs at least one embedder")
        self.replicas = embedders
        self._rr = itertools.count()

    @property
    def model_id(self) -> str:
        return self.replicas[0].model_id

    @property
    def dim(self) -> int:
        return self.replicas[0].dim

    @property
    def backend(self) -> Any:
        return self.replicas[0].backend

    def _pick(self) -> Embedder:
        if len(self.replicas) == 1:
            return self.replicas[0]
        start = next(self._rr) % len(self.replicas)
        order = self.replicas[start:] + self.replicas[:start]  # rotate so ties spread out
        return min(order, key=lambda e: e._queue.depth if e._queue is not None else 0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._pick().embed(texts)

    def embed_one(self, text: str) -> np.ndarray:
        return self._pick().embed_one(text)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return await self._pick().aembed(texts)

    async def aembed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        return await self._pick().aembed_counted(texts)

    def stats(self) -> dict[str, Any]:
        parts = [e.stats() for e in self.replicas]
        out = dict(parts[0])
        if "queue" in out:
            out["queue"] = {k: sum(p["queue"][k] for p in parts) for k in parts[0]["queue"]}
        out["replicas"] = len(self.replicas)
        return out

    def close(self) -> None:
        for embedder in self.replicas:
            embedder.close()


def build_engine(
    *,
    metrics: ServiceMetrics,
    variant: str = "default",
    threads: int | None = None,
    replicas: int = 1,
    max_pending: int | None = None,
    max_wait_ms: float = 2.0,
    cache: bool = True,
) -> ReplicaSet:
    """The default ONNX backend ``replicas`` times, metered, with one shared cache.

    ``max_pending`` bounds each replica's queue (``QueueFull`` beyond); the service leaves it
    unbounded and admits texts by permits instead (``hivemem.service.admission``).
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    shared = EmbeddingCache() if cache else False
    embedders = []
    for _ in range(replicas):
        backend = MeteredBackend(make_backend("onnx", variant=variant, threads=threads), metrics)
        embedders.append(Embedder(backend, cache=shared, max_pending=max_pending, max_wait_ms=max_wait_ms))
    release_free_memory()
    return ReplicaSet(embedders)


def release_free_memory() -> None:
    """Give freed memory back to the OS (glibc only): after loading (the parsed ONNX protobuf),
    and each time the service goes idle (``server.TRIM_AFTER_S``).

    Less resident memory for the fp32 model (docs/service.md#measurements-behind-the-design); a
    no-op where the C library is not glibc.
    """
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (``find_library`` runs ``ldconfig`` in a subprocess)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None
