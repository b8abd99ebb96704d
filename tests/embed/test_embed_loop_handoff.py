"""``Embedder.aembed``'s way back to the event loop (issue 25): a batch's results wake each loop
once, and a cancelled call still never reaches the model. NOT the model: a hash backend, because
what is measured is the hand-off, not the vectors (tests/hash_embedder.py)."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from typing import Any

import numpy as np
import pytest
from hash_embedder import HashEmbedder

from hivemem import Embedder

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


class _GatedHash:
    """A backend of hash vectors whose first batch waits for ``release`` (so that the other calls
    queue up behind it) and that records every batch it computes."""

    model_id = "test/gated-hash"
    dim = HashEmbedder.dim
    truncated = 0

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.started.set()
        self.release.wait(30)
        return HashEmbedder().embed(texts)

    def close(self) -> None:
        pass


def _count_wakeups(loop: asyncio.AbstractEventLoop) -> list[int]:
    """Count ``call_soon_threadsafe`` on ``loop`` (each is a write to its self-pipe, a wake-up)."""
    count = [0]
    original = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return count


def test_a_batch_of_many_aembed_calls_wakes_the_loop_once() -> None:
    """``asyncio.wrap_future`` woke the loop once per call: 20 wake-ups for a batch of 20."""
    backend = _GatedHash()
    texts = [f"text {i}" for i in range(20)]

    async def main() -> tuple[int, list[np.ndarray]]:
        wakes = _count_wakeups(asyncio.get_running_loop())
        first = asyncio.create_task(emb.aembed(["first"]))
        await asyncio.to_thread(backend.started.wait, 30)  # the worker holds "first": the rest queue
        before = wakes[0]
        rest = [asyncio.create_task(emb.aembed([t])) for t in texts]
        await asyncio.sleep(0.05)  # every call is in the line
        backend.release.set()
        await first
        out = await asyncio.gather(*rest)
        return wakes[0] - before, out

    with Embedder(backend, cache=False) as emb:
        wakes, out = asyncio.run(main())
    assert backend.batches == [["first"], texts]  # the 20 calls made one batch
    assert wakes <= 2  # the one batch of 20 (and "first"'s own): not 21
    expected = HashEmbedder().embed(texts)
    for i, vectors in enumerate(out):
        assert np.array_equal(vectors[0], expected[i])


def test_a_cancelled_aembed_is_not_computed_and_the_others_are() -> None:
    backend = _GatedHash()

    async def main() -> None:
        first = asyncio.create_task(emb.aembed(["first"]))
        await asyncio.to_thread(backend.started.wait, 30)
        doomed = asyncio.create_task(emb.aembed(["cancelled"]))
        kept = asyncio.create_task(emb.aembed(["kept"]))
        await asyncio.sleep(0.05)
        doomed.cancel()
        await asyncio.sleep(0)
        backend.release.set()
        await first
        assert (await kept).shape == (1, HashEmbedder.dim)
        with pytest.raises(asyncio.CancelledError):
            await doomed

    with Embedder(backend, cache=False) as emb:
        asyncio.run(main())
    assert backend.batches == [["first"], ["kept"]]


def test_an_error_reaches_the_awaiting_call() -> None:
    class Failing(_GatedHash):
        def encode(self, texts: list[str]) -> np.ndarray:
            raise RuntimeError("the backend broke")

    with Embedder(Failing(), cache=False) as emb, pytest.raises(RuntimeError, match="the backend broke"):
        asyncio.run(emb.aembed(["x"]))


def test_a_result_for_a_closed_loop_leaves_the_queue_working() -> None:
    """Waking a loop that closed meanwhile raises in ``call_soon_threadsafe``; on the worker
    thread that would have ended the queue for every later caller."""
    backend = _GatedHash()
    with Embedder(backend, cache=False) as emb:
        loop = asyncio.new_event_loop()
        task = loop.create_task(emb.aembed(["orphan"]))
        loop.run_until_complete(asyncio.sleep(0.05))  # the call is in the worker's hands
        assert backend.started.wait(30)
        loop.close()  # with the call still pending
        backend.release.set()
        assert emb.embed(["after"]).shape == (1, HashEmbedder.dim)
        assert emb._queue is not None and emb._queue.thread.is_alive()
    del task


def test_a_stop_iteration_from_the_backend_fails_that_call_and_no_other() -> None:
    """An asyncio future refuses StopIteration (TypeError): the hand-out loop stopped there and
    every later call in the same inbox waited forever (review finding 2)."""

    class Stopping(_GatedHash):
        def encode(self, texts: list[str]) -> np.ndarray:
            if "bad" in texts:
                raise StopIteration
            return super().encode(texts)

    backend = Stopping()

    async def main() -> None:
        first = asyncio.create_task(emb.aembed(["first"]))
        await asyncio.to_thread(backend.started.wait, 30)
        bad = asyncio.create_task(emb.aembed(["bad"]))
        good = asyncio.create_task(emb.aembed(["good"]))
        await asyncio.sleep(0.05)  # both in the line, handed out by one wake-up (one inbox)
        backend.release.set()
        await first
        with pytest.raises(RuntimeError, match="StopIteration") as failed:
            await asyncio.wait_for(bad, 30)
        assert isinstance(failed.value.__cause__, StopIteration)
        assert (await asyncio.wait_for(good, 30)).shape == (1, HashEmbedder.dim)

    with Embedder(backend, cache=False) as emb:
        asyncio.run(main())


def test_a_closed_loop_is_not_kept_alive_by_its_undelivered_results() -> None:
    """A result for a loop that closed stayed in the inbox, whose entry holds the loop through
    the result's future: one loop (and its vectors) kept per cancelled ``asyncio.run`` for the
    engine's lifetime (review finding 4)."""
    backend = _GatedHash()
    with Embedder(backend, cache=False) as emb:
        loop = asyncio.new_event_loop()
        task = loop.create_task(emb.aembed(["orphan"]))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert backend.started.wait(30)
        loop.close()
        backend.release.set()
        assert emb.embed(["after"]).shape == (1, HashEmbedder.dim)  # the orphan's batch is done
        gone = weakref.ref(loop)
        del task, loop
        gc.collect()
        assert gone() is None


def test_a_cancelled_partial_cache_hit_cancels_its_misses(caplog: pytest.LogCaptureFixture) -> None:
    """Cancelling a call whose texts were partly cached left its misses queued: they were
    computed for nobody, and settling the cancelled call raised InvalidStateError in the worker
    (logged by concurrent.futures) (review finding 9)."""
    backend = _GatedHash()

    async def main() -> None:
        first = asyncio.create_task(emb.aembed(["first"]))
        await asyncio.to_thread(backend.started.wait, 30)
        doomed = asyncio.create_task(emb.aembed(["cached", "missing"]))
        await asyncio.sleep(0.05)  # its miss is queued behind "first"
        doomed.cancel()
        await asyncio.sleep(0)
        backend.release.set()
        await first
        assert (await emb.aembed(["kept"])).shape == (1, HashEmbedder.dim)
        with pytest.raises(asyncio.CancelledError):
            await doomed

    with Embedder(backend, cache=True) as emb, caplog.at_level(logging.ERROR):
        backend.release.set()
        emb.embed(["cached"])
        backend.release.clear()
        backend.started.clear()
        backend.batches.clear()
        asyncio.run(main())
    assert backend.batches == [["first"], ["kept"]]  # "missing" never computed
    assert not [r for r in caplog.records if "InvalidStateError" in r.getMessage() + str(r.exc_info)]


def test_a_backend_short_of_rows_fails_its_call_and_wakes_the_others() -> None:
    """A backend that returned fewer rows than texts made the worker die while handing out the
    batch (IndexError): the calls already handed waited for a wake-up that never came, and every
    later call hung (review finding 5). Now the batch fails as a backend error: each call alone,
    the short one fails, the others get their rows, the queue goes on."""

    class Short(_GatedHash):
        def encode(self, texts: list[str]) -> np.ndarray:
            vectors = super().encode(texts)
            return vectors[:-1] if "short" in texts else vectors

    backend = Short()

    async def main() -> None:
        first = asyncio.create_task(emb.aembed(["first"]))
        await asyncio.to_thread(backend.started.wait, 30)
        ok = asyncio.create_task(emb.aembed(["ok"]))
        short = asyncio.create_task(emb.aembed(["short"]))
        await asyncio.sleep(0.05)  # one batch: ["ok", "short"]
        backend.release.set()
        await first
        assert (await asyncio.wait_for(ok, 30)).shape == (1, HashEmbedder.dim)
        with pytest.raises(RuntimeError, match="0 rows for 1 texts"):
            await asyncio.wait_for(short, 30)
        assert (await asyncio.wait_for(emb.aembed(["after"]), 30)).shape == (1, HashEmbedder.dim)

    with Embedder(backend, cache=False) as emb:
        asyncio.run(main())
    assert backend.batches[1] == ["ok", "short"]
