"""The micro-batching queue: concurrent single requests in, full batches to the backend out.

A model runs a batch of 32 texts several times faster than 32 single calls. Callers from many
threads (or asyncio tasks, or service connections) each hand in a few texts; one worker thread
gathers whatever is pending — waiting, at most ``max_wait_ms`` after the first arrival, for as many
callers as the previous batch served (so a lone caller never waits and 16 busy threads share every
batch) — computes identical texts once,
and hands every caller its own rows. A failing batch fails only the callers in it.

Token counts travel with the batch: an ``encode`` that returns ``(vectors, tokens)`` (tokens per
text, as the backend counted them while tokenizing) lets a caller who asks (``submit(...,
counted=True)``) get its own texts' total with its rows — the HTTP ``usage`` field — and the
queue's ``tokens`` counter, without tokenizing anything a second time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from hivemem.errors import QueueClosed, QueueFull

log = logging.getLogger(__name__)


# What ``encode`` returns: the vectors, or the vectors and each text's token count (None: not counted).
Encoded = np.ndarray | tuple[np.ndarray, np.ndarray | None]


class _Request:
    __slots__ = ("arrived", "counted", "future", "texts")

    def __init__(self, texts: list[str], counted: bool = False) -> None:
        self.texts = texts
        self.counted = counted  # the future resolves to (vectors, tokens) instead of vectors
        self.future: Future[Any] = Future()
        self.arrived = time.monotonic()


class MicroBatcher:
    """Gathers requests into batches of at most ``max_batch`` texts for ``encode``.

    ``on_batch(texts, vectors)`` runs on the worker thread after callers have their results
    (the engine uses it to fill the cache without adding to anyone's latency).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], Encoded],
        *,
        max_batch: int = 256,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
        on_batch: Callable[[list[str], np.ndarray], None] | None = None,
        name: str = "hivemem-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode = encode
        self._on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_pending = max_pending
        self._pending: deque[_Request] = deque()
        self._pending_texts = 0
        self._cv = threading.Condition()
        self._closed = False
        self._expect = 1  # callers served by the last batch
        self._free_since = 0.0  # when the worker last finished a batch
        self.batches = 0
        self.texts_computed = 0
        self.texts_deduplicated = 0
        self.tokens = 0  # tokens run through the model, as the backend counted them
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Texts waiting for a batch."""
        return self._pending_texts

    def submit(self, texts: list[str], *, counted: bool = False) -> Future[Any]:
        """Queue ``texts``; the future resolves to their vectors in order — with ``counted``, to
        ``(vectors, tokens)``: the texts' total token count as the backend reported it (0 when it
        does not count)."""
        if len(texts) <= self.max_batch:
            return self._enqueue([_Request(texts, counted)])[0].future
        # A large request is cut into batch-sized parts so it cannot starve small callers.
        parts = [
            _Request(texts[i : i + self.max_batch], counted) for i in range(0, len(texts), self.max_batch)
        ]
        self._enqueue(parts)
        return _gather([p.future for p in parts], counted)

    def _enqueue(self, requests: list[_Request]) -> list[_Request]:
        n = sum(len(r.texts) for r in requests)
        with self._cv:
            if self._closed:
                raise QueueClosed("the embedder is closed")
            if self.max_pending is not None and self._pending_texts + n > self.max_pending and self._pending:
                raise QueueFull(
                    f"{self._pending_texts} texts already queued (max_pending={self.max_pending})"
                )
            self._pending.extend(requests)
            self._pending_texts += n
            self._cv.notify()
        return requests

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> list[_Request] | None:
        self._free_since = time.monotonic()
        with self._cv:
            while not self._pending:
                if self._closed:
                    return None
                self._cv.wait()
            # Wait for as many callers as the last batch served (they are resubmitting right now),
            # never longer than max_wait: a lone sequential caller (expect == 1) never waits.
            deadline = max(self._pending[0].arrived, self._free_since) + self.max_wait
            while (
                len(self._pending) < self._expect
                and self._pending_texts < self.max_batch
                and not self._closed
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            batch = [self._pending.popleft()]
            size = len(batch[0].texts)
            while self._pending and size + len(self._pending[0].texts) <= self.max_batch:
                request = self._pending.popleft()
                batch.append(request)
                size += len(request.texts)
            self._pending_texts -= size
            self._expect = len(batch)

            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._process(batch)

    def _process(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        index: dict[str, int] = {}
        for request in live:
            for text in request.texts:
                index.setdefault(text, len(index))
        unique = list(index)
        try:
            encoded = self._encode(unique)
        except BaseException as exc:  # the callers get the real error; the queue keeps going
            for request in live:
                request.future.set_exception(exc)
            return
        vectors, tokens = encoded if isinstance(encoded, tuple) else (encoded, None)
        self.batches += 1
        self.texts_computed += len(unique)
        self.texts_deduplicated += sum(len(r.texts) for r in live) - len(unique)
        if tokens is not None:
            self.tokens += int(tokens.sum())
        for request in live:
            rows = [index[t] for t in request.texts]
            if request.counted:
                n = int(tokens[rows].sum()) if tokens is not None else 0
                request.future.set_result((vectors[rows], n))
            else:
                request.future.set_result(vectors[rows])
        if self._on_batch is not None:
            try:
                self._on_batch(unique, vectors)
            except Exception:
                log.exception("hivemem: storing a batch in the cache failed (vectors were still returned)")


def _gather(futures: list[Future[Any]], counted: bool) -> Future[Any]:
    """One future for the concatenation of several (summing their token counts when ``counted``),
    failing with the first error."""
    combined: Future[Any] = Future()
    combined.set_running_or_notify_cancel()
    remaining = [len(futures)]
    lock = threading.Lock()

    def done(_: Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if not last:
            return
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            combined.set_exception(errors[0])
        elif counted:
            parts = [f.result() for f in futures]
            combined.set_result((np.concatenate([v for v, _ in parts]), sum(n for _, n in parts)))
        else:
            combined.set_result(np.concatenate([f.result() for f in futures]))

    for future in futures:
        future.add_done_callback(done)
    return combined
