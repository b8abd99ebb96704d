"""``GET /metrics``: the service's counters in the Prometheus text format (``prometheus_client``).

A custom collector reads ``ServiceMetrics`` and the engine's stats at scrape time, so nothing is
counted twice and the service runs without ``prometheus_client`` when HTTP is off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from hivemem.service.metrics import Histogram, ServiceMetrics


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=h.cumulative(), sum_value=h.sum)


class _ServiceCollector(Collector):
    def __init__(
        self, metrics: ServiceMetrics, embedder: Any, status: Callable[[], dict[str, Any]] | None
    ) -> None:
        self.metrics = metrics
        self.embedder = embedder
        self.status = status

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        stats = self.embedder.stats() if hasattr(self.embedder, "stats") else {}
        queue = stats.get("queue") or {}
        cache = stats.get("cache") or {}
        yield GaugeMetricFamily(
            "hivemem_queue_depth", "Texts waiting for a batch", value=queue.get("depth", 0)
        )
        requests = CounterMetricFamily("hivemem_requests", "Embedding requests", labels=["transport"])
        for transport, n in sorted(m.requests.items()):
            requests.add_metric([transport], n)
        yield requests
        errors = CounterMetricFamily("hivemem_errors", "Refused or failed requests", labels=["kind"])
        for kind, n in sorted(m.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        yield CounterMetricFamily("hivemem_texts", "Texts embedded (cache hits included)", value=m.texts)
        yield CounterMetricFamily("hivemem_tokens", "Tokens run through the model", value=m.tokens)
        hits = CounterMetricFamily("hivemem_cache_hits", "Cache hits", labels=["tier"])
        hits.add_metric(["memory"], cache.get("hits_memory", 0))
        hits.add_metric(["disk"], cache.get("hits_disk", 0))
        hits.add_metric(["shared"], cache.get("hits_shared", 0))
        yield hits
        yield CounterMetricFamily("hivemem_cache_misses", "Cache misses", value=cache.get("misses", 0))
        shared = cache.get("shared")
        if shared is not None:  # the Redis tier: failures never stop embedding, so count them here
            yield CounterMetricFamily(
                "hivemem_shared_cache_errors", "Failed Redis operations (skipped)", value=shared["errors"]
            )
            yield CounterMetricFamily(
                "hivemem_shared_cache_dropped", "Vectors not written to Redis", value=shared["dropped"]
            )
        yield _histogram("hivemem_batch_size", "Texts per model batch", m.batch_size)
        yield _histogram("hivemem_batch_seconds", "Model time per batch", m.batch_seconds)
        yield _histogram("hivemem_request_seconds", "Request latency inside the service", m.request_seconds)
        if self.status is not None:
            yield GaugeMetricFamily(
                "hivemem_clients", "Connected socket clients", value=self.status()["clients"]
            )


def exposition(
    metrics: ServiceMetrics, embedder: Any, status: Callable[[], dict[str, Any]] | None = None
) -> tuple[bytes, str]:
    """The scrape body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(metrics, embedder, status))
    return generate_latest(registry), CONTENT_TYPE_LATEST
