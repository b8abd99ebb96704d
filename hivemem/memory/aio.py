"""``hivemem.AsyncMemory``: ``Memory`` for asyncio code, every call off the event loop.

Each method runs the synchronous one in a worker thread (``asyncio.to_thread``). That is enough:
the embedder's queue gathers texts from all those threads into full batches, and SQLite waits
happen in the thread, never on the loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hivemem.embed.protocol import EmbedderLike
from hivemem.memory.rerank import Reranker
from hivemem.memory.store import Memory


class AsyncMemory:
    """Same methods and arguments as ``hivemem.Memory``, as coroutines."""

    def __init__(
        self,
        path: str | Path | None = None,  # a file, a postgresql:// URL, or None (see Memory)
        embedder: EmbedderLike | None = None,
        *,
        embedder_config: dict[str, Any] | None = None,
        reranker: Reranker | None = None,
        llm: Any = None,
        keyword_context: bool | None = None,
        vector_context: bool | None = None,
        keyword_dates: bool | None = None,
    ) -> None:
        self.sync = Memory(
            path,
            embedder,
            embedder_config=embedder_config,
            reranker=reranker,
            llm=llm,
            keyword_context=keyword_context,
            vector_context=vector_context,
            keyword_dates=keyword_dates,
        )

    @classmethod
    def from_config(cls, config_dict: dict[str, Any]) -> AsyncMemory:
        self = cls.__new__(cls)
        self.sync = Memory.from_config(config_dict)
        return self

    async def add(self, messages: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.add, messages, **kwargs)

    async def add_batch(self, items: list[dict[str, Any]], infer: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.add_batch, items, infer)

    async def search(self, query: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.search, query, **kwargs)

    async def get(self, memory_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.sync.get, memory_id)

    async def get_all(self, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.get_all, **kwargs)

    async def update(
        self, memory_id: str, text: str | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, str]:
        return await asyncio.to_thread(self.sync.update, memory_id, text, metadata, **kwargs)

    async def batch_update(self, memories: list[dict[str, Any]]) -> dict[str, str]:
        return await asyncio.to_thread(self.sync.batch_update, memories)

    async def batch_delete(self, memories: list[dict[str, Any]]) -> dict[str, str]:
        return await asyncio.to_thread(self.sync.batch_delete, memories)

    async def purge_expired(self) -> int:
        return await asyncio.to_thread(self.sync.purge_expired)

    async def delete(self, memory_id: str) -> dict[str, str]:
        return await asyncio.to_thread(self.sync.delete, memory_id)

    async def delete_all(self, **kwargs: Any) -> dict[str, str]:
        return await asyncio.to_thread(self.sync.delete_all, **kwargs)

    async def history(self, memory_id: str, **scope: Any) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.history, memory_id, **scope)

    async def reset(self) -> None:
        await asyncio.to_thread(self.sync.reset)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
