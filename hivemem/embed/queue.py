"""The micro-batching queue: concurrent single requests in, full batches to the backend out.

A model runs a batch of 32 texts several times faster than 32 single calls. Callers from many
threads (or asyncio tasks, or service connections) each hand in a few texts; one worker thread
gathers whatever is pending — by ``hivemem.infra.grouping.Line``'s rule: at most ``max_wait_ms`` for
everyone who was around last time, so a lone caller never waits and 16 busy threads share every
batch — computes identical texts once, and hands every caller its own rows. A failing batch
fails only the callers in it. (A worker thread, not a leading caller as in ``grouping.Combiner``:
the callers may be event loops, which must not block.)

Token counts travel with the batch: an ``encode`` that returns ``(vectors, tokens)`` (tokens per
text, as the backend counted them while tokenizing) lets a caller who asks (``submit(...,
counted=True)``) get its own texts' total with its rows — the HTTP ``usage`` field — and the
queue's ``tokens`` counter, without tokenizing anything a second time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from hivemem.errors import QueueClosed, QueueFull
from hivemem.infra.grouping import Line, Member

log = logging.getLogger(__name__)


# What ``encode`` returns: the vectors, or the vectors and each text's token count (None: not counted).
Encoded = np.ndarray | tuple[np.ndarray, np.ndarray | None]


class _Request:
    __slots__ = ("counted", "texts")

    def __init__(self, texts: list[str], counted: bool = False) -> None:
        self.texts = texts
        self.counted = counted  # the future resolves to (vectors, tokens) instead of vectors


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
        self._line: Line[_Request] = Line(max_wait_ms=max_wait_ms, max_size=max_batch)
        self._cv = threading.Condition()
        self._closed = False
        self.batches = 0
        self.texts_computed = 0
        self.texts_deduplicated = 0
        self.tokens = 0  # tokens run through the model, as the backend counted them
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Texts waiting for a batch."""
        return self._line.units

    def submit(self, texts: list[str], *, counted: bool = False) -> Future[Any]:
        """Queue ``texts``; the future resolves to their vectors in order — with ``counted``, to
        ``(vectors, tokens)``: the texts' total token count as the backend reported it (0 when it
        does not count)."""
        if len(texts) <= self.max_batch:
            return self._enqueue([Member(_Request(texts, counted), len(texts))])[0].future
        # A large request is cut into batch-sized parts so it cannot starve small callers.
        parts = [
            Member(_Request(texts[i : i + self.max_batch], counted), len(texts[i : i + self.max_batch]))
            for i in range(0, len(texts), self.max_batch)
        ]
        self._enqueue(parts)
        return _gather([p.future for p in parts], counted)

    def _enqueue(self, members: list[Member[_Request]]) -> list[Member[_Request]]:
        n = sum(m.size for m in members)
        with self._cv:
            if self._closed:
                raise QueueClosed("the embedder is closed")
            if self.max_pending is not None and self._line.units + n > self.max_pending and self._line:
                raise QueueFull(f"{self._line.units} texts already queued (max_pending={self.max_pending})")
            self._line.put(members)
            self._cv.notify()
        return members

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> list[Member[_Request]] | None:
        """The next batch (``grouping.Line``'s rule: a lone sequential caller never waits), or None
        once closed and drained."""
        with self._cv:
            while not self._line:
                if self._closed:
                    return None
                self._cv.wait()
            while not self._closed and (wait := self._line.wait_for()) > 0:
                self._cv.wait(wait)
            return self._line.take()

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._process(batch)
            with self._cv:
                self._line.free()  # the cache is written too: the next batch's wait starts now

    def _served(self, batch: list[Member[_Request]]) -> None:
        with self._cv:
            self._line.served(len(batch))

    def _process(self, batch: list[Member[_Request]]) -> None:
        live = [m for m in batch if m.future.set_running_or_notify_cancel()]
        if not live:
            self._served(batch)
            return
        index: dict[str, int] = {}
        for member in live:
            for text in member.item.texts:
                index.setdefault(text, len(index))
        unique = list(index)
        try:
            encoded = self._encode(unique)
        except BaseException as exc:  # the callers get the real error; the queue keeps going
            self._served(batch)
            for member in live:
                member.future.set_exception(exc)
            return
        vectors, tokens = encoded if isinstance(encoded, tuple) else (encoded, None)
        self.batches += 1
        self.texts_computed += len(unique)
        self.texts_deduplicated += sum(m.size for m in live) - len(unique)
        if tokens is not None:
            self.tokens += int(tokens.sum())
        self._served(batch)  # before the callers have their rows: those back at once count once
        for member in live:
            rows = [index[t] for t in member.item.texts]
            if member.item.counted:
                n = int(tokens[rows].sum()) if tokens is not None else 0
                member.future.set_result((vectors[rows], n))
            else:
                member.future.set_result(vectors[rows])
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
