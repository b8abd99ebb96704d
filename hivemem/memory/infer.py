"""``infer=True``: an LLM turns conversations into facts before they are stored.

Any OpenAI-compatible chat-completions endpoint works (Ollama, vLLM, llama.cpp's server, LM Studio,
OpenAI itself); it is configured in Mem0's shape, ``{"provider": "openai", "config": {"model",
"openai_base_url", "api_key", "temperature", "max_tokens"}}``, or by ``HIVEMEM_LLM_URL`` (+
``HIVEMEM_LLM_MODEL``, ``HIVEMEM_LLM_API_KEY``).

Semantics, after Mem0 2.2's additive extraction (mem0/memory/main.py), written anew here:

* For each conversation, the scope's most relevant existing memories (top 10 by the conversation's
  vector) are shown to the LLM, numbered 0…n-1 rather than by id so that it cannot invent ids, with
  the instruction to extract only what the NEW messages add. The answer is JSON,
  ``{"memory": [{"text": …, "attributed_to": "user" | "assistant"}, …]}``; the older Mem0 shape
  ``{"facts": ["…"]}`` (what a Mem0-1.x ``custom_fact_extraction_prompt`` asks for) is accepted too.
* Every extracted fact is stored as a new memory (event ``ADD``) in the conversation's scope, with
  its metadata. A fact whose text is already stored in the scope is not stored again: it comes back
  with the existing id and event ``NONE`` (Mem0 drops such facts silently). There is no UPDATE or
  DELETE decision: Mem0 2.x removed it as well (ADD-only, the LLM skips what is known).
* ``custom_instructions`` (Mem0 2.x's config key, or ``prompt=`` per call) are appended to the
  request; ``custom_fact_extraction_prompt`` (Mem0 1.x's key) replaces the whole system prompt.
* ``add_batch(items, infer=True)`` asks the LLM about all conversations at once (``concurrency``
  requests in flight), then embeds every fact in ONE call and stores them in ONE transaction.
* Failures: an unreachable LLM, an HTTP error, or an answer that is not the JSON above is tried
  once more; if the second attempt fails too, ``LLMError`` names the endpoint and the cause, and
  nothing of the call is written. 4xx answers other than 429 (wrong key, unknown model) fail at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hivemem.errors import LLMError
from hivemem.memory.llm import ChatClient, Final, Retry, client_args
from hivemem.memory.records import NewMemory, prepare

MAX_CONVERSATION_CHARS = 200_000  # the messages of one conversation, sent to the LLM
MAX_FACTS = 200  # facts from one conversation
MAX_FACT_CHARS = 4_000  # one fact
CONTEXT_MEMORIES = 10  # existing memories shown to the LLM, as Mem0
MAX_CONCURRENCY = 64

SYSTEM_PROMPT = """You extract long-term memories from a conversation for a personal memory store.

Read the NEW MESSAGES and write down every piece of information worth remembering later: facts about
the people involved, their preferences, plans, relationships, health, work, possessions and events,
and concrete recommendations or decisions made by the assistant. Skip greetings, filler, and
anything that only repeats what the assistant was told.

Rules:
- Each memory is one self-contained sentence that makes sense without the conversation (name the
  person; "User" when no name is known; keep the context that makes the fact useful).
- Resolve relative dates ("yesterday", "next week") against TODAY.
- EXISTING MEMORIES are already stored. Use them only to avoid repeating what is known; never
  extract from them. A new detail about a known subject is a new memory.
- Extract only from the NEW MESSAGES. Do not guess or add facts that are not stated.
- Write each memory in the language of the messages.

Answer with JSON only, no other text:
{"memory": [{"text": "<memory>", "attributed_to": "user" or "assistant"}, ...]}
If there is nothing worth remembering, answer {"memory": []}."""


@dataclass(frozen=True)
class Fact:
    text: str
    attributed_to: str = "user"


class FactExtractor(ChatClient):
    """Asks an OpenAI-compatible chat endpoint (``llm.ChatClient``) for the facts in conversations
    (thread-safe). ``custom_instructions`` are added to every request; ``custom_prompt`` replaces the
    system prompt (it must ask for one of the JSON shapes of the module docstring)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        custom_instructions: str | None = None,
        custom_prompt: str | None = None,
        concurrency: int = 8,
        **options: Any,
    ) -> None:
        for name, text in (("custom_instructions", custom_instructions), ("custom_prompt", custom_prompt)):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ValueError(f"{name} must be a non-empty string")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
            raise ValueError(f"concurrency must be an integer in [1, {MAX_CONCURRENCY}], got {concurrency!r}")
        super().__init__(url, model, **options)
        self.custom_instructions = custom_instructions
        self.system_prompt = custom_prompt or SYSTEM_PROMPT
        self.concurrency = concurrency

    @classmethod
    def from_config(
        cls,
        llm: dict[str, Any] | None = None,
        *,
        custom_instructions: str | None = None,
        custom_fact_extraction_prompt: str | None = None,
    ) -> FactExtractor | None:
        """From Mem0's ``"llm"`` config dict, else from ``HIVEMEM_LLM_URL``; ``None`` if neither."""
        prompts: dict[str, Any] = {
            "custom_instructions": custom_instructions,
            "custom_prompt": custom_fact_extraction_prompt,
        }
        args = client_args(llm)
        if args is None:
            return None
        url, model, options = args
        return cls(url, model, **options, **prompts)

    # -- one conversation ----------------------------------------------------------------------

    def request(
        self, messages: Sequence[tuple[str, str]], existing: Sequence[str], instructions: str | None = None
    ) -> list[dict[str, str]]:
        """The chat messages sent for one conversation (``messages``: ``(role, content)`` pairs)."""
        lines = "\n".join(f"{role}: {content}" for role, content in messages)
        known = json.dumps([{"id": str(i), "text": t} for i, t in enumerate(existing)], ensure_ascii=False)
        parts = [
            f"## TODAY\n{datetime.now(UTC).date().isoformat()}",
            f"## EXISTING MEMORIES\n{known}",
            f"## NEW MESSAGES\n{lines}",
        ]
        for extra in (self.custom_instructions, instructions):
            if extra:
                parts.append(f"## CUSTOM INSTRUCTIONS\n{extra}")
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    def extract(
        self,
        messages: Sequence[tuple[str, str]],
        existing: Sequence[str] = (),
        instructions: str | None = None,
    ) -> list[Fact]:
        """The facts in one conversation; ``LLMError`` after a failed retry."""
        size = sum(len(c) for _, c in messages)
        if size > MAX_CONVERSATION_CHARS:
            raise ValueError(
                f"the conversation has {size} characters; infer=True takes at most {MAX_CONVERSATION_CHARS}"
            )
        body = self.body(self.request(messages, existing, instructions))
        problem = ""
        for _attempt in (1, 2):
            try:
                return parse_facts(self.post(body))
            except Final as exc:
                raise LLMError(
                    f"the LLM at {self.url} (model {self.model!r}) refused the request: {exc}"
                ) from None
            except (Retry, ValueError) as exc:
                problem = str(exc)
        raise LLMError(
            f"the LLM at {self.url} (model {self.model!r}) failed twice: {problem}; nothing was written"
        )


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_facts(content: str) -> list[Fact]:
    """The facts in an answer (see the module docstring); ``ValueError`` naming what is wrong."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")  # prose around one JSON object
        try:
            data = json.loads(text[start : end + 1]) if 0 <= start < end else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise ValueError(f"the answer is not JSON: {content[:200]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("memory", data.get("facts")), list):
        raise ValueError(f'the answer is not {{"memory": [...]}} or {{"facts": [...]}}: {content[:200]!r}')
    items = data["memory"] if isinstance(data.get("memory"), list) else data["facts"]
    if len(items) > MAX_FACTS:
        raise ValueError(f"the answer holds {len(items)} facts (limit {MAX_FACTS})")
    facts: list[Fact] = []
    for item in items:
        said: Any = item.get("text") if isinstance(item, dict) else item
        who: Any = item.get("attributed_to") if isinstance(item, dict) else None
        if not isinstance(said, str):
            raise ValueError(f"a fact is not text: {item!r:.200}")
        text = said.strip()
        if not text:
            continue
        if len(text) > MAX_FACT_CHARS:
            raise ValueError(f"a fact has {len(text)} characters (limit {MAX_FACT_CHARS})")
        facts.append(Fact(text, who if who in ("user", "assistant") else "user"))
    return list({f.text: f for f in facts}.values())  # the same fact twice: once


def extract_all(
    extractor: FactExtractor, jobs: Sequence[tuple[Sequence[tuple[str, str]], Sequence[str], str | None]]
) -> list[list[Fact]]:
    """``extract`` for many conversations, ``extractor.concurrency`` at a time; the first error wins."""
    if len(jobs) <= 1:
        return [extractor.extract(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(extractor.concurrency, len(jobs))) as pool:
        futures = [pool.submit(extractor.extract, *job) for job in jobs]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()


def _turn(m: NewMemory) -> tuple[str, str]:
    return (f"{m.role} ({m.actor_id})" if m.actor_id else str(m.role), m.memory)


def infer_memories(memory: Any, items: list[dict[str, Any]], wheres: list[str]) -> list[list[NewMemory]]:
    """The memories to store for ``add`` calls with ``infer=True`` (``items``: their arguments).

    Everything is validated first; then ONE embed call finds each conversation's context in its
    scope, and the LLM is asked about all conversations concurrently. ``memory``: the ``Memory``.
    """
    extractor = memory.llm
    convs = []
    for item, where in zip(items, wheres, strict=True):
        item = dict(item)
        prompt = item.pop("prompt", None)
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise ValueError(f"{where}prompt must be a non-empty string")
        if item.get("id") is not None:
            raise ValueError(
                f"{where}an id names a stored message; infer=True stores the LLM's facts instead"
            )
        turns = prepare(**item, where=where)
        size = sum(len(t.memory) for t in turns)
        if size > MAX_CONVERSATION_CHARS:
            raise ValueError(
                f"{where}the messages have {size} characters (infer=True: at most {MAX_CONVERSATION_CHARS})"
            )
        convs.append((item, turns, prompt, where))
    asked = [c for c in convs if c[1]]
    vectors = memory.embedder.embed(["\n".join(t.memory for t in turns)[:2000] for _, turns, _, _ in asked])
    jobs = []
    for (item, turns, prompt, _), vector in zip(asked, vectors, strict=True):
        where_ = memory._where(None, item.get("user_id"), item.get("agent_id"), item.get("run_id"))
        known = [r["memory"] for r in memory._storage.search(vector, where_, CONTEXT_MEMORIES, None)]
        jobs.append(([_turn(t) for t in turns], known, prompt))
    found = iter(extract_all(extractor, jobs))
    out: list[list[NewMemory]] = []
    for item, turns, _, where in convs:
        facts = next(found) if turns else []
        scope = {k: item[k] for k in ("user_id", "agent_id", "run_id") if item.get(k) is not None}
        out.append(
            [
                dataclasses.replace(m, role=f.attributed_to)
                for f in facts
                for m in prepare(
                    f.text,
                    metadata=item.get("metadata"),
                    expiration_date=item.get("expiration_date"),
                    timestamp=item.get("timestamp"),
                    where=where,
                    **scope,
                )
            ]
        )
    return out
