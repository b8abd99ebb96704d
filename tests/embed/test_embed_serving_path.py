"""The serving path, with the real model: each text is tokenized once — by the backend, whose counts
travel with the batch to the metrics and the HTTP ``usage`` — and ``aembed`` reads the cache's
SQLite file off the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from hivemem.embed.cache import EmbeddingCache
from hivemem.embed.corpus import sentences
from hivemem.embed.engine import Embedder, make_backend
from hivemem.service.metrics import MeteredBackend, ServiceMetrics


class CountingTokenizer:
    """Forwards to the real tokenizer and counts how often texts are tokenized."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.texts_tokenized = 0

    def encode_batch(self, texts: list[str], **kwargs: object) -> list:
        self.texts_tokenized += len(texts)
        return self.inner.encode_batch(texts, **kwargs)  # type: ignore[attr-defined]

    def encode(self, text: str, **kwargs: object) -> object:  # small calls: text by text
        self.texts_tokenized += 1
        return self.inner.encode(text, **kwargs)  # type: ignore[attr-defined]


def test_every_text_is_tokenized_once_and_its_tokens_reach_metrics_and_usage(tmp_path) -> None:
    backend = make_backend("onnx")
    tokenizer = CountingTokenizer(backend.tokenizer)  # type: ignore[attr-defined]
    exact = sum(len(e.ids) for e in backend.tokenizer.encode_batch(TEXTS, add_special_tokens=True))  # type: ignore[attr-defined]
    backend.tokenizer = tokenizer  # type: ignore[attr-defined]
    metrics = ServiceMetrics()
    engine = Embedder(MeteredBackend(backend, metrics), cache=EmbeddingCache(tmp_path / "c.sqlite"))
    try:
        vectors, tokens = asyncio.run(engine.aembed_counted(TEXTS))
        assert vectors.shape == (len(TEXTS), 384)
        assert tokens == exact == metrics.tokens  # usage and metrics: the backend's own counts
        assert tokenizer.texts_tokenized == len(TEXTS)  # once each (was three times)
        again, tokens = asyncio.run(engine.aembed_counted(TEXTS[:5]))  # cache hits: counted once
        assert np.array_equal(again, vectors[:5])
        assert tokens == sum(len(e.ids) for e in tokenizer.inner.encode_batch(TEXTS[:5]))
        assert tokenizer.texts_tokenized == len(TEXTS) + 5
        assert engine.stats()["queue"]["tokens"] == exact
    finally:
        engine.close()


TEXTS = sentences(24, seed=77)


def test_aembed_reads_the_cache_file_off_the_event_loop(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    with Embedder(cache=path) as writer:
        expected = writer.embed(TEXTS)
    cache = EmbeddingCache(path, memory_items=0, shared=False)  # nothing in memory: every hit is a read
    threads: list[int] = []
    select = cache._select

    def recording(keys: list[bytes]) -> list[tuple[bytes, bytes]]:
        threads.append(threading.get_ident())
        return select(keys)

    cache._select = recording  # type: ignore[method-assign]
    with Embedder(cache=cache) as emb:

        async def main() -> tuple[np.ndarray, int]:
            return await emb.aembed(TEXTS), threading.get_ident()

        got, loop_thread = asyncio.run(main())
    assert np.array_equal(got, expected)
    assert threads and loop_thread not in threads
    assert cache.hits_disk == len(TEXTS)
