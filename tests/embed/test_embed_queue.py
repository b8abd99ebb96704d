"""The micro-batching queue: many threads, real model; failures stay in their own batch."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hivemem import Embedder
from hivemem.embed.corpus import sentences
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME  # vectors across batches
from hivemem.embed.queue import MicroBatcher, QueueClosed, QueueFull

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.mark.model  # embeds with the real model, without a fixture that says so
def test_fifty_threads_get_exactly_the_batch_result():
    texts = sentences(300, seed=21)
    with Embedder(cache=False, batching=False) as direct:
        reference = direct.embed(texts)
    with Embedder(cache=False) as emb:

        def worker(k: int) -> list[tuple[int, np.ndarray]]:
            out = []
            for j in range(12):  # a mix of single texts and small lists, with repeats across threads
                i = (k * 7 + j * 13) % len(texts)
                if j % 3 == 0:
                    out.append((i, emb.embed_one(texts[i])))
                else:
                    idx = [i, (i + 1) % len(texts)]
                    for n, vec in zip(idx, emb.embed([texts[n] for n in idx]), strict=True):
                        out.append((n, vec))
            return out

        with ThreadPoolExecutor(50) as pool:
            results = [r for chunk in pool.map(worker, range(50)) for r in chunk]
        stats = emb.stats()["queue"]
    for i, vec in results:
        assert float(vec @ reference[i]) >= SAME
    assert stats["batches"] < len(results)  # requests really were gathered


# The tests below use a fake encoder (a counting function, not a model) on purpose: they check the
# queue's bookkeeping, which must not depend on what computes the vectors.


def _fake_encode(calls: list[list[str]], fail_on: str | None = None):
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        if fail_on is not None and fail_on in texts:
            raise RuntimeError(f"backend failed on {fail_on!r}")
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)

    return encode


def test_identical_inflight_texts_are_computed_once():
    """20 calls queued while the worker is busy form one batch, which computes each text once.
    (The worker is held in a first batch: without the GIL it took the first call at once, alone,
    while the others were still being queued — a lone caller never waits.)"""
    calls: list[list[str]] = []
    gate = threading.Event()
    encode = _fake_encode(calls)
    q = MicroBatcher(lambda t: (gate.wait(30), encode(t))[1], max_wait_ms=50)
    held = q.submit(["first"])
    while q.depth:  # until the worker took it: the 20 below queue behind it
        time.sleep(0.001)
    futures = [q.submit(["same", "other"]) for _ in range(20)]
    gate.set()
    held.result(5)
    results = [f.result(5) for f in futures]
    q.close()
    assert all(np.array_equal(r, results[0]) for r in results)
    assert calls == [["first"], ["same", "other"]]


def test_failing_batch_fails_only_its_callers_and_queue_survives():
    calls: list[list[str]] = []
    q = MicroBatcher(_fake_encode(calls, fail_on="boom"), max_wait_ms=0)
    bad = q.submit(["boom"])
    with pytest.raises(RuntimeError, match="backend failed on 'boom'"):
        bad.result(5)
    assert q.submit(["fine"]).result(5)[0, 0] == 4.0
    q.close()


def test_a_failed_batch_is_rerun_call_by_call_and_each_gets_its_own_rows():
    calls: list[list[str]] = []
    gate = threading.Event()
    encode = _fake_encode(calls, fail_on="boom")
    q = MicroBatcher(lambda t: (gate.wait(30), encode(t))[1], max_wait_ms=0)
    held = q.submit(["first"])  # a batch (with or without the next two) the gate holds back
    bad, good = q.submit(["boom"]), q.submit(["aa", "aa", "b", "aa"])
    gate.set()
    held.result(5)
    with pytest.raises(RuntimeError, match="boom"):
        bad.result(5)
    assert good.result(5)[:, 0].tolist() == [2.0, 2.0, 1.0, 2.0]  # duplicates included
    q.close()
    assert any("boom" in c and "aa" in c for c in calls) and ["aa", "b"] in calls  # together, then alone


def test_large_request_is_split_and_reassembled_in_order():
    calls: list[list[str]] = []
    q = MicroBatcher(_fake_encode(calls), max_batch=8, max_wait_ms=0)
    texts = ["x" * n for n in range(1, 30)]
    out = q.submit(texts).result(5)
    q.close()
    assert out[:, 0].tolist() == [float(n) for n in range(1, 30)]
    assert max(len(c) for c in calls) <= 8


def test_close_drains_then_refuses():
    calls: list[list[str]] = []
    gate = threading.Event()

    def slow(texts):
        gate.wait(5)
        return _fake_encode(calls)(texts)

    q = MicroBatcher(slow, max_wait_ms=0)
    pending = [q.submit([f"t{i}"]) for i in range(5)]
    closer = threading.Thread(target=q.close)
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(5)
    assert all(f.result(0).shape == (1, 2) for f in pending)
    with pytest.raises(QueueClosed):
        q.submit(["late"])


def test_backpressure_refuses_past_max_pending():
    gate = threading.Event()
    q = MicroBatcher(
        lambda t: (gate.wait(5), np.zeros((len(t), 2), np.float32))[1],
        max_wait_ms=0,
        max_pending=4,
        max_batch=2,
    )
    first = q.submit(["a", "b"])  # taken by the worker, which blocks on the gate
    time.sleep(0.05)
    q.submit(["c", "d", "e", "f"])
    with pytest.raises(QueueFull):
        q.submit(["g"])
    gate.set()
    first.result(5)
    q.close()


def test_callers_back_before_the_cache_write_are_counted_once():
    """The worker waits (up to max_wait) for everyone around: the callers pending plus those the
    last batch served. Served callers that resubmit while ``on_batch`` still writes the cache must
    not count twice, or the worker waits out max_wait every batch for callers that do not exist.
    No model: the queue's rule, read from the line when each batch starts."""
    n, rounds = 8, 6
    expected: list[int] = []
    q: MicroBatcher

    def on_batch(texts: list[str], vectors: np.ndarray) -> None:
        deadline = time.monotonic() + 0.2
        while q.depth < n and time.monotonic() < deadline:
            time.sleep(0.001)  # this batch's callers are back in line before the write ends

    def encode(texts: list[str]) -> np.ndarray:
        expected.append(q._line._expect)  # what the worker waited for before this batch
        return np.zeros((len(texts), 4), dtype=np.float32)

    q = MicroBatcher(encode, max_wait_ms=50, on_batch=on_batch)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: [q.submit([f"{i}-{r}"]).result(60) for r in range(rounds)], range(n)))
    q.close()
    assert len(expected) >= rounds and max(expected) <= n, expected


def test_threads_calling_get_their_own_rows_and_one_bad_input_fails_only_its_call():
    """``call`` (the blocking path ``Embedder.embed`` takes): 16 threads in lock-step share batches;
    a batch that fails because of one call's text is run call by call, so only that call raises."""
    calls: list[list[str]] = []
    q = MicroBatcher(_fake_encode(calls, fail_on="boom"), max_wait_ms=50)
    start = threading.Barrier(16)

    def worker(k: int) -> list[object]:
        start.wait()
        out: list[object] = []
        for r in range(5):
            text = "boom" if (k, r) == (3, 2) else "t" * (k + 1) + f"-{r}"
            try:
                out.append(q.call([text])[0, 0])
            except RuntimeError as exc:
                out.append(exc)
        return out

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(worker, range(16)))
    q.close()
    for k, row in enumerate(results):
        for r, got in enumerate(row):
            if (k, r) == (3, 2):
                assert isinstance(got, RuntimeError) and "boom" in str(got)
            else:
                assert got == float(k + 3), (k, r, got)  # len("t" * (k + 1) + "-r")
    assert max(len(c) for c in calls) > 1  # calls really were batched together


def test_an_interrupted_caller_leaves_the_line_and_does_not_stall_the_worker(monkeypatch):
    """A ``call`` interrupted while it waits (as a KeyboardInterrupt would) takes its request out;
    the worker, waiting for company for it, must then find the line empty without failing, and
    serve the next caller."""
    from hivemem.infra.grouping import Wake

    class Interrupted(BaseException):
        pass

    real_wait = Wake.wait

    def wait(self: Wake, timeout: float | None = None) -> bool:
        if threading.current_thread().name == "interrupted":
            time.sleep(0.05)  # the worker is in its timed wait for company by now
            raise Interrupted()
        return real_wait(self, timeout)

    monkeypatch.setattr(Wake, "wait", wait)
    calls: list[list[str]] = []
    q = MicroBatcher(_fake_encode(calls), max_wait_ms=300)
    with q._cv:
        q._line._expect = 5  # as after a batch of five callers: a lone arrival waits for company
    out: dict[str, object] = {}

    def interrupted() -> None:
        try:
            q.call(["gone"])
        except Interrupted as exc:
            out["gone"] = exc

    t = threading.Thread(target=interrupted, name="interrupted")
    t.start()
    t.join(30)
    assert isinstance(out["gone"], Interrupted) and q.depth == 0  # it left the line
    time.sleep(0.4)  # past the wait the worker had set for it
    assert q._thread.is_alive()
    assert q.call(["next"])[0, 0] == 4.0
    q.close()
    assert calls == [["next"]]
