"""Every environment variable hivemem reads, in one typed place.

``Settings.from_env()`` reads them all at once (a few dict lookups, so callers read at the moment
they decide, and a test's ``monkeypatch.setenv`` is seen); each part asks for the field it needs and
no other module reads ``os.environ``. Empty values count as unset. The table in
docs/configuration.md is generated from ``VARIABLES`` (``python tests/test_settings.py --write``).
Standard library only, and light (no dataclasses, which pull in ``inspect``): the MCP relay and
every task worker import this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple


class Variable(NamedTuple):
    """One environment variable: its name, the ``Settings`` field it fills, and what it does."""

    name: str
    field: str
    help: str


VARIABLES: tuple[Variable, ...] = (
    Variable("HIVEMEM_HOME", "home", "Root of the model export, cache and default store (see below)."),
    Variable("XDG_CACHE_HOME", "xdg_cache_home", "`HIVEMEM_HOME` defaults to `$XDG_CACHE_HOME/hivemem`."),
    Variable("XDG_RUNTIME_DIR", "xdg_runtime_dir", "Per-user directory of the service's socket and locks."),
    Variable("HIVEMEM_CACHE", "cache", "The embedding cache's SQLite file."),
    Variable("HIVEMEM_CACHE_URL", "cache_url", "A Redis URL: the cache's machine-shared second tier."),
    Variable("HIVEMEM_CACHE_TTL", "cache_ttl_text", "Seconds an entry lives in the Redis tier."),
    Variable("HIVEMEM_SOCKET", "socket", "The embedding service's Unix socket."),
    Variable("HIVEMEM_TRUST_UIDS", "trust_uids_text", "Other users (uids) whose service workers may use."),
    Variable("HIVEMEM_EMBEDDER_URL", "embedder_url", "Embed through `hivemem serve --http` at this URL."),
    Variable("HIVEMEM_API_KEY", "api_key", "The API key sent to, or required by, the HTTP server."),
    Variable("HIVEMEM_MEMORY_URL", "memory_url", "`Memory()`'s store: a SQLite path or `postgresql://` URL."),
    Variable("HIVEMEM_USER_ID", "user_id", "The MCP relay's default `user_id` scope."),
    Variable("HIVEMEM_AGENT_ID", "agent_id", "The MCP relay's default `agent_id` scope."),
    Variable("HIVEMEM_RUN_ID", "run_id", "The MCP relay's default `run_id` scope."),
    Variable("HIVEMEM_LLM_URL", "llm_url", "An OpenAI-compatible chat endpoint for `add(infer=True)`."),
    Variable("HIVEMEM_LLM_MODEL", "llm_model", "The model name sent to that endpoint."),
    Variable("HIVEMEM_LLM_API_KEY", "llm_api_key", "The API key sent to that endpoint."),
    Variable(
        "HIVEMEM_KEYWORD_CONTEXT",
        "keyword_context",
        "`1`: `Memory` searches also match each memory's neighbours (`keyword_context`; default `0`).",
    ),
    Variable(
        "HIVEMEM_KEYWORD_DATES",
        "keyword_dates",
        '`1`/`0`: index, or not, each memory\'s date ("8 May 2023") with its keyword text, and boost the'
        " memories created on a date a hybrid query names (`keyword_dates`; unset: as the store has it,"
        " off for a new one).",
    ),
    Variable(
        "HIVEMEM_VECTOR_CONTEXT",
        "vector_context",
        "`1`: hybrid searches also weigh the mean vector of each memory's neighbours (`vector_context`;"
        " default `0`).",
    ),
    Variable(
        "HIVEMEM_EVENT_LOOP",
        "event_loop",
        "The service's event loop: `auto` (uvloop where installed, the default), `uvloop` or `asyncio`.",
    ),
    Variable("OPENAI_API_KEY", "openai_api_key", "Used by the `openai` LLM provider at OpenAI's own URL."),
)


class Settings:
    """The environment as hivemem understands it; None where a variable is unset or empty. The two
    non-text values are parsed when asked for, so a malformed one fails only the part that uses it."""

    home: str | None
    xdg_cache_home: str | None
    xdg_runtime_dir: str | None
    cache: str | None
    cache_url: str | None
    cache_ttl_text: str | None
    socket: str | None
    trust_uids_text: str | None
    embedder_url: str | None
    api_key: str | None
    memory_url: str | None
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    llm_url: str | None
    llm_model: str | None
    llm_api_key: str | None
    keyword_context: str | None
    keyword_dates: str | None
    vector_context: str | None
    event_loop: str | None
    openai_api_key: str | None

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        for v in VARIABLES:
            setattr(self, v.field, (env.get(v.name) or "").strip() or None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``environ`` (default ``os.environ``) now."""
        return cls(environ)

    def __repr__(self) -> str:  # keys are not printed
        shown = ", ".join(f"{v.field}={getattr(self, v.field)!r}" for v in VARIABLES if "key" not in v.field)
        return f"Settings({shown})"

    @property
    def cache_ttl(self) -> float | None:
        """``HIVEMEM_CACHE_TTL`` in seconds; ValueError when it is not a number."""
        return _seconds("HIVEMEM_CACHE_TTL", self.cache_ttl_text)

    @property
    def trust_uids(self) -> tuple[int, ...]:
        """``HIVEMEM_TRUST_UIDS``; ValueError when a part is not a numeric uid."""
        return _uids(self.trust_uids_text)


def recorded(names: tuple[str, ...]) -> dict[str, str]:
    """The given variables as they are set now: what a restarted child process must see again."""
    return {name: os.environ[name] for name in names if name in os.environ}


def _seconds(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text!r}") from None


def _uids(text: str | None) -> tuple[int, ...]:
    parts = (text or "").replace(",", " ").split()
    for part in parts:
        if not part.isdigit():
            raise ValueError(f"HIVEMEM_TRUST_UIDS must list numeric uids, got {part!r}")
    return tuple(int(part) for part in parts)


def markdown_table() -> str:
    """docs/configuration.md's table of variables."""
    rows = ["| variable | what it sets |", "| --- | --- |"]
    rows += [f"| `{v.name}` | {v.help} |" for v in VARIABLES]
    return "\n".join(rows) + "\n"


assert {v.field for v in VARIABLES} == set(Settings.__annotations__), "VARIABLES and Settings differ"
