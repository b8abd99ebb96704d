"""The composition root: which embedder a part gets when its caller names none.

The memory store (and anything else that needs "the default embedder") asks here instead of
knowing the embedding service, the remote client or the engine itself: ``hivemem.memory`` imports
none of them, so the daemon, the HTTP application and the memory store stay separate parts.

Order: an explicit ``embedder`` (anything ``EmbedderLike``); else remote embedding servers when
``$HIVEMEM_EMBEDDER_URL`` is set or the config says ``{"provider": "remote", "config": {"url": …,
"api_key": …}}`` (``hivemem.embed.remote``: other hosts, OpenAI API); else the shared hivemem service when
it is running on the default socket, or configured (``HIVEMEM_SOCKET`` set, or
``{"embedder": {"provider": "service"}}``; both start one if needed),
so that a fleet of processes shares one model, queue and cache; else an in-process
``hivemem.Embedder`` built from the config's options.
"""

from __future__ import annotations

from typing import Any

from hivemem.embed.protocol import EmbedderLike
from hivemem.infra.settings import Settings

# Mem0 config providers that mean "the local MiniLM model", mapped to hivemem's own engine.
_IN_PROCESS = {"hivemem", "onnx", "sentence-transformers", "huggingface", "openai"}


def _service_running() -> bool:
    """A service already answers on the configured socket (never starts one)."""
    from hivemem.service.paths import socket_path
    from hivemem.service.spawn import can_connect

    return can_connect(socket_path())


def resolve_embedder(embedder: Any = None, config: dict[str, Any] | None = None) -> tuple[EmbedderLike, bool]:
    """``(embedder, owned)``: ``owned`` is True when ``Memory`` created it and must close it."""
    if embedder is not None:
        if not isinstance(embedder, EmbedderLike):
            raise TypeError(
                f"embedder must offer model_id, dim, embed, embed_one and aembed (hivemem.EmbedderLike), "
                f"got {type(embedder).__name__}"
            )
        return embedder, False
    config = dict(config or {})
    provider = config.get("provider", "hivemem")
    options = dict(config.get("config") or {})
    if provider == "remote" or (provider == "hivemem" and not options and Settings.from_env().embedder_url):
        from hivemem.embed.remote import connect_url

        return connect_url(**options), True
    if provider == "service" or (
        provider == "hivemem" and not options and (Settings.from_env().socket or _service_running())
    ):
        from hivemem.service.client import connect

        return connect(**options), True
    if provider not in _IN_PROCESS:
        raise ValueError(
            f"unknown embedder provider {provider!r}: use 'hivemem' (in-process), 'service', 'remote', "
            "or pass embedder=<any hivemem.EmbedderLike>"
        )
    from hivemem.embed.engine import Embedder

    if provider in ("sentence-transformers", "openai"):
        options.setdefault("backend", provider)
    # Mem0's huggingface config names a model; hivemem serves all-MiniLM-L6-v2 only.
    model = options.pop("model", None)
    options.pop("embedding_dims", None)
    options.pop("model_kwargs", None)
    if model and "minilm-l6" not in str(model).lower():
        raise ValueError(f"hivemem embeds with all-MiniLM-L6-v2; model {model!r} is not available")
    return Embedder(**options), True
