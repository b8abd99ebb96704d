"""The one interface every embedder in hivemem offers.

The in-process engine (``hivemem.Embedder``), the service client (``hivemem.connect()``) and the
raw backends all satisfy it, so the memory store and user code never care which one they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class EmbedderLike(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of a fixed width."""

    @property
    def model_id(self) -> str:
        """Identifies the model *and* variant; vectors of different ids are never mixed."""
        ...

    @property
    def dim(self) -> int:
        """Width of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) × dim`` float32, L2-normalised, in input order. ``[]`` → ``(0, dim)``."""
        ...

    def embed_one(self, text: str) -> np.ndarray:
        """One text → one ``(dim,)`` vector."""
        ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """``embed`` for asyncio code: never blocks the event loop."""
        ...


class Backend(Protocol):
    """What the engine needs from a model runner: a validated list in, normalised vectors out.

    Backends are not required to be thread-safe; the engine's queue calls them from one thread.
    A backend that tokenizes may also set ``last_tokens`` (an int array: tokens per text of its
    last ``encode``, special tokens included): the engine carries those counts with the batch to
    the service's metrics and the HTTP ``usage`` field, so nothing is tokenized twice.
    """

    model_id: str
    dim: int

    @property
    def truncated(self) -> int:
        """How many inputs so far were cut at the model's token limit (read only)."""
        ...

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def close(self) -> None: ...
