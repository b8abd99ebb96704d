"""The storage interface behind ``hivemem.Memory``.

A backend stores memories with their vectors and their history, and answers exact top-k
searches restricted by a parsed filter tree (``hivemem.memory.filters``). ``Memory`` does
validation and embedding; a backend only has to be correct and atomic: ``insert`` stores a whole
batch or nothing, and duplicates of (scope, hash) are refused by the store itself, never by a
check-then-insert in Python. SQLite (``sqlite.py``) is the embedded default; PostgreSQL with
pgvector (``postgres.py``) serves fleets that span machines; ``locate.py`` picks one from a path
or a ``postgresql://`` URL. Both run the same tests (``tests/memory``: the ``location`` fixture).
"""

from __future__ import annotations

from collections.abc import Iterator
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

    # -- export / import (``hivemem.memory.transfer``, ``hivemem.memory.mem0_import``) --------------

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory as a record, in insertion order."""
        ...

    def histories(self, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        ...

    def deleted_ids(self) -> list[str]:
        """Ids that have history but no memory any more."""
        ...

    def import_rows(
        self,
        memories: list[NewMemory],
        vectors: np.ndarray,
        updated_at: list[str],
        history: list[dict[str, Any]],
    ) -> list[tuple[str, str]]:
        """Copy memories (ids and timestamps kept) and history rows from another store in one
        transaction: ``"SKIP"`` for an id already here, else as ``insert``; history rows replace the
        synthetic ``ADD`` of the memories they describe and are skipped when their id is here."""
        ...

    def close(self) -> None: ...
