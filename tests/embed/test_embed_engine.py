"""The engine with the real MiniLM model: shapes, order, fidelity, truncation, asyncio."""

import asyncio
import os
import re

import numpy as np
import pytest

from hivemem import Embedder
from hivemem.embed.corpus import sentences
from hivemem.embed.model import MIN_BATCH_INVARIANCE as SAME
from hivemem.embed.model import read_manifest


@pytest.fixture(scope="module")
def emb():
    with Embedder(cache=False) as e:
        yield e


def test_prepared_manifest_verifies_every_variant():
    manifest = read_manifest()
    assert manifest is not None
    assert set(manifest["variants"]) >= {"fp32", "int8"}
    default = manifest["variants"][manifest["default"]]
    assert default["accepted"] and default["mean_cosine"] >= 0.99 and default["top5_overlap"] >= 0.95


def test_vectors_are_normalised_in_input_order(emb):
    texts = sentences(40, seed=3)
    vectors = emb.embed(texts)
    assert vectors.shape == (40, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The same text gets the same vector whatever else is in its batch (int8 kernels may differ
    # in rounding only: prepare() refuses variants below cosine SAME here).
    reversed_vectors = emb.embed(texts[::-1])
    assert np.sum(reversed_vectors[::-1] * vectors, axis=1).min() >= SAME
    assert float(emb.embed_one(texts[5]) @ vectors[5]) >= SAME


def test_empty_list_gives_zero_rows(emb):
    assert emb.embed([]).shape == (0, 384)


def test_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from hivemem.embed.model import source_dir

    texts = sentences(64, seed=11)
    reference = SentenceTransformer(str(source_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    with Embedder(variant="fp32", cache=False) as e:
        cos = np.sum(e.embed(texts) * reference, axis=1)
    assert cos.min() >= 0.9999


def test_semantic_neighbours_make_sense(emb):
    docs = ["Alice is allergic to peanuts.", "The train to Lisbon leaves at noon.", "Reset the router."]
    q = emb.embed_one("Which food must Alice avoid?")
    assert int(np.argmax(emb.embed(docs) @ q)) == 0


def test_overlong_text_is_truncated_and_counted(emb):
    before = emb.truncated
    long_text = " ".join(["word"] * 600)
    vec = emb.embed([long_text, "short"])
    assert vec.shape == (2, 384)
    assert emb.truncated == before + 1
    # Truncation keeps the first 256 tokens: text beyond them does not change the vector.
    assert float(emb.embed_one(long_text + " completely different ending") @ vec[0]) >= SAME


def test_aembed_matches_embed(emb):
    texts = sentences(10, seed=4)

    async def main():
        return await asyncio.gather(*(emb.aembed([t]) for t in texts))

    got = np.concatenate(asyncio.run(main()))
    assert np.sum(got * emb.embed(texts), axis=1).min() >= SAME


def test_unknown_variant_and_backend_are_clear_errors():
    with pytest.raises(ValueError, match="unknown variant 'int4'"):
        Embedder(variant="int4")
    with pytest.raises(ValueError, match="unknown backend"):
        Embedder("word2vec")


def test_unreachable_openai_endpoint_names_the_url():
    url = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    with pytest.raises(ConnectionError, match=re.escape(url)):
        Embedder("openai", url=url)


@pytest.mark.skipif(not os.environ.get("HIVEMEM_TEST_CUDA"), reason="needs a GPU and onnxruntime-gpu")
def test_cuda_device():
    with Embedder(device="cuda", cache=False) as e:
        assert e.embed(["gpu"]).shape == (1, 384)
