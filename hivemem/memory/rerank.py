"""The reranker of ``Memory.search(..., rerank=True)``: the interface, and which one a store uses.

A reranker (a cross-encoder, an LLM judge, a rule) sees the query and the fused candidates and
returns them in its own order, as Mem0's rerankers do (``rerank(query, memories, top_k)``).
hivemem downloads no model: the one built in asks an LLM (``llm_rerank``, Mem0's ``llm``
provider); pass any object with this method for a cross-encoder you run yourself
(docs/memory.md#rerankers).

    >>> class Shortest:                       # any object with this method is a Reranker
    ...     def rerank(self, query, memories, top_k):
    ...         return sorted(memories, key=lambda m: len(m["memory"]))[:top_k]
    >>> isinstance(Shortest(), Reranker)
    True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

RERANK_DEPTH = 4  # the reranker sees top_k × this many candidates (at least 20)


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, memories: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
        """``memories`` (search results, best first) reordered; at most ``top_k`` of them."""
        ...


def resolve(reranker: Reranker | dict[str, Any] | None) -> tuple[Reranker | None, bool]:
    """``(reranker, built here)`` from ``Memory(reranker=...)``: an object with ``rerank``, or
    Mem0's ``{"provider": "llm", "config": {...}}``; None: none until a search asks for one."""
    if reranker is None or isinstance(reranker, Reranker):
        return reranker, False
    if not isinstance(reranker, dict):
        raise TypeError(
            f"reranker must have a rerank(query, memories, top_k) method or be Mem0's config dict, "
            f"got {type(reranker).__name__}"
        )
    provider = reranker.get("provider", "llm")
    if provider != "llm":
        raise ValueError(
            f"reranker provider {provider!r} is not built in: use 'llm' (any OpenAI-compatible endpoint) "
            "or pass an object with rerank(query, memories, top_k) (a cross-encoder you run)"
        )
    from hivemem.memory.llm_rerank import LLMReranker

    return LLMReranker.from_config(dict(reranker.get("config") or {})), True


def apply(
    reranker: Reranker, query: str, hits: list[dict[str, Any]], top_k: int, explain: bool = False
) -> list[dict[str, Any]]:
    """Run ``reranker`` and check what it returns: results only from ``hits``, each at most once.

    ``explain``: ``hits`` carry ``score_details``; each result gets its own back (whatever the
    reranker did to that key) with the reranker's ``rerank_score`` (None when it gave none, e.g.
    the LLM reranker's fallback) and ``rank_before_rerank``."""
    before = {h["id"]: (rank, dict(h["score_details"])) for rank, h in enumerate(hits, 1)} if explain else {}
    out = reranker.rerank(query, [dict(h) for h in hits], top_k)
    if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
        raise TypeError(f"{type(reranker).__name__}.rerank must return a list of dicts, got {out!r:.200}")
    known = {h["id"] for h in hits}
    ids = [r.get("id") for r in out]
    if any(i not in known for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(
            f"{type(reranker).__name__}.rerank must return memories it was given, each at most once"
        )
    if explain:
        for r in out:
            rank, details = before[r["id"]]
            extra = {"rerank_score": r.get("rerank_score"), "rank_before_rerank": rank}
            r["score_details"] = {**details, **extra}
    return out[:top_k]
