"""What the service counts: requests, batch sizes, tokens, latencies.

Kept dependency-free (the service must run without the ``server`` extra); ``http`` turns these
into Prometheus metrics on ``GET /metrics`` and ``hivemem status`` prints them as JSON.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from hivemem.embed.protocol import Backend

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` upper bounds, plus +Inf)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), …, ("+Inf", total)]``."""
        out, running = [], 0
        for bound, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def snapshot(self) -> dict[str, Any]:
        mean = self.sum / self.count if self.count else 0.0
        return {"count": self.count, "sum": round(self.sum, 6), "mean": round(mean, 6)}


class ServiceMetrics:
    """Counters shared by the socket server, the HTTP app and the metered backends."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()  # by transport: socket / http
        self.errors: Counter[str] = Counter()  # by error kind
        self.texts = 0
        self.tokens = 0
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.request_seconds = Histogram(LATENCY_BUCKETS)
        self._lock = threading.Lock()

    def request(self, transport: str, n_texts: int, seconds: float) -> None:
        with self._lock:
            self.requests[transport] += 1
            self.texts += n_texts
        self.request_seconds.observe(seconds)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def batch(self, size: int, tokens: int, seconds: float) -> None:
        with self._lock:
            self.tokens += tokens
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "texts": self.texts,
            "tokens": self.tokens,
            "batch_size": self.batch_size.snapshot(),
            "batch_seconds": self.batch_seconds.snapshot(),
            "request_seconds": self.request_seconds.snapshot(),
        }


class MeteredBackend:
    """Wraps a backend to record every batch the queue hands it (size, tokens, compute time).

    Tokens are the counts the backend reports for the batch it just ran (``last_tokens``), taken
    while it tokenized: nothing is tokenized twice. Backends that do not report count 0 tokens.
    """

    def __init__(self, backend: Backend, metrics: ServiceMetrics) -> None:
        self.inner = backend
        self.metrics = metrics
        self.model_id = backend.model_id
        self.dim = backend.dim
        self.tokenizer = getattr(backend, "tokenizer", None)  # for Embedder.count_tokens
        self.last_tokens: np.ndarray | None = None

    @property
    def truncated(self) -> int:
        return self.inner.truncated

    def encode(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        vectors = self.inner.encode(texts)
        self.last_tokens = getattr(self.inner, "last_tokens", None)
        tokens = int(self.last_tokens.sum()) if self.last_tokens is not None else 0
        self.metrics.batch(len(texts), tokens, time.perf_counter() - start)
        return vectors

    def close(self) -> None:
        self.inner.close()
