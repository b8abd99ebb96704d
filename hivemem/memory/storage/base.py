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
* Records only for what a search returns (issue 25): with ``with_records=False``, ``search`` and
  ``keyword_search`` may answer *stubs*, hits that name their row under ``ROW`` (SQLite: its rid)
  and carry only ``score`` (and ``KEYWORD_PARTS``); ``identify(vector_hits, keyword_hits,
  vector, dates)`` gives both sides' stubs their ``id`` (and, when the query names a date,
  ``created_at``) and returns the cosines of the
  keyword hits that are not vector hits (what ``hybrid.fuse`` needs), and ``records(rows)`` reads
  the records of the stubs a search keeps, in one statement, also for a whole group of searches
  (``searching.SearchGroups``). A backend whose ranking statements return whole rows (PostgreSQL)
  answers records, so nothing more is read for them.
* ``window_scores(ids, vector)`` — for the vector context (``hybrid.context_cosines``): per memory,
  over its window (it and the ``fts.CONTEXT_BEFORE`` memories stored just before it in its exact
  scope), the sum of the inner products of ``vector`` with their stored vectors and the norm of
  their sum, read from the rows as they are (nothing derived is stored); expired rows count until
  purged, as in the keyword context's materialised windows (docs/memory.md).
* ``snapshot()`` — a context manager under which the calls above see one committed state
  (SQLite: one read transaction; PostgreSQL: one REPEATABLE READ transaction). Re-entrant.

Filters apply to both sides before ranking: a memory that fails ``where`` is never a candidate.
The last three methods are the keyword side: a backend without them (``capabilities.keywords``
False) is searched in vector mode when hybrid is asked for, and refuses keyword mode.

``Storage`` is an abstract class both backends subclass (mypy and ``inspect.isabstract`` check that
each implements all of it). It holds what they share: ``update``, ``import_rows`` and the deletes
as one sequence of steps over a ``WriteTx`` (one write transaction in the backend's SQL), and
``get``/``list``/``count``/``history`` over ``_fetch``. Rows and events are ``rows.py``'s; filters
compile through ``sqlcompile`` in the backend's ``dialect``.

SQLite (``sqlite.py``) is the embedded default; PostgreSQL with pgvector (``postgres.py``) serves
fleets that span machines; both have all of the contract, and ``locate.py`` picks one from a path
or a ``postgresql://`` URL. Both run the same tests (``tests/memory``: the ``location`` fixture).
"""

from __future__ import annotations

import abc
import builtins
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from hivemem.memory import records
from hivemem.memory.filters import Node
from hivemem.memory.records import NewMemory, now
from hivemem.memory.storage import rows
from hivemem.memory.storage.rows import Event
from hivemem.memory.storage.sqlcompile import Compiled, Dialect, compile_filter

T = TypeVar("T")
# a deleted row: id, memory, actor_id, role, rid, scope
Removed = tuple[str, str, str | None, str | None, int, str]
# a row locked for an update: memory, scope, actor_id, role, rid
Locked = tuple[str, str, str | None, str | None, int]


@dataclass(frozen=True)
class Change:
    """One memory's update: a new text (with its ``vector`` and ``hash``) and/or metadata JSON;
    ``expires``: set ``expires_at`` (a ``records.expiry`` instant, or None: never expires)."""

    memory_id: str
    text: str | None = None
    vector: np.ndarray | None = None
    hash: str | None = None
    metadata: str | None = None
    expires: bool = False
    expires_at: str | None = None


def window_sums(
    names: builtins.list[str], vecs: np.ndarray, vector: np.ndarray
) -> dict[str, tuple[float, float]]:
    """``window_scores`` from the window members' vectors, one row per (memory, member): summed per
    memory whatever the rows' order (float64, in row order within a memory; both backends read
    each window newest first, so their sums are identical)."""
    dots = vecs @ np.asarray(vector, dtype=np.float32)
    rows: dict[str, builtins.list[int]] = {}
    for i, name in enumerate(names):
        rows.setdefault(name, []).append(i)
    out: dict[str, tuple[float, float]] = {}
    for name, at in rows.items():
        pick: slice | builtins.list[int] = slice(at[0], at[-1] + 1) if at[-1] - at[0] + 1 == len(at) else at
        total = vecs[pick].astype(np.float64).sum(axis=0)
        out[name] = (float(dots[pick].astype(np.float64).sum()), float(np.linalg.norm(total)))
    return out


# A keyword hit's raw (body, context) scores with keyword_search(..., context > 0); hybrid pops it
KEYWORD_PARTS = "_keyword_parts"
# A stub's row (``search``/``keyword_search`` with ``with_records=False``; module docstring): the
# backend's handle that ``records`` reads it by
ROW = "_row"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the core, said once instead of probed with ``hasattr``."""

    keywords: bool  # keyword_search, cosines, snapshot: modes "hybrid" and "keyword"
    group_commit: bool  # insert_many stores several batches in ONE transaction (worth combining adds)


class WriteTx(Protocol):
    """The steps of one write transaction in a backend's SQL (``Storage._transact`` opens it)."""

    def locked(self, ids: builtins.list[str]) -> dict[str, Locked]:
        """Each stored memory of ``ids`` → its text, scope, actor_id, role and rid, locked for the
        transaction (unknown ids are left out)."""
        ...

    def holders(self, keys: builtins.list[tuple[str, str, str]]) -> dict[str, str]:
        """For each ``(scope, hash, memory_id)``: the id of ANOTHER memory of ``scope`` with this
        hash, if any (``memory_id`` → that id)."""
        ...

    def set_texts(self, texts: builtins.list[tuple[str, str, str]], vectors: np.ndarray, stamp: str) -> None:
        """Each ``(memory_id, text, hash)`` with its row of ``vectors``."""
        ...

    def set_metadata(self, values: builtins.list[tuple[str, str]], stamp: str) -> None:
        """Each ``(memory_id, metadata JSON)``."""
        ...

    def set_expiry(self, values: builtins.list[tuple[str, str | None]], stamp: str) -> None:
        """Each ``(memory_id, expires_at)``."""
        ...

    def changed(self, rids: builtins.list[int], vector: bool) -> None:
        """Rows ``rids`` were updated (``vector``: their vectors too; else ``rids`` may be empty):
        tell whatever derives from them."""
        ...

    def remove(self, where: Compiled) -> builtins.list[Removed]:
        """Delete the rows passing ``where`` (in rid order) → what their DELETE events need."""
        ...

    def removed(self, rids: builtins.list[int]) -> None:
        """These rows are gone: tell whatever derives from them."""
        ...

    def present(self, ids: builtins.list[str]) -> set[str]:
        """Which of ``ids`` are stored."""
        ...

    def insert(
        self, memories: builtins.list[NewMemory], vectors: np.ndarray, updated_at: builtins.list[str]
    ) -> builtins.list[tuple[str, str]]:
        """Insert as ``Storage.insert`` does, with these ``updated_at`` and no ADD events."""
        ...

    def add_history(self, events: builtins.list[Event], *, skip_known: bool = False) -> None:
        """Insert events in order; ``skip_known``: leave out those whose event id is stored."""
        ...


class Storage(abc.ABC):
    """The contract of a memory backend (module docstring), and the steps both backends share."""

    capabilities: ClassVar[Capabilities]
    dialect: Dialect  # how filters compile for this backend (``sqlcompile``)
    _memories: str  # the tables, as the backend's SQL names them
    _history: str
    context: float = 0.0  # keyword_search's share for each memory's window (hybrid.configure_context)
    vector_context: float = 0.0  # hybrid's share for each window's mean vector (hybrid.configure_context)

    @property
    def dates(self) -> bool:
        """Whether dates named in a query boost (``keyword_dates``): the store's state now, so a
        process follows another's toggle from its next search (outside a search: as its last one saw it)."""
        return self.has_dates()

    # -- the backend's own ---------------------------------------------------------------------

    @abc.abstractmethod
    def enable_context(self) -> None:
        """Make (and fill) the keyword context index (SQLite ``fts.py``, PostgreSQL ``pgcontext.py``)
        if the store has none: from then on every write keeps it."""

    @abc.abstractmethod
    def keyword_dates(self, on: bool) -> None:
        """Index each memory's date words (``datewords``) with its text, ``on``, or not: the store's
        keyword layout, re-indexed when it differs (SQLite ``fts.py``, PostgreSQL ``pgkeyword.py``)."""

    @abc.abstractmethod
    def has_dates(self) -> bool:
        """Whether the store's keyword text holds the date words now (``keyword_dates``)."""

    @abc.abstractmethod
    def enable_vector_context(self) -> None:
        """Make the ``(scope, rid)`` index ``window_scores`` reads windows by, if the store has none."""

    @abc.abstractmethod
    def window_scores(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, tuple[float, float]]:
        """Per memory of ``ids`` (unknown ids left out): ``(Σ vector·v, ‖Σ v‖)`` over the stored
        vectors ``v`` of its window (module docstring; ``window_sums``)."""

    @abc.abstractmethod
    def _transact(self, body: Callable[[WriteTx], T]) -> T:
        """Run ``body`` in one write transaction (all of it or nothing)."""

    @abc.abstractmethod
    def _fetch(self, sql: str, params: builtins.list[Any]) -> builtins.list[tuple[Any, ...]]:
        """The rows of one read statement (in the open ``snapshot``, if any)."""

    @abc.abstractmethod
    def bind_model(self, model_id: str, dim: int) -> None:
        """Record the embedding model on first use; refuse a different one later."""

    @abc.abstractmethod
    def existing(self, keys: builtins.list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Ids of the memories already stored under the given (scope, hash) keys."""

    @abc.abstractmethod
    def insert(
        self, memories: builtins.list[NewMemory], vectors: np.ndarray
    ) -> builtins.list[tuple[str, str]]:
        """Store a batch in one transaction → ``(id, "ADD" | "NONE")`` per memory, in order.

        ``"NONE"`` with the id of the stored copy when the same text already is in the scope
        (also when another process stored it a moment ago).
        """

    @abc.abstractmethod
    def search(
        self,
        vector: np.ndarray,
        where: Node | None,
        k: int,
        threshold: float | None,
        with_records: bool = True,
    ) -> builtins.list[dict[str, Any]]:
        """The vector side of the search contract (module docstring); ``with_records=False``: the hits
        may be stubs (``ROW``)."""

    @abc.abstractmethod
    def keyword_search(
        self, terms: builtins.list[str], where: Node | None, k: int, with_records: bool = True
    ) -> builtins.list[dict[str, Any]]:
        """The keyword side of the search contract (module docstring). With ``self.context`` > 0
        each memory's window counts too, with this
        share, and each hit carries its raw parts under ``KEYWORD_PARTS`` (``storage/fts.py``);
        ``with_records=False``: the hits may be stubs (``ROW``)."""

    def identify(
        self, vector_hits: builtins.list[dict[str, Any]], keyword_hits: builtins.list[dict[str, Any]],
        vector: np.ndarray, dates: bool = False,
    ) -> tuple[builtins.list[dict[str, Any]], builtins.list[dict[str, Any]], dict[str, float]]:  # fmt: skip
        """Both sides' hits, each with its ``id`` (and with ``dates``, the query naming a date, its
        ``created_at``): a stub gets them here, one whose row is gone is left out; and the cosine of
        each keyword hit that is not a vector hit, by id (``cosines``). Here the hits are records
        already: only the cosines are read."""
        seen = {h["id"] for h in vector_hits}
        missing = [h["id"] for h in keyword_hits if h["id"] not in seen]
        return vector_hits, keyword_hits, self.cosines(missing, vector) if missing else {}

    @abc.abstractmethod
    def records(self, handles: builtins.list[Any]) -> dict[Any, dict[str, Any]]:
        """The records (``score`` None) of the rows ``handles`` (stubs' ``ROW``; repeats allowed), by
        handle; rows that are gone are left out. One statement, whatever the number of searches
        the stubs come from."""

    @abc.abstractmethod
    def cosines(self, ids: builtins.list[str], vector: np.ndarray) -> dict[str, float]:
        """Exact cosine similarity of these memories to ``vector`` (unknown ids left out)."""

    @abc.abstractmethod
    def snapshot(self) -> AbstractContextManager[None]:
        """One consistent committed state for the search calls made inside (re-entrant)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget every memory, event and the bound model."""

    @abc.abstractmethod
    def export_rows(self) -> Iterator[dict[str, Any]]:
        """Every memory as a record, in insertion order."""

    @abc.abstractmethod
    def histories(self, ids: builtins.list[str]) -> dict[str, builtins.list[dict[str, Any]]]:
        """The history of each of ``ids`` (oldest first); ids without history are left out."""

    @abc.abstractmethod
    def deleted_ids(self) -> builtins.list[str]:
        """Ids that have history but no memory any more, in order of first event."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- shared ----------------------------------------------------------------------------------

    def insert_many(
        self, batches: builtins.list[tuple[builtins.list[NewMemory], np.ndarray]]
    ) -> builtins.list[builtins.list[tuple[str, str]] | BaseException]:
        """Several batches → per batch what ``insert`` returns, or the exception that refused it.

        Here each batch is its own transaction; a backend with ``capabilities.group_commit``
        stores them in one."""
        out: builtins.list[builtins.list[tuple[str, str]] | BaseException] = []
        for memories, vectors in batches:
            try:
                out.append(self.insert(memories, vectors))
            except Exception as exc:
                out.append(exc)
        return out

    def compile(self, where: Node | None) -> Compiled:
        """``where`` as this backend's WHERE clause."""
        return compile_filter(where, self.dialect)

    def get(self, memory_id: str) -> dict[str, Any] | None:
        found = self._fetch(
            f"SELECT {rows.FIELDS} FROM {self._memories} WHERE id = {self.dialect.mark}",
            [memory_id],
        )
        return rows.record(found[0], with_score=True) if found else None

    def list(self, where: Node | None, limit: int) -> builtins.list[dict[str, Any]]:
        c, mark = self.compile(where), self.dialect.mark
        sql = f"SELECT {rows.FIELDS} FROM {self._memories} WHERE {c.sql}"
        sql += f" ORDER BY rid LIMIT {mark}"
        return [rows.record(r) for r in self._fetch(sql, [*c.params, limit])]

    def count(self) -> int:
        return int(self._fetch(f"SELECT count(*) FROM {self._memories}", [])[0][0])

    def history(
        self, memory_id: str, entities: dict[str, str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Events of ``memory_id``, oldest first; with ``entities`` (e.g. ``{"user_id": "bob"}``)
        only those that happened in a scope with these ids (``records.in_scope``: events of an
        unknown scope are left out)."""
        found = self._fetch(
            f"SELECT {rows.HISTORY}, scope FROM {self._history} WHERE memory_id = {self.dialect.mark}"
            " ORDER BY seq",
            [memory_id],
        )
        return [rows.event_dict(r) for r in found if entities is None or records.in_scope(r[-1], entities)]

    def _check_update(self, text: str | None, metadata: str | None) -> None:  # noqa: B027
        """Refuse what this backend cannot store before any transaction (none here)."""

    def _vectors(self, memories: builtins.list[NewMemory], vectors: np.ndarray) -> np.ndarray:
        """The checked vectors of a batch to import (and the batch refused if this backend cannot
        store it); here only their shape."""
        return rows.checked_vectors(memories, vectors, None)

    def unknown(self, ids: builtins.list[str]) -> builtins.list[str]:
        """Those of ``ids`` that no memory has, in order (a read: the write re-checks under lock)."""
        params: builtins.list[Any] = []
        sql = f"SELECT id FROM {self._memories} WHERE {self.dialect.column_in('id', ids, params)}"
        here = {r[0] for r in self._fetch(sql, params)}
        return [i for i in ids if i not in here]

    def update(
        self,
        memory_id: str,
        text: str | None,
        vector: np.ndarray | None,
        metadata: str | None,
        hash_: str | None = None,
    ) -> None:
        """Change text (with its vector and hash) and/or metadata; KeyError if the id is unknown."""
        self.update_many([Change(memory_id, text, vector, hash_, metadata)])

    def update_many(self, changes: builtins.list[Change]) -> None:
        """Apply every change in ONE transaction, or none: KeyError naming the first unknown id,
        ValueError for a new text that another memory of the scope holds before the batch, or that
        two changes of the batch give in one scope. Each step is one statement for the whole batch
        (PostgreSQL) or one ``executemany`` (SQLite); one UPDATE event per memory; the rows with a
        new vector are told to the index at once."""
        for c in changes:
            self._check_update(c.text, c.metadata)
        stamp = now()

        texts = [c for c in changes if c.text is not None]
        vectors = np.asarray([c.vector for c in texts], dtype=np.float32)

        def steps(tx: WriteTx) -> None:
            found = tx.locked([c.memory_id for c in changes])
            for c in changes:
                if c.memory_id not in found:
                    raise KeyError(c.memory_id)
            keys = [(found[c.memory_id][1], str(c.hash), c.memory_id) for c in texts]
            seen = Counter(k[:2] for k in keys)
            clash = tx.holders(keys) if texts else {}
            for scope, hash_, memory_id in keys:
                other = clash.get(memory_id)
                if other or seen[(scope, hash_)] > 1:
                    holder = f"memory {other}" if other else "another memory of this batch"
                    raise ValueError(f"memory {memory_id}: {holder} in the same scope already has this text")
            if texts:
                tx.set_texts([(c.memory_id, str(c.text), str(c.hash)) for c in texts], vectors, stamp)
            meta = [(c.memory_id, c.metadata) for c in changes if c.metadata is not None]
            if meta:
                tx.set_metadata(meta, stamp)
            expiring = [(c.memory_id, c.expires_at) for c in changes if c.expires]
            if expiring:
                tx.set_expiry(expiring, stamp)
            events = []
            for c in changes:
                old, scope, actor, role, _ = found[c.memory_id]
                new = c.text if c.text is not None else old
                events.append(rows.event(c.memory_id, old, new, "UPDATE", stamp, actor, role, scope))
            tx.add_history(events)
            if texts:
                tx.changed([found[c.memory_id][4] for c in texts], vector=True)
            if len(texts) < len(changes):
                tx.changed([], vector=False)

        self._transact(steps)

    def delete(self, memory_id: str) -> bool:
        return self._remove(Compiled(f"id = {self.dialect.mark}", [memory_id])) == 1

    def delete_many(self, ids: builtins.list[str]) -> None:
        """Delete all of ``ids`` (distinct) in ONE transaction, or none: KeyError naming the first
        unknown one."""
        params: builtins.list[Any] = []
        where = Compiled(self.dialect.column_in("id", ids, params), params)

        def check(gone: builtins.list[Removed]) -> None:
            if len(gone) < len(ids):
                here = {r[0] for r in gone}
                raise KeyError(next(i for i in ids if i not in here))  # rolls the deletes back

        self._remove(where, check)

    def delete_where(self, where: Node) -> int:
        return self._remove(self.compile(where))

    def purge_expired(self, moment: str) -> int:
        """Delete the memories expired at ``moment`` (a ``records.instant``), with DELETE events."""
        return self._remove(Compiled(f"expires_at <= {self.dialect.mark}", [moment]))

    def expiry_cut(self, moment: str) -> tuple[bool, str | None]:
        """Whether some memory is expired at ``moment``, and the earliest expiry after it (None:
        none): two ``min`` over the ``expires_at`` index, each one seek. "Not expired at
        ``moment``" is then the same set as "``expires_at`` NULL or ≥ that next expiry", a bound
        that stays the same from one search to the next (``sqlcompile.unexpired``), unlike the
        clock. (Not ``WHERE expires_at <= now LIMIT 1``: on a PostgreSQL table not yet analysed,
        the planner chose a sequential scan for it, 70 ms at 100k memories when nothing matched.)"""
        mark, table = self.dialect.mark, self._memories
        found = self._fetch(
            f"SELECT (SELECT min(expires_at) FROM {table}),"
            f" (SELECT min(expires_at) FROM {table} WHERE expires_at > {mark})",
            [moment],
        )
        first, bound = found[0]
        return first is not None and first <= moment, bound

    def _remove(self, where: Compiled, check: Callable[[builtins.list[Removed]], None] | None = None) -> int:
        stamp = now()

        def steps(tx: WriteTx) -> int:
            gone = tx.remove(where)
            if check is not None:
                check(gone)
            if gone:
                tx.removed([r[4] for r in gone])
            tx.add_history([rows.event(i, m, None, "DELETE", stamp, a, r, s) for i, m, a, r, _, s in gone])
            return len(gone)

        return self._transact(steps)

    def import_rows(
        self,
        memories: builtins.list[NewMemory],
        vectors: np.ndarray,
        updated_at: builtins.list[str],
        history: builtins.list[dict[str, Any]],
    ) -> builtins.list[tuple[str, str]]:
        """Copy memories (ids and timestamps kept) and history rows from another store in ONE
        transaction (``hivemem memory import``): ``"SKIP"`` for an id already here, else as
        ``insert`` (``"ADD"``, or ``"NONE"`` for a text already stored in the scope); history rows
        replace the synthetic ``ADD`` of the memories they describe and are skipped when their id
        is here, so an import can be repeated."""
        vectors = self._vectors(memories, vectors)
        described = {h["memory_id"] for h in history}
        scopes = {m.id: m.scope for m in memories}  # events of deleted memories: unknown (None)

        def steps(tx: WriteTx) -> builtins.list[tuple[str, str]]:
            here = tx.present([m.id for m in memories])
            keep = [i for i, m in enumerate(memories) if m.id not in here]
            todo = [memories[i] for i in keep]
            stored = tx.insert(todo, vectors[keep], [updated_at[i] for i in keep]) if keep else []
            added = {mid for mid, event in stored if event == "ADD"}
            tx.add_history([rows.added(m) for m in todo if m.id in added and m.id not in described])
            tx.add_history([rows.imported(h, scopes.get(h["memory_id"])) for h in history], skip_known=True)
            out = dict(zip(keep, stored, strict=True))
            return [out.get(i, (m.id, "SKIP")) for i, m in enumerate(memories)]

        return self._transact(steps)
