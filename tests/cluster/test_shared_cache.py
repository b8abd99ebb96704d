"""The Redis tier of the embedding cache (HIVEMEM_CACHE_URL): shared by hosts, never required."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from cluster_helpers import ROOT, free_port, kill_group, start_redis

import hivemem
from hivemem.embed.cache import EmbeddingCache, cache_key
from hivemem.embed.corpus import sentences
from hivemem.embed.shared_cache import PREFIX, RedisTier, encode

pytestmark = pytest.mark.slow
MODEL = "test-model/v1"


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _flushdb(url: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.flushdb()


def test_a_vector_computed_on_one_host_is_read_on_another(redis_url: str, tmp_path: Path) -> None:
    _flushdb(redis_url)
    texts = [f"text {i}" for i in range(50)]
    vecs = _vectors(50)
    a = EmbeddingCache(tmp_path / "a.sqlite", shared=redis_url)
    a.put_many(MODEL, texts, vecs)
    assert a.flush()  # written back in the background; flush waits for it
    b = EmbeddingCache(tmp_path / "b.sqlite", shared=redis_url)  # another host: empty local tiers
    found = b.get_many(MODEL, 16, [*texts, "never embedded"])
    assert found[-1] is None and np.array_equal(np.stack(found[:-1]), vecs)
    assert (b.hits_shared, b.hits_disk, b.misses) == (50, 0, 1)
    assert b.get_many("another-model", 16, texts[:1]) == [None]  # keyed by model id, like the others
    a.close()
    b.close()
    # Its hits were copied into b's SQLite file: found there without Redis.
    local_only = EmbeddingCache(tmp_path / "b.sqlite", shared=False)
    assert local_only.get_many(MODEL, 16, texts)[0] is not None and local_only.hits_disk == 50
    local_only.close()
    # The stored value: the same 16-byte key as the local tiers, raw float32 behind a 12-byte header.
    with redis.Redis.from_url(redis_url) as r:
        raw = r.get(PREFIX + cache_key(MODEL, texts[0]))
    assert raw == encode(MODEL, vecs[0]) and len(raw) == 12 + 16 * 4


def test_sqlite_hits_are_promoted_to_the_shared_tier(redis_url: str, tmp_path: Path) -> None:
    _flushdb(redis_url)
    texts = [f"older text {i}" for i in range(20)]
    before = EmbeddingCache(tmp_path / "c.sqlite", shared=False)  # computed before Redis existed
    before.put_many(MODEL, texts, _vectors(20, seed=1))
    before.close()
    c = EmbeddingCache(tmp_path / "c.sqlite", shared=redis_url)
    assert all(v is not None for v in c.get_many(MODEL, 16, texts)) and c.hits_disk == 20
    assert c.flush()
    d = EmbeddingCache(tmp_path / "d.sqlite", shared=redis_url)
    assert all(v is not None for v in d.get_many(MODEL, 16, texts)) and d.hits_shared == 20
    c.close()
    d.close()


def test_values_of_another_model_or_width_are_never_used(redis_url: str, tmp_path: Path) -> None:
    _flushdb(redis_url)
    key = PREFIX + cache_key(MODEL, "collided")
    with redis.Redis.from_url(redis_url) as r:
        r.set(key, encode("other-model", _vectors(1)[0]))  # right width, wrong model tag
        r.set(PREFIX + cache_key(MODEL, "wide"), encode(MODEL, _vectors(1, dim=32)[0]))
        r.set(PREFIX + cache_key(MODEL, "junk"), b"not a vector")
    tier = RedisTier(redis_url, ttl=100)
    assert tier.get_many(MODEL, 16, [cache_key(MODEL, t) for t in ("collided", "wide", "junk")]) == [None] * 3
    tier.put_many(MODEL, [(cache_key(MODEL, "ttl"), _vectors(1)[0])])
    assert tier.flush()
    with redis.Redis.from_url(redis_url) as r:
        assert 0 < r.ttl(PREFIX + cache_key(MODEL, "ttl")) <= 100
    tier.close()


def test_embedding_goes_on_when_redis_dies_and_uses_it_again_when_back(tmp_path: Path, caplog) -> None:
    port = free_port()
    proc, url = start_redis(port=port)
    texts = sentences(60, seed=401)
    emb = hivemem.Embedder(cache=EmbeddingCache(tmp_path / "e.sqlite", shared=url), threads=1)
    try:
        emb.embed(texts[:20])
        assert emb.cache.flush() and emb.cache.shared.writes == 20
        kill_group(proc)  # Redis dies mid-run
        with caplog.at_level(logging.WARNING, logger="hivemem.cache"):
            out = emb.embed(texts[20:40])  # no exception: computed, kept locally
            emb.embed(texts[40:50])
        assert out.shape == (20, emb.dim)
        warnings = [r for r in caplog.records if "shared embedding cache" in r.getMessage()]
        assert len(warnings) == 1  # rate-limited: one, not one per call
        shared = emb.stats()["cache"]["shared"]
        assert shared["errors"] >= 1 and shared["dropped"] >= 1 and not shared["available"]
        proc, _ = start_redis(port=port)  # back on the same address
        deadline = time.monotonic() + 60
        while emb.cache.shared.writes == 20:  # after its backoff the tier is used again
            assert time.monotonic() < deadline, "never reconnected to Redis"
            emb.embed(sentences(5, seed=int(time.monotonic() * 1000) % 100000))
            emb.cache.flush()
            time.sleep(0.2)
        assert emb.cache.shared.available
    finally:
        emb.close()
        kill_group(proc)


def test_a_second_host_process_reads_what_the_first_computed(redis_url: str, tmp_path: Path) -> None:
    """The real model on 'host' A; a separate process with an empty cache, HIVEMEM_CACHE_URL set."""
    _flushdb(redis_url)
    texts = sentences(200, seed=402)
    with hivemem.Embedder(cache=EmbeddingCache(tmp_path / "a.sqlite", shared=redis_url), threads=1) as a:
        vecs = a.embed(texts)
        assert a.cache.flush()
        model_id = a.model_id
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    code = (
        "import json, sys, numpy as np, hivemem\n"
        "texts = json.load(open(sys.argv[1]))\n"
        "with hivemem.Embedder(threads=1) as e:\n"
        "    np.save(sys.argv[2], e.embed(texts))\n"
        "    print(json.dumps(e.stats()['cache']))\n"
    )
    env = {
        **os.environ,
        "HIVEMEM_CACHE": str(tmp_path / "host-b.sqlite"),
        "HIVEMEM_CACHE_URL": redis_url,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "texts.json"), str(tmp_path / "b.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert (stats["hits_shared"], stats["misses"]) == (200, 0)
    assert np.array_equal(np.load(tmp_path / "b.npy"), vecs)  # the very same vectors
    with redis.Redis.from_url(redis_url) as r:
        assert r.exists(PREFIX + cache_key(model_id, texts[0]))
