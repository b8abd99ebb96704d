"""``make demo`` / ``hivemem demo``: the main job on the embedded default, with the real model.

Agents write long-term memories for many users in batches, then each agent asks a question in
its own user's scope. Everything runs in this process: ONNX Runtime engine, the shared embedding
cache, one SQLite memory file.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import typer

USERS = ["alice", "bob", "chen", "dana"]
QUESTIONS = [
    ("alice", "Which foods must I avoid?"),
    ("bob", "How do I fix my home network?"),
    ("chen", "Was any payment sent back to a customer?"),
]


def run_demo(n: int = 2000) -> None:
    from hivemem.embed.corpus import sentences
    from hivemem.embed.engine import Embedder
    from hivemem.memory.store import Memory

    corpus = sentences(n, seed=42)
    items = [{"messages": text, "user_id": USERS[i % len(USERS)]} for i, text in enumerate(corpus)]
    started = time.perf_counter()
    with Embedder() as emb, tempfile.TemporaryDirectory() as tmp:
        ready = time.perf_counter()
        print(f"model {emb.model_id} ready in {ready - started:.2f} s")
        memory = Memory(Path(tmp) / "demo-memory.sqlite", embedder=emb)
        t = time.perf_counter()
        added = memory.add_batch(items)["results"]
        took = time.perf_counter() - t
        print(
            f"add_batch: {len(added)} memories for {len(USERS)} users in {took:.2f} s "
            f"({len(added) / took:.0f}/s; texts seen before come from the embedding cache)"
        )
        for user, question in QUESTIONS:
            t = time.perf_counter()
            hits = memory.search(question, filters={"user_id": user}, top_k=3)["results"]
            ms = (time.perf_counter() - t) * 1000
            print(f"\n[{user}] {question}   ({ms:.1f} ms)")
            for hit in hits:
                print(f"  {hit['score']:.3f}  {hit['memory']}")
        memory.close()


def demo(n: int = typer.Option(2000, help="How many corpus sentences to index.")) -> None:
    """Embed a corpus with the real model and print nearest neighbours for a few questions."""
    run_demo(n)
