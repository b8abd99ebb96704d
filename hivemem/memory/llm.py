"""One OpenAI-compatible chat client for every part of the memory store that asks an LLM.

``infer=True`` (``infer.FactExtractor``) and the LLM reranker (``llm_rerank.LLMReranker``) both
speak the chat-completions API of any server (OpenAI, Ollama, vLLM, llama.cpp's server, LM Studio)
and both are configured in Mem0's shape, ``{"provider": "openai", "config": {"model",
"openai_base_url", "api_key", "temperature", "max_tokens", …}}``, or by ``HIVEMEM_LLM_URL`` (+
``HIVEMEM_LLM_MODEL``, ``HIVEMEM_LLM_API_KEY``). This module holds that client and that
resolution once: the checks of every option, the one HTTP call, and which failures are worth a
second attempt.
"""

from __future__ import annotations

import re
from typing import Any

from hivemem.infra.settings import Settings

MAX_ANSWER_CHARS = 1_000_000  # an answer longer than this is refused, not parsed

# provider -> (config key of its base URL, default URL); all speak OpenAI's chat-completions API
PROVIDERS = {
    "openai": ("openai_base_url", "https://api.openai.com/v1"),
    "ollama": ("ollama_base_url", "http://localhost:11434"),
    "vllm": ("vllm_base_url", "http://localhost:8000/v1"),
    "lmstudio": ("lmstudio_base_url", "http://localhost:1234/v1"),
}
OPTIONS = {"model", "api_key", "temperature", "max_tokens", "top_p", "timeout", "json_mode"}
IGNORED = {"top_k", "enable_vision", "vision_details", "http_client_proxies", "reasoning_effort"}


class Retry(Exception):
    """Worth one more attempt (unreachable, timeout, 429, 5xx)."""


class Final(Exception):
    """Another attempt would get the same answer (4xx)."""


def number(value: Any, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"llm config {name} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


class ChatClient:
    """An OpenAI-compatible chat endpoint (thread-safe). ``url``: the API base (``…/v1``;
    ``/chat/completions`` is appended). ``json_mode`` sends ``response_format: json_object``
    (OpenAI, vLLM, Ollama and llama.cpp's server support it; turn it off for servers that refuse it)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = 0.1,
        max_tokens: int = 2000,
        top_p: float | None = None,
        timeout: float = 120.0,
        json_mode: bool = True,
    ) -> None:
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+", url):
            raise ValueError(f"llm url must be an http(s) URL, got {url!r}")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("llm config needs a model name (any name for servers that serve one model)")
        self.url = url.rstrip("/")
        self.model = model
        self.temperature = number(temperature, "temperature", 0, 2)
        self.max_tokens = int(number(max_tokens, "max_tokens", 1, 1_000_000))
        self.top_p = None if top_p is None else number(top_p, "top_p", 0, 1)
        self.timeout = number(timeout, "timeout", 0.001, 3600)
        self.json_mode = bool(json_mode)
        import httpx  # here, not at the top: ``import hivemem.Memory`` should not pay for it

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(headers=headers, timeout=self.timeout)

    def body(self, messages: list[dict[str, str]], *, json_mode: bool | None = None) -> dict[str, Any]:
        """The request for ``messages`` with this client's sampling options."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.json_mode if json_mode is None else json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def post(self, body: dict[str, Any], timeout: float | None = None) -> str:
        """The answer's text; ``Retry``/``Final`` for a failure, ``ValueError`` for a malformed answer."""
        import httpx

        limit = self.timeout if timeout is None else min(self.timeout, timeout)
        try:
            resp = self._http.post(f"{self.url}/chat/completions", json=body, timeout=limit)
        except httpx.TimeoutException:
            raise Retry(f"no answer within {limit:g} s") from None
        except httpx.HTTPError as exc:
            raise Retry(f"cannot reach it ({type(exc).__name__}: {exc})") from None
        if resp.status_code >= 400:
            detail = resp.text[:300]
            if resp.status_code == 429 or resp.status_code >= 500:
                raise Retry(f"HTTP {resp.status_code}: {detail}")
            raise Final(f"HTTP {resp.status_code}: {detail}")
        if len(resp.content) > MAX_ANSWER_CHARS:
            raise ValueError(f"the answer has {len(resp.content)} bytes (limit {MAX_ANSWER_CHARS})")
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"not a chat-completions response: {resp.text[:200]!r}") from None
        if not isinstance(content, str):
            raise ValueError(f"the answer's content is {type(content).__name__}, not text")
        return content

    def close(self) -> None:
        self._http.close()


def client_args(llm: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]] | None:
    """``(url, model, options)`` for ``ChatClient`` from Mem0's ``"llm"`` config dict, else from
    ``HIVEMEM_LLM_URL``; ``None`` if neither names an endpoint."""
    env = Settings.from_env()
    if llm is None:
        if not env.llm_url:
            return None
        return env.llm_url, env.llm_model or "default", {"api_key": env.llm_api_key}
    if not isinstance(llm, dict):
        raise TypeError(f"llm config must be a dict, got {type(llm).__name__}")
    provider = llm.get("provider", "openai")
    if provider not in PROVIDERS:
        raise ValueError(
            f"llm provider {provider!r} is not supported; use one of {sorted(PROVIDERS)} "
            "(any OpenAI-compatible server works as 'openai' with openai_base_url)"
        )
    options = dict(llm.get("config") or {})
    url_key, default_url = PROVIDERS[provider]
    url: str = options.pop(url_key, None) or env.llm_url or default_url
    if provider == "ollama" and not url.rstrip("/").endswith("/v1"):
        url = url.rstrip("/") + "/v1"  # Ollama's OpenAI-compatible API
    unknown = set(options) - OPTIONS - IGNORED - {k for k, _ in PROVIDERS.values()}
    if unknown:
        raise ValueError(f"unknown llm config keys {sorted(unknown)}; known: {sorted(OPTIONS | {url_key})}")
    kwargs = {k: options[k] for k in OPTIONS if options.get(k) is not None}
    model = str(kwargs.pop("model", None) or env.llm_model or "")
    if provider == "openai" and url == default_url:
        kwargs.setdefault("api_key", env.openai_api_key)
    return url, model, kwargs
