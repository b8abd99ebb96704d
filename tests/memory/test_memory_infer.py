"""``infer=True`` against a scripted OpenAI-compatible server (a real HTTP server on loopback whose
answers the tests write; see scripted_llm.py), with the real model and a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from scripted_llm import existing_memories, new_messages, one_fact_per_user_line, scripted_llm

from hivemem import AsyncMemory, Embedder, Memory
from hivemem.memory.infer import FactExtractor, LLMError, parse_facts

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "I am allergic to peanuts", "name": "al"},
    {"role": "assistant", "content": "Noted, no peanuts."},
    {"role": "user", "content": "I moved to Lisbon last week"},
]


class CountingEmbedder:
    """The real model, counting the calls made to it."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.calls: list[int] = []
        self.model_id, self.dim = inner.model_id, inner.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.embed(texts)

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


@pytest.fixture
def counting(embedder: Embedder) -> CountingEmbedder:
    return CountingEmbedder(embedder)


@pytest.fixture
def llm() -> Iterator:
    with scripted_llm() as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scripted_llm_facts_are_added_with_the_scope_as_context(
    tmp_path: Path, embedder: Embedder, llm
) -> None:
    m = Memory(tmp_path / "m.sqlite", embedder=embedder, llm=llm.config(api_key="sk-test", temperature=0.3))
    m.add("Alice plays the cello", user_id="alice")  # already known, stored raw
    out = m.add(CHAT, user_id="alice", metadata={"source": "chat"}, infer=True)["results"]
    assert [(r["memory"], r["event"], r["role"]) for r in out] == [
        ("User said: I am allergic to peanuts", "ADD", "user"),
        ("User said: I moved to Lisbon last week", "ADD", "user"),
    ]
    rec = m.get(out[0]["id"])
    assert rec["user_id"] == "alice" and rec["metadata"] == {"source": "chat"}
    assert [h["event"] for h in m.history(out[0]["id"])] == ["ADD"]
    (body,) = llm.requests
    assert body["model"] == "scripted" and body["temperature"] == 0.3
    assert body["response_format"] == {"type": "json_object"}
    assert llm.headers[0]["Authorization"] == "Bearer sk-test"
    assert new_messages(body) == [
        "user (al): I am allergic to peanuts",
        "assistant: Noted, no peanuts.",
        "user: I moved to Lisbon last week",
    ]  # the system turn is not part of the conversation
    assert existing_memories(body) == ["Alice plays the cello"]  # the scope's memories as context
    # the same facts again: nothing new is stored, the existing ids come back with NONE
    again = m.add(CHAT[1:2], user_id="alice", infer=True)["results"]
    assert again == [{**out[0], "event": "NONE"}]
    assert set(existing_memories(llm.requests[1])) >= {"User said: I am allergic to peanuts"}
    assert m.search("food allergy", user_id="alice", top_k=1)["results"][0]["id"] == out[0]["id"]
    m.close()


def test_scripted_llm_batch_one_embed_call_and_one_transaction(tmp_path: Path, counting, llm) -> None:
    llm.delay = 0.2  # so that requests overlap
    m = Memory(tmp_path / "m.sqlite", embedder=counting, llm=llm.config())
    items = [{"messages": f"Fact number {i} about user {i}", "user_id": f"u{i}"} for i in range(12)]
    items.append({"messages": "Stored as it is", "user_id": "raw", "infer": False})
    counting.calls.clear()
    commits = m._storage.commits
    out = m.add_batch(items, infer=True)["results"]
    assert [r["memory"] for r in out] == [f"User said: Fact number {i} about user {i}" for i in range(12)] + [
        "Stored as it is"
    ]
    assert len(llm.requests) == 12 and llm.max_in_flight > 1  # concurrent requests
    assert counting.calls == [12, 13]  # one call for the context, ONE for all facts
    assert m._storage.commits == commits + 1  # ONE transaction
    assert m.get_all(user_id="u3")["results"][0]["memory"] == "User said: Fact number 3 about user 3"
    m.close()


def test_scripted_llm_nothing_to_remember_and_custom_prompts(tmp_path: Path, embedder: Embedder) -> None:
    def old_style(body: dict) -> tuple[int, str]:  # a Mem0-1.x custom prompt's {"facts": [...]}
        return 200, json.dumps({"facts": ["Likes tea", "Likes tea", ""]}) if new_messages(body) else (200, "")

    with scripted_llm(old_style) as llm:
        config = {
            "path": str(tmp_path / "m.sqlite"),
            "llm": llm.config(),
            "custom_fact_extraction_prompt": 'Extract drinks only. Answer {"facts": [...]}.',
            "custom_instructions": "Ignore food.",
        }
        m = Memory.from_config(config)
        m._embedder = embedder
        m._storage.bind_model(embedder.model_id, embedder.dim)
        out = m.add("I drink tea every day", user_id="u", infer=True, prompt="Be terse.")["results"]
        assert [r["memory"] for r in out] == ["Likes tea"]
        body = llm.requests[0]
        assert body["messages"][0]["content"].startswith("Extract drinks only")
        assert "## CUSTOM INSTRUCTIONS\nIgnore food." in body["messages"][1]["content"]
        assert "## CUSTOM INSTRUCTIONS\nBe terse." in body["messages"][1]["content"]
        llm.reply = lambda body: (200, '{"memory": []}')
        assert m.add("hello!", user_id="u", infer=True) == {"results": []}
        m.close()


@pytest.mark.parametrize(
    ("script", "calls", "error"),
    [
        ([(200, "Sure! Here are the facts.")], 2, "failed twice: the answer is not JSON"),
        ([(200, '{"memories": []}')], 2, r'not \{"memory": \[\.\.\.\]\}'),
        ([(500, "overloaded")], 2, "failed twice: HTTP 500"),
        ([(401, "bad key")], 1, "refused the request: HTTP 401"),
        ([(200, json.dumps({"memory": [{"text": "x" * 5000}]}))], 2, "limit 4000"),
    ],
)
def test_scripted_llm_failures_raise_and_write_nothing(
    tmp_path: Path, embedder: Embedder, script: list, calls: int, error: str
) -> None:
    with scripted_llm(lambda body: script[0]) as llm:
        m = Memory(tmp_path / "m.sqlite", embedder=embedder, llm=llm.config())
        items = [{"messages": "fine text", "user_id": "u"}, {"messages": "other text", "user_id": "v"}]
        with pytest.raises(LLMError, match=error):
            m.add_batch([items[0]], infer=True)
        assert len(llm.requests) == calls and m.count() == 0
        m.close()


def test_scripted_llm_one_bad_answer_then_a_good_one_succeeds(tmp_path: Path, embedder: Embedder) -> None:
    answers = iter([(200, "```json\n{not json"), None, (503, "busy")])  # None: a good answer

    def flaky(body: dict) -> tuple[int, str]:
        return next(answers, None) or one_fact_per_user_line(body)

    with scripted_llm(flaky) as llm:
        m = Memory(tmp_path / "m.sqlite", embedder=embedder, llm=llm.config())
        assert m.add("I like jazz", user_id="u", infer=True)["results"][0]["event"] == "ADD"  # retried once
        assert (
            m.add("I like blues", user_id="u", infer=True)["results"][0]["event"] == "ADD"
        )  # 503, then fine
        assert len(llm.requests) == 4
        # in a batch, one conversation that keeps failing fails the whole batch: nothing is written
        llm.reply = lambda body: (
            (200, "nope") if "poison" in str(new_messages(body)) else one_fact_per_user_line(body)
        )
        items = [{"messages": f"text {i}", "user_id": "b"} for i in range(5)] + [
            {"messages": "poison", "user_id": "b"}
        ]
        with pytest.raises(LLMError):
            m.add_batch(items, infer=True)
        assert m.get_all(user_id="b")["results"] == []
        m.close()


def test_unreachable_llm_is_a_clear_error(tmp_path: Path, embedder: Embedder) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    m = Memory(
        tmp_path / "m.sqlite",
        embedder=embedder,
        llm={"provider": "vllm", "config": {"vllm_base_url": url, "model": "m"}},
    )
    with pytest.raises(LLMError, match=f"LLM at {url}.*failed twice: cannot reach it"):
        m.add("hello there", user_id="u", infer=True)
    assert m.count() == 0
    m.close()


def test_llm_configuration(tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch, llm) -> None:
    monkeypatch.delenv("HIVEMEM_LLM_URL", raising=False)
    m = Memory(tmp_path / "m.sqlite", embedder=embedder)
    with pytest.raises(ValueError, match="no LLM is configured"):
        m.add("x", user_id="u", infer=True)
    with pytest.raises(ValueError, match="prompt is for infer=True"):
        m.add("x", user_id="u", prompt="p")
    with pytest.raises(TypeError, match=r"items\[0\]: infer must be True or False"):
        m.add_batch([{"messages": "x", "user_id": "u", "infer": "yes"}])
    m.close()
    ollama = FactExtractor.from_config({"provider": "ollama", "config": {"model": "qwen3"}})
    assert ollama.url == "http://localhost:11434/v1"  # Ollama's OpenAI-compatible API
    monkeypatch.setenv("HIVEMEM_LLM_URL", llm.url)
    monkeypatch.setenv("HIVEMEM_LLM_MODEL", "from-env")
    with Memory(tmp_path / "m.sqlite", embedder=embedder) as m:
        assert m.add("I sail on weekends", user_id="u", infer=True)["results"][0]["event"] == "ADD"
        with pytest.raises(ValueError, match=r"items\[0\]: an id names a stored message"):
            m.add_batch([{"messages": "x", "user_id": "u", "id": "a"}], infer=True)
    assert llm.requests[-1]["model"] == "from-env"
    with pytest.raises(ValueError, match="provider 'anthropic' is not supported"):
        FactExtractor.from_config({"provider": "anthropic", "config": {"model": "c"}})
    with pytest.raises(ValueError, match="unknown llm config keys \\['temprature'\\]"):
        FactExtractor.from_config({"config": {"model": "c", "temprature": 0.2}})
    with pytest.raises(ValueError, match="temperature must be a number in \\[0, 2\\]"):
        FactExtractor.from_config({"config": {"model": "c", "temperature": 9}})
    with pytest.raises(ValueError, match="needs a model"):
        FactExtractor("http://127.0.0.1:1/v1", "")


def test_scripted_llm_async_batch(tmp_path: Path, embedder: Embedder, llm) -> None:
    async def run() -> list:
        async with AsyncMemory(tmp_path / "m.sqlite", embedder=embedder, llm=llm.config()) as m:
            return (await m.add_batch([{"messages": "I run marathons", "user_id": "u"}], infer=True))[
                "results"
            ]

    assert [r["memory"] for r in asyncio.run(run())] == ["User said: I run marathons"]


def test_parse_facts_shapes() -> None:
    assert [f.text for f in parse_facts('```json\n{"memory": [{"text": " a "}, {"text": "b"}]}\n```')] == [
        "a",
        "b",
    ]
    assert parse_facts('Here you go: {"facts": ["x"]} hope it helps')[0].text == "x"
    assert (
        parse_facts('{"memory": [{"text": "y", "attributed_to": "assistant"}]}')[0].attributed_to
        == "assistant"
    )
    for bad, why in [("[]", "not"), ('{"memory": [1]}', "not text"), ("{", "not JSON")]:
        with pytest.raises(ValueError, match=why):
            parse_facts(bad)
    with pytest.raises(ValueError, match="limit 200"):
        parse_facts(json.dumps({"facts": [f"f{i}" for i in range(201)]}))
