"""The micro-batching queue: concurrent single requests in, full batches to the backend out.

A model runs a batch of 32 texts several times faster than 32 single calls. Callers from many
threads (or asyncio tasks, or service connections) each hand in a few texts; one worker thread
gathers whatever is pending — by ``hivemem.infra.grouping.Line``'s rule: at most ``max_wait_ms`` for
everyone who was around last time, so a lone caller never waits and 16 busy threads share every
batch — computes identical texts once, and hands every caller its own rows. A failing batch
fails only the callers in it. (A worker thread, not a leading caller as in ``grouping.Combiner``:
the callers may be event loops, which must not block.)

Two ways in: ``call`` blocks its thread on a ``grouping.Wake`` (a raw lock: the worker wakes each
caller with one release, and is itself woken once per batch, when the batch is ready — not on
every arrival), ``submit`` returns a ``Future`` (event loops, the service). Per caller and batch
that is the difference between ~one futex wake and a ``Condition``'s dance under the GIL, which
16 threads did in lock-step while both cores idled (docs/embed.md, "Concurrent singles").

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
from hivemem.infra.grouping import Line, Member, Wake, each_alone, settle

log = logging.getLogger(__name__)


# What ``encode`` returns: the vectors, or the vectors and each text's token count (None: not counted).
Encoded = np.ndarray | tuple[np.ndarray, np.ndarray | None]


class _Request:
    __slots__ = ("counted", "future", "texts")

    def __init__(self, texts: list[str], counted: bool = False, future: Future[Any] | None = None) -> None:
        self.texts = texts
        self.counted = counted  # the outcome is (vectors, tokens) instead of vectors
        self.future = future  # submit's callers; call's wait on the member's Wake instead


def _hand(member: Member[_Request], outcome: Any) -> None:
    """``member``'s outcome to its caller: its future, or its ``Wake``."""
    future = member.item.future
    if future is None:
        settle(member, outcome)
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class MicroBatcher:
    """Gathers requests into batches of at most ``max_batch`` texts for ``encode``.

    ``on_batch(texts, vectors)`` runs on the worker thread after callers have their results
    (the engine uses it to fill the cache without adding to anyone's latency).
    ``on_handed()`` runs on the worker thread once a batch's callers have their outcomes, before
    ``on_batch`` (the engine wakes each event loop once per batch then, not once per call).
    ``alone_on_failure``: when a batch of several calls fails, run each call by itself
    (``grouping.each_alone``), so that one bad input fails its own call only; off where a failure
    is not the inputs' (a remote host that is down would be asked once per call).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], Encoded],
        *,
        max_batch: int = 256,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
        on_batch: Callable[[list[str], np.ndarray], None] | None = None,
        on_handed: Callable[[], None] | None = None,
        alone_on_failure: bool = True,
        name: str = "hivemem-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._encode = encode
        self._on_batch = on_batch
        self._on_handed = on_handed
        self._alone_on_failure = alone_on_failure
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_pending = max_pending
        self._line: Line[_Request] = Line(max_wait_ms=max_wait_ms, max_size=max_batch)
        self._cv = threading.Condition(threading.Lock())
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

    def call(self, texts: list[str], *, counted: bool = False) -> Any:
        """``submit(texts).result()`` for a thread that blocks anyway, without the ``Future``: the
        caller sleeps on a ``Wake`` until the worker hands it its rows (or raises its error)."""
        if len(texts) > self.max_batch:
            return self.submit(texts, counted=counted).result()
        wake = Wake()
        member = Member(_Request(texts, counted), len(texts), wake)
        self._enqueue([member])
        try:
            wake.wait()
        except BaseException:  # interrupted: leave the line (a batch that has it computes it anyway)
            with self._cv:
                self._line.remove(member)
                self._cv.notify()  # the worker may be waiting for company for it
            raise
        if isinstance(member.outcome, BaseException):
            raise member.outcome
        return member.outcome

    def submit(self, texts: list[str], *, counted: bool = False) -> Future[Any]:
        """Queue ``texts``; the future resolves to their vectors in order — with ``counted``, to
        ``(vectors, tokens)``: the texts' total token count as the backend reported it (0 when it
        does not count)."""
        if len(texts) <= self.max_batch:
            future: Future[Any] = Future()
            self._enqueue([Member(_Request(texts, counted, future), len(texts))])
            return future
        # A large request is cut into batch-sized parts so it cannot starve small callers.
        parts = [
            Member(
                _Request(texts[i : i + self.max_batch], counted, Future()), len(texts[i : i + self.max_batch])
            )
            for i in range(0, len(texts), self.max_batch)
        ]
        self._enqueue(parts)
        return _gather([p.item.future for p in parts if p.item.future is not None], counted)

    def _enqueue(self, members: list[Member[_Request]]) -> None:
        n = sum(m.size for m in members)
        with self._cv:
            if self._closed:
                raise QueueClosed("the embedder is closed")
            if self.max_pending is not None and self._line.units + n > self.max_pending and self._line:
                raise QueueFull(f"{self._line.units} texts already queued (max_pending={self.max_pending})")
            was_empty = not self._line
            self._line.put(members)
            # The worker sleeps untimed on an empty line, else until the head's deadline: it needs
            # waking only when the line starts or a batch is ready, not on every arrival (each
            # wake-up is a GIL hand-off taken from the callers coming back).
            if was_empty or self._line.wait_for() <= 0:
                self._cv.notify()

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
            while True:
                if not self._line:  # (empty again when an interrupted caller left it)
                    if self._closed:
                        return None
                    self._cv.wait()
                elif self._closed or (wait := self._line.wait_for()) <= 0:
                    return self._line.take()
                else:
                    self._cv.wait(wait)

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._process(batch)
            with self._cv:
                self._line.free()  # the cache is written too: the next batch's wait starts now

    def _served(self, batch: list[Member[_Request]]) -> None:
        with self._cv:
            self._line.served(len(batch))

    @staticmethod
    def _rows(
        member: Member[_Request], vectors: np.ndarray, tokens: np.ndarray | None, index: dict[str, int]
    ) -> Any:
        """``member``'s outcome from a batch's ``vectors`` (``index``: text → row)."""
        rows = [index[t] for t in member.item.texts]
        if member.item.counted:
            return vectors[rows], int(tokens[rows].sum()) if tokens is not None else 0
        return vectors[rows]

    def _alone(self, member: Member[_Request]) -> Any:
        """``member``'s texts as a batch of their own (after the batch it was in failed)."""
        unique = list(dict.fromkeys(member.item.texts))
        vectors, tokens = _split(self._encode(unique), len(unique))
        return self._rows(member, vectors, tokens, {t: i for i, t in enumerate(unique)})

    def _process(self, batch: list[Member[_Request]]) -> None:
        live = [m for m in batch if m.item.future is None or m.item.future.set_running_or_notify_cancel()]
        if not live:
            self._served(batch)
            return
        index: dict[str, int] = {}
        for member in live:
            for text in member.item.texts:
                index.setdefault(text, len(index))
        unique = list(index)
        try:
            vectors, tokens = _split(self._encode(unique), len(unique))
        except Exception as exc:
            self._served(batch)
            if len(live) == 1 or not self._alone_on_failure:
                for member in live:
                    _hand(member, exc)
                self._handed()
                return
            # each call by itself, so that the error lands on the call that caused it
            outcomes = each_alone(self._alone, live)
            for member, outcome in zip(live, outcomes, strict=True):
                _hand(member, outcome)
            self._handed()
            return
        except BaseException as exc:  # not an error of the inputs: every caller gets it, the queue goes on
            self._served(batch)
            for member in live:
                _hand(member, exc)
            self._handed()
            return
        self.batches += 1
        self.texts_computed += len(unique)
        self.texts_deduplicated += sum(m.size for m in live) - len(unique)
        if tokens is not None:
            self.tokens += int(tokens.sum())
        self._served(batch)  # before the callers have their rows: those back at once count once
        try:
            for member in live:
                _hand(member, self._rows(member, vectors, tokens, index))
        finally:  # even if handing out failed: the members handed already must be woken
            self._handed()
        if self._on_batch is not None:
            try:
                self._on_batch(unique, vectors)
            except Exception:
                log.exception("hivemem: storing a batch in the cache failed (vectors were still returned)")

    def _handed(self) -> None:
        if self._on_handed is not None:
            try:
                self._on_handed()
            except Exception:  # the worker must survive it: every later caller depends on it
                log.exception("hivemem: on_handed failed after a batch (its callers have their outcomes)")

    @property
    def thread(self) -> threading.Thread:
        """The worker thread (it computes every batch and hands out every outcome)."""
        return self._thread


def _split(encoded: Encoded, texts: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(vectors, token counts or None)``; a backend that returns another number of rows than
    texts fails the batch (as an error of the backend) instead of the worker thread."""
    vectors, tokens = encoded if isinstance(encoded, tuple) else (encoded, None)
    if len(vectors) != texts or (tokens is not None and len(tokens) != texts):
        raise RuntimeError(f"the embedding backend returned {len(vectors)} rows for {texts} texts")
    return vectors, tokens


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
