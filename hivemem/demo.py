"""``make demo`` / ``hivemem demo``: the main job on the embedded default, with the real model."""

from __future__ import annotations

import time

import numpy as np

QUESTIONS = [
    "Which customer cannot eat nuts?",
    "Who needs help with their home network?",
    "Something about a payment being sent back",
]


def run_demo(n: int = 2000) -> None:
    from hivemem.embed.corpus import sentences
    from hivemem.embed.engine import Embedder

    corpus = sentences(n, seed=42)
    started = time.perf_counter()
    with Embedder() as emb:
        ready = time.perf_counter()
        vectors = emb.embed(corpus)
        took = time.perf_counter() - ready
        print(
            f"model {emb.model_id}: loaded in {ready - started:.2f} s, "
            f"embedded {n} sentences in {took:.2f} s ({n / took:.0f} texts/s, cache included)"
        )
        for question in QUESTIONS:
            q = emb.embed_one(question)
            scores = vectors @ q
            print(f"\n{question}")
            for i in np.argsort(-scores)[:3]:
                print(f"  {scores[i]:.3f}  {corpus[i]}")
