"""The storage interface behind ``hivemem.Memory``, including the search contract.

A backend stores memories with their vectors and their history, and answers searches restricted
by a parsed filter tree (``hivemem.memory.filters``). ``Memory`` does validation and embedding; a
backend only has to be correct and atomic: ``insert`` stores a whole batch or nothing, and
duplicates of (scope, hash) are refused by the store itself, never by a check-then-insert in
Python.

The search contract (what every backend implements, so that ``mode="hybrid"|"vector"|"keyword"``
means the same everywhere; the fusion itself is ``hivemem.memory.hybrid``, shared, never
re-implemented by a backend):

* ``search(vector, where, k, threshold)`` — the vector side: the ``k`` memories that pass
  ``where`` with the highest cosine similarity to ``vector`` (exact float32 scores; an approximate
  first pass is fine if the top-k is exact in ≥ 99% of the cases, measured), best first, ties
  to the smaller insertion order, each a record with ``score`` = the cosine; with ``threshold``,
  only cosines ≥ it.
* ``keyword_search(terms, where, k)`` — the keyword side: the ``k`` memories that pass ``where``
  and contain at least one of ``terms`` (OR), ranked by BM25-style relevance over the memory text
  (both backends: BM25 idf summed over the words a memory holds, statistics of the searched
  scope; SQLite ``fts.py``, PostgreSQL ``pgkeyword.py``, equal scores for equal words), best
  first, each a record with ``score`` > 0 (higher is better; the scale is the backend's: fusion
  divides by the best one).
  ``terms`` come from ``hybrid.query_terms``: lower-case words, already free of stop words;
  the backend stems them as it stems the text, and treats each one as a literal (quoted) word,
  never as query syntax. The keyword index is updated in the same transaction as the row.
* ``cosines(ids, vector)`` — the exact cosine of the given memories (unknown ids are left out).
* ``snapshot()`` — a context manager under which the calls above see one committed state
  (SQLite: one read transaction; PostgreSQL: one REPEATABLE READ transaction). Re-entrant.

Filters apply to both sides before ranking: a memory that fails ``where`` is never a candidate.
The last three methods are the keyword side: a backend without them (``hybrid.has_keywords``) is
searched in vector mode when hybrid is asked for, and refuses keyword mode.

SQLite (``sqlite.py``) is the embedded default; PostgreSQL with pgvector (``postgres.py``) serves
fleets that span machines; both have all of the contract, and ``locate.py`` picks one from a path
or a ``postgresql://`` URL. Both run the same tests (``tests/memory``: the ``location`` fixture).
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from contextlib import AbstractContextManager
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
    ) -> builtins.list[dict[str, Any]]:
        """The vector side of the search contract (module docstring)."""
        ...

    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int
    ) -> builtins.list[dict[str, Any]]:
        """The keyword side of the search contract (module docstring)."""
        ...

    def cosines(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, float]:
        """Exact cosine similarity of these memories to ``vector`` (unknown ids left out)."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """One consistent committed state for the search calls made inside (re-entrant)."""
        ...

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

    def history(
        self, memory_id: str, entities: dict[str, str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Events of ``memory_id``, oldest first; with ``entities`` only those of a scope with
        these ids (``records.in_scope``: events of an unknown scope are left out)."""
        ...

    def count(self) -> int: ...

    def reset(self) -> None: ...

    # -- export / import (``hivemem.memory.transfer``, ``hivemem.memory.mem0_import``) --------------

    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory as a record, in insertion order."""
        ...

    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""
        ...

    def deleted_ids(self) -> builtins.list[str]:
        """Ids that have history but no memory any more."""
        ...

    def import_rows(
        self,
        memories: builtins.list[NewMemory],
        vectors: np.ndarray,
        updated_at: builtins.list[str],
        history: builtins.list[dict[str, Any]],
    ) -> builtins.list[tuple[str, str]]:
        """Copy memories (ids and timestamps kept) and history rows from another store in one
        transaction: ``"SKIP"`` for an id already here, else as ``insert``; history rows replace the
        synthetic ``ADD`` of the memories they describe and are skipped when their id is here."""
        ...

    def close(self) -> None: ...
