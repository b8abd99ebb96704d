"""The two-tier cache: hits, model namespacing, sharing between processes, the size bound."""

import subprocess
import sys

import numpy as np
import pytest

from hivemem import Embedder, EmbeddingCache

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _vecs(n: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_hit_and_miss(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    v = _vecs(2)
    assert cache.get_many("m", 384, ["a", "b"]) == [None, None]
    cache.put_many("m", ["a", "b"], v)
    got = cache.get_many("m", 384, ["b", "a", "zzz"])
    assert np.array_equal(got[0], v[1]) and np.array_equal(got[1], v[0]) and got[2] is None
    fresh = EmbeddingCache(tmp_path / "c.sqlite")  # empty LRU: served from disk
    assert np.array_equal(fresh.get_many("m", 384, ["a"])[0], v[0])
    assert fresh.hits_disk == 1


def test_models_never_read_each_others_vectors(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    cache.put_many("model-a", ["same text"], _vecs(1))
    assert cache.get_many("model-b", 384, ["same text"]) == [None]
    assert EmbeddingCache(tmp_path / "c.sqlite").get_many("model-b", 384, ["same text"]) == [None]


@pytest.mark.model  # embeds with the real model, without a fixture that says so
def test_engine_uses_cache_and_second_process_sees_it(tmp_path):
    path = tmp_path / "shared.sqlite"
    texts = ["the cache is shared", "between processes on one machine"]
    with Embedder(cache=path) as emb:
        first = emb.embed(texts)
        assert emb.stats()["cache"]["misses"] == 2
    code = (
        "import sys, numpy as np; from hivemem import EmbeddingCache;"
        f"c = EmbeddingCache({str(path)!r});"
        f"v = c.get_many({emb.model_id!r}, 384, {texts!r});"
        "assert all(x is not None for x in v), v;"
        "sys.stdout.buffer.write(np.stack(v).tobytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True).stdout
    assert np.array_equal(np.frombuffer(out, dtype=np.float32).reshape(2, 384), first)


def test_processes_creating_and_writing_one_new_file_at_once(tmp_path):
    path = tmp_path / "c.sqlite"
    code = (
        "import sys, numpy as np; from hivemem import EmbeddingCache;"
        f"c = EmbeddingCache({str(path)!r}); k = int(sys.argv[1]);"
        "texts = [f't{i}' for i in range(k * 300, k * 300 + 600)];"
        "ones = np.ones((20, 384), np.float32);"
        "[c.put_many('m', texts[i:i + 20], ones * (i + 1)) for i in range(0, 600, 20)]"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)]) for k in range(6)]
    assert [p.wait(120) for p in procs] == [0] * 6  # nobody saw "database is locked" while creating it
    assert EmbeddingCache(path).stats()["entries"] == 2100  # 3600 writes; neighbours share 300 texts


def test_disk_size_is_bounded(tmp_path):
    row = 384 * 4 + 80
    cache = EmbeddingCache(tmp_path / "c.sqlite", max_bytes=500 * row, memory_items=10)
    for start in range(0, 3000, 100):
        cache.put_many("m", [f"text {i}" for i in range(start, start + 100)], _vecs(100, seed=start))
    entries = cache.stats()["entries"]
    assert 500 <= entries <= 500 + 1024 + 100  # evicted to the bound at every size check
    assert cache.get_many("m", 384, ["text 2999"])[0] is not None  # newest kept
    assert EmbeddingCache(tmp_path / "c.sqlite").get_many("m", 384, ["text 0"]) == [None]  # oldest gone


def test_clear_one_model(tmp_path):
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    cache.put_many("a", ["x"], _vecs(1))
    cache.put_many("b", ["x"], _vecs(1))
    assert cache.clear("a") == 1
    assert set(cache.stats()["models"]) == {"b"}


class _NoModel:
    """NOT a model: a backend that refuses to run, for a test where every text is a cache hit."""

    model_id = "m"
    dim = 384
    truncated = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        raise AssertionError(f"the model ran for {texts!r}: these texts are in the cache")

    def close(self) -> None:
        pass


def test_concurrent_aembeds_that_miss_the_lru_share_one_disk_query(tmp_path):
    """The service's requests read the SQLite tier together: ten concurrent ``aembed`` calls whose
    texts are on disk only make one query (they made ten, each with its own thread hop), and
    each gets its own vectors. Measures the cache, so no model (``_NoModel``)."""
    import asyncio

    path = tmp_path / "c.sqlite"
    texts = [f"text {i}" for i in range(10)]
    v = _vecs(10, seed=3)
    EmbeddingCache(path).put_many("m", texts, v)
    cache = EmbeddingCache(path)  # a fresh process's LRU: empty
    selects: list[int] = []
    real = cache._select
    cache._select = lambda keys: selects.append(len(keys)) or real(keys)
    emb = Embedder(_NoModel(), cache=cache)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(emb.aembed([t, t]) for t in texts))

    out = asyncio.run(main())
    assert selects == [10]
    for i, vectors in enumerate(out):
        assert np.array_equal(vectors[0], v[i]) and np.array_equal(vectors[1], v[i])
    assert (cache.hits_disk, cache.misses) == (10, 0)
    emb.close()
