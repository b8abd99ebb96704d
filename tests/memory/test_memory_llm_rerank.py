"""``search(..., rerank=True)`` with the built-in LLM reranker against a scripted OpenAI-compatible
server (a real HTTP server on loopback whose answers the tests write: scripted_llm.py), with the
real model and a real SQLite file. What is checked is hivemem's side: what it asks, how it orders,
its bounds, and that a failing LLM degrades a search instead of failing it."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_llm import scripted_llm

from hivemem import Embedder, Memory
from hivemem.memory.llm_rerank import LLMReranker, RerankWarning, parse_score

pytestmark = pytest.mark.fast

TEXTS = [f"Note {i}: the weekly report lists item {i} as done" for i in range(10)]
TEXTS += ["Bob is flying to Lisbon in May for a conference", "Bob's sister lives near Lisbon"]


def _document(body: dict[str, Any]) -> str:
    found = re.search(r'Document: "(.*)"', body["messages"][-1]["content"], re.DOTALL)
    return found.group(1) if found else ""


def lisbon_first(body: dict[str, Any]) -> tuple[int, str]:
    """The script: a document naming Lisbon scores 0.9 (the sister 0.8), anything else 0.1."""
    doc = _document(body)
    return 200, "0.8" if "sister" in doc else "0.9" if "Lisbon" in doc else "Score: 0.1"


@pytest.fixture
def store(tmp_path: Path, embedder: Embedder) -> Iterator[Memory]:
    m = Memory(tmp_path / "m.sqlite", embedder=embedder)
    m.add_batch([{"messages": t, "user_id": "bob"} for t in TEXTS])
    yield m
    m.close()


def _reranked(store: Memory, reranker: Any, query: str = "weekly report items", top_k: int = 5) -> list[Any]:
    m = Memory(store.path, embedder=store.embedder, reranker=reranker)
    try:
        return m.search(query, user_id="bob", top_k=top_k, rerank=True)["results"]
    finally:
        m.close()


def test_scripted_llm_scores_every_candidate_and_its_order_wins(store: Memory) -> None:
    with scripted_llm(lisbon_first) as llm:
        hits = _reranked(store, {"provider": "llm", "config": llm.config()["config"]})
        # fused, the report notes lead; the LLM's scores put the Lisbon memories first
        assert [h["memory"] for h in hits[:2]] == [TEXTS[10], TEXTS[11]]
        assert [h["rerank_score"] for h in hits] == [0.9, 0.8, 0.1, 0.1, 0.1]
        assert (
            len(llm.requests) == 12
        )  # every memory is a candidate (up to max(4 × top_k, 20)): one request each
        body = llm.requests[0]
        assert body["model"] == "scripted" and body["temperature"] == 0.0 and body["max_tokens"] == 100
        assert "response_format" not in body  # the answer is a number, not JSON
        assert 'Query: "weekly report items"' in body["messages"][0]["content"]
    fused = store.search("weekly report items", user_id="bob", top_k=20)["results"]
    assert fused[0]["memory"].startswith("Note"), "without the reranker the notes lead"
    ties = [h["id"] for h in hits[2:]]
    assert ties == [h["id"] for h in fused if h["id"] in ties], "equal scores keep the fused order"


def _fused_with_warning(store: Memory, reranker: Any) -> None:
    fused = [h["id"] for h in store.search("weekly report items", user_id="bob", top_k=5)["results"]]
    with pytest.warns(RerankWarning) as caught:
        hits = _reranked(store, reranker)
    assert [h["id"] for h in hits] == fused and all("rerank_score" not in h for h in hits)
    return str(caught[0].message)


def test_scripted_llm_that_fails_leaves_the_fused_order_with_a_warning(store: Memory) -> None:
    with scripted_llm(lambda body: (500, "overloaded")) as llm:
        why = _fused_with_warning(store, LLMReranker(llm.url, "scripted"))
    assert "HTTP 500" in why and llm.url in why


def test_scripted_llm_answer_without_a_score_leaves_the_fused_order(store: Memory) -> None:
    with scripted_llm(lambda body: (200, "It is quite relevant, I think.")) as llm:
        why = _fused_with_warning(store, LLMReranker(llm.url, "scripted"))
    assert "no score" in why


def test_scripted_llm_slower_than_the_deadline_leaves_the_fused_order(store: Memory) -> None:
    with scripted_llm(lisbon_first, delay=1.0) as llm:
        why = _fused_with_warning(store, LLMReranker(llm.url, "scripted", timeout=0.3, max_workers=2))
    assert "0.3 s deadline passed" in why


def test_scripted_llm_sees_at_most_max_workers_requests_at_once(store: Memory) -> None:
    with scripted_llm(lisbon_first, delay=0.05) as llm:
        hits = _reranked(store, LLMReranker(llm.url, "scripted", max_workers=3))
        assert llm.max_in_flight <= 3 and len(llm.requests) == 12
    assert hits[0]["memory"] == TEXTS[10]


def test_scripted_llm_gets_the_custom_scoring_prompt_with_the_document_cut(store: Memory) -> None:
    prompt = "Q={query}\nD={document}\nScore 0-1."
    with scripted_llm(lambda body: (200, "1")) as llm:
        _reranked(store, {"provider": "llm", "config": {**llm.config()["config"], "scoring_prompt": prompt}})
        sent = llm.requests[0]["messages"][0]["content"]
    assert sent.startswith("Q=weekly report items\nD=") and sent.endswith("\nScore 0-1.")


def test_scripted_llm_reranker_from_the_environment(
    store: Memory, monkeypatch: pytest.MonkeyPatch, embedder: Embedder
) -> None:
    with pytest.raises(ValueError, match="HIVEMEM_LLM_URL"):
        store.search("x", user_id="bob", rerank=True)
    with scripted_llm(lisbon_first) as llm:
        monkeypatch.setenv("HIVEMEM_LLM_URL", llm.url)
        m = Memory(store.path, embedder=embedder)
        try:
            hits = m.search("weekly report items", user_id="bob", top_k=3, rerank=True)["results"]
        finally:
            m.close()
    assert hits[0]["memory"] == TEXTS[10]


def test_llm_reranker_from_mem0_s_config(tmp_path: Path) -> None:
    """Mem0's shape: the reranker's own keys outside, the endpoint in a nested ``llm`` config."""
    nested = {"provider": "ollama", "config": {"model": "qwen3", "ollama_base_url": "http://127.0.0.1:9"}}
    config = {"model": "outer", "max_workers": 2, "timeout": 3, "llm": nested, "top_k": 5}
    m = Memory.from_config(
        {"path": str(tmp_path / "c.sqlite"), "reranker": {"provider": "llm", "config": config}}
    )
    try:
        reranker = m._reranker
        assert isinstance(reranker, LLMReranker)
        assert (reranker.client.url, reranker.client.model) == ("http://127.0.0.1:9/v1", "qwen3")
        assert (reranker.max_workers, reranker.deadline, reranker.client.max_tokens) == (2, 3.0, 100)
    finally:
        m.close()
    assert m._reranker is None  # built from the config, so closed with the store


def test_reranker_config_is_checked_before_any_search(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not built in"):
        Memory(tmp_path / "a.sqlite", reranker={"provider": "cohere", "config": {}})
    with pytest.raises(ValueError, match="unknown llm reranker config keys"):
        Memory(tmp_path / "b.sqlite", reranker={"provider": "llm", "config": {"modle": "x"}})
    with pytest.raises(ValueError, match="scoring_prompt"):
        LLMReranker("http://127.0.0.1:9/v1", "m", scoring_prompt="no placeholders")
    with pytest.raises(ValueError, match="placeholder other than"):
        LLMReranker("http://127.0.0.1:9/v1", "m", scoring_prompt="{query} {document} {other}")
    with pytest.raises(ValueError, match="max_workers"):
        LLMReranker("http://127.0.0.1:9/v1", "m", max_workers=0)
    with pytest.raises(TypeError):
        Memory(tmp_path / "c.sqlite", reranker="llm")  # type: ignore[arg-type]


def test_parse_score_takes_the_first_number_from_0_to_1() -> None:
    assert parse_score("0.75") == 0.75 and parse_score("Score: 1.0") == 1.0 and parse_score(".5") == 0.5
    assert parse_score("Relevance 0 out of 1") == 0.0
    for bad in ("7", "1.5", "high", "12.0", ""):
        with pytest.raises(ValueError):
            parse_score(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here warns
        assert parse_score("0.3\n") == 0.3
