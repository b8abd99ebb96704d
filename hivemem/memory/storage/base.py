"""The storage interface behind ``hivemem.Memory``.

A backend stores memories with their vectors and their history, and answers exact top-k
searches restricted by a parsed filter tree (``hivemem.memory.filters``). ``Memory`` does
validation and embedding; a backend only has to be correct and atomic: ``insert`` stores a whole
batch or nothing, and duplicates of (scope, hash) are refused by the store itself, never by a
check-then-insert in Python. SQLite is the embedded default; PostgreSQL/pgvector can follow.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory


class Storage(Protocol):
    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the embedding model on first use; refuse a different one later."""
        ...

    def existing(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Ids of the memories already stored under the given (scope, hash) keys."""
        ...

    def insert(self, memories: list[NewMemory], vectors: np.ndarray) -> list[tuple[str, str]]:
        """Store a batch in one transaction → ``(id, "ADD" | "NONE")`` per memory, in order.

        ``"NONE"`` with the id of the stored copy when the same text already is in the scope
        (also when another process stored it a moment ago).
        """
        ...

    def get(self, memory_id: str) -> dict[str, Any] | None: ...

    def list(self, where: Node | None, limit: int) -> list[dict[str, Any]]: ...

    def search(
        self, vector: np.ndarray, where: Node | None, k: int, threshold: float | None
    ) -> list[dict[str, Any]]: ...

    def update(
        self,
        memory_id: str,
        text: str | None,
        vector: np.ndarray | None,
        metadata: str | None,
        hash_: str | None = None,
    ) -> None:
        """Change text (with its vector and hash) and/or metadata; KeyError if the id is unknown."""
        ...

    def delete(self, memory_id: str) -> bool: ...

    def delete_where(self, where: Node) -> int: ...

    def history(self, memory_id: str) -> list[dict[str, Any]]: ...

    def count(self) -> int: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...
