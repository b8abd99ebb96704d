"""The reranker that works out of the box: Mem0's ``llm`` reranker through any OpenAI-compatible
chat endpoint, bounded in time and cost, and never the reason a search fails.

``Memory(reranker={"provider": "llm", "config": {...}})`` (Mem0's keys: ``model``, ``api_key``,
``provider`` — the LLM's —, ``temperature``, ``max_tokens``, ``scoring_prompt``, ``max_workers``,
``llm`` — a nested ``{"provider", "config"}`` for the endpoint —, plus the base-URL keys of
``llm.PROVIDERS`` and ``timeout``), or ``rerank=True`` with ``HIVEMEM_LLM_URL`` set and no
reranker given.

Each candidate is scored from 0.0 to 1.0 by one short chat request (Mem0's per-document scoring;
a ``scoring_prompt`` with ``{query}`` and ``{document}`` replaces the default one), and the
candidates are returned best first, ties in their fused order, each with its ``rerank_score``.
Bounds: the candidates are the search's (``4 × top_k``, at least 20, at most
``MAX_RERANK_CANDIDATES``); a document is cut to ``MAX_DOCUMENT_CHARS`` in the prompt; at most
``max_workers`` requests are in flight; the whole rerank has one deadline (``timeout``). When the
deadline passes or any request fails or answers without a score, the search returns its fused
order and a ``RerankWarning`` says why: a reranker that is down degrades a search, it does not break it.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from hivemem.memory.llm import PROVIDERS, ChatClient, Retry, client_args, number

log = logging.getLogger(__name__)

MAX_RERANK_CANDIDATES = 200  # requests one search may send
MAX_DOCUMENT_CHARS = 2_000  # of a memory's text, in its scoring prompt
MAX_WORKERS = 16
_SLACK_S = 0.05  # a request that failed this close to the deadline is reported as the deadline

DEFAULT_PROMPT = """Score how relevant the document is to the query, from 0.0 to 1.0:
1.0 answers the query directly, 0.7 is useful, 0.4 is related, 0.0 has nothing to do with it.

Query: "{query}"
Document: "{document}"

Answer with the number only."""

_SCORE = re.compile(r"(?<![\d.])(1(?:\.0+)?|0(?:\.\d+)?|\.\d+)(?![\d.])")
# Mem0's keys for this reranker (``top_k`` is the search's own here); the endpoint's keys join them
_KEYS = {"model", "api_key", "provider", "temperature", "max_tokens", "scoring_prompt", "max_workers"}
_KEYS |= {"llm", "top_k", "timeout"} | {key for key, _ in PROVIDERS.values()}


class RerankWarning(UserWarning):
    """The LLM reranker could not score the candidates: the search kept its fused order."""


def parse_score(answer: str) -> float:
    """The first number from 0 to 1 in ``answer``; ``ValueError`` when there is none."""
    found = _SCORE.search(answer)
    if found is None:
        raise ValueError(f"no score from 0 to 1 in the answer {answer[:80]!r}")
    return float(found.group(1))


class LLMReranker:
    """A ``hivemem.Reranker`` that asks a chat endpoint to score each candidate (see the module)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        scoring_prompt: str | None = None,
        max_workers: int = 4,
        timeout: float = 10.0,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 100,
    ) -> None:
        prompt = DEFAULT_PROMPT if scoring_prompt is None else scoring_prompt
        if not isinstance(prompt, str) or "{query}" not in prompt or "{document}" not in prompt:
            raise ValueError("scoring_prompt must be a string holding {query} and {document}")
        try:
            prompt.format(query="", document="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"scoring_prompt has a placeholder other than {{query}}/{{document}}: {exc}"
            ) from None
        if (
            isinstance(max_workers, bool)
            or not isinstance(max_workers, int)
            or not 1 <= max_workers <= MAX_WORKERS
        ):
            raise ValueError(f"max_workers must be an integer in [1, {MAX_WORKERS}], got {max_workers!r}")
        self.deadline = number(timeout, "timeout", 0.001, 600)
        self.prompt = prompt
        self.max_workers = max_workers
        self.client = ChatClient(
            url,
            model,
            api_key=api_key,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=self.deadline,
            json_mode=False,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> LLMReranker | None:
        """From the ``config`` of Mem0's ``{"provider": "llm", "config": …}``; None (and no
        config): from ``HIVEMEM_LLM_URL``, or None when that is unset too."""
        if config is None:
            args = client_args(None)
            return None if args is None else cls(args[0], args[1], api_key=args[2].get("api_key"))
        if not isinstance(config, dict):
            raise TypeError(f"reranker config must be a dict, got {type(config).__name__}")
        unknown = set(config) - _KEYS
        if unknown:
            raise ValueError(f"unknown llm reranker config keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        own = {
            k: config[k] for k in ("scoring_prompt", "max_workers", "timeout") if config.get(k) is not None
        }
        nested = config.get("llm")
        if nested is not None and not isinstance(nested, dict):
            raise TypeError(f"reranker config llm must be a dict, got {type(nested).__name__}")
        endpoint = dict(nested or {"provider": config.get("provider", "openai")})
        passed_on = {"model", "api_key"} | {key for key, _ in PROVIDERS.values()}
        options = {k: v for k, v in config.items() if k in passed_on and v is not None}
        options.update(dict(endpoint.get("config") or {}))  # the nested endpoint's own keys win
        options.setdefault("temperature", config.get("temperature", 0.0))
        options.setdefault("max_tokens", config.get("max_tokens", 100))
        args = client_args({"provider": endpoint.get("provider", "openai"), "config": options})
        assert args is not None  # a config dict always names an endpoint (or the provider's default)
        url, model, kwargs = args
        kwargs = {k: v for k, v in kwargs.items() if k in ("api_key", "temperature", "max_tokens")}
        return cls(url, model, **own, **kwargs)

    def rerank(self, query: str, memories: list[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
        """``memories`` best first by the LLM's scores, or as given (with a ``RerankWarning``)."""
        candidates = memories[:MAX_RERANK_CANDIDATES]
        try:
            scores = self._scores(query, candidates)
        except Exception as exc:  # an unreachable, slow or confused LLM must not fail the search
            why = (
                f"the LLM reranker at {self.client.url} gave no scores ({exc}); results keep the fused order"
            )
            log.warning(why)
            warnings.warn(why, RerankWarning, stacklevel=4)
            return memories[:top_k]
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])  # stable: ties keep fused order
        return [{**candidates[i], "rerank_score": scores[i]} for i in order[:top_k]]

    def _scores(self, query: str, candidates: list[dict[str, Any]]) -> list[float]:
        ends = time.monotonic() + self.deadline
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, max(1, len(candidates))))
        try:
            futures = [pool.submit(self._score, query, str(c.get("memory", "")), ends) for c in candidates]
            done, pending = wait(futures, timeout=self.deadline, return_when=FIRST_EXCEPTION)
            if pending:
                for f in done:
                    error = f.exception()
                    if error is not None:
                        raise error
                raise TimeoutError(
                    f"its {self.deadline:g} s deadline passed "
                    f"with {len(pending)} of {len(futures)} scores missing"
                )
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _score(self, query: str, document: str, ends: float) -> float:
        left = ends - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"its {self.deadline:g} s deadline passed before this candidate's turn")
        prompt = self.prompt.format(query=query, document=document[:MAX_DOCUMENT_CHARS])
        body = self.client.body([{"role": "user", "content": prompt}])
        try:
            answer = self.client.post(body, timeout=left)
        except Retry:
            if time.monotonic() >= ends - _SLACK_S:  # it waited out the rerank's deadline: say so
                raise TimeoutError(f"its {self.deadline:g} s deadline passed") from None
            raise
        return parse_score(answer)

    def close(self) -> None:
        self.client.close()
