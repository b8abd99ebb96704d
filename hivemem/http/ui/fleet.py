"""The fleet page's live chart: a short history of the service's throughput.

The service counts texts and batches cumulatively (``ServiceMetrics``); ``Sampler`` reads those
counters every ``SAMPLE_S`` seconds into a ring of ``SAMPLES`` points, so a page opened now
shows the last minutes at once. The sampling thread starts with the first fleet request (a
service nobody looks at samples nothing) and is a daemon: it never holds the service open.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hivemem.service.metrics import ServiceMetrics

SAMPLE_S = 2.0
SAMPLES = 300  # ten minutes


class Sampler:
    """``(time, batches, texts in batches, queue depth)`` every ``period`` seconds.

    Texts are counted where the model runs (the batches), so the memory store's own embedding and
    every transport count alike, and a cache hit (no model work) does not."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        queue_depth: Callable[[], int | None] = lambda: None,
        period: float = SAMPLE_S,
        size: int = SAMPLES,
    ) -> None:
        self.metrics = metrics
        self.queue_depth = queue_depth
        self.period = period
        self._points: deque[tuple[float, int, float, int | None]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="hivemem-ui-sampler", daemon=True)
        self._sample()
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.period)
            self._sample()

    def _sample(self) -> None:
        m = self.metrics
        try:
            depth = self.queue_depth()
        except Exception:  # a closing engine: the chart just misses the depth
            depth = None
        point = (time.time(), m.batch_size.count, m.batch_size.sum, depth)
        with self._lock:
            self._points.append(point)

    def series(self) -> dict[str, list[Any]]:
        """Per interval between samples: its end time, texts/s and mean batch size (None: no batch)."""
        with self._lock:
            points = list(self._points)
        out: dict[str, list[Any]] = {"t": [], "texts_per_s": [], "batch_mean": [], "queue_depth": []}
        for (t0, n0, sum0, _), (t1, n1, sum1, depth) in itertools.pairwise(points):
            dt = max(t1 - t0, 1e-6)
            out["t"].append(round(t1, 3))
            out["texts_per_s"].append(round((sum1 - sum0) / dt, 2))
            out["batch_mean"].append(round((sum1 - sum0) / (n1 - n0), 2) if n1 > n0 else None)
            out["queue_depth"].append(depth)
        return out
