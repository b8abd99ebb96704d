"""``hivemem.Memory``: Mem0's ``Memory`` API, batch-native and safe across processes.

    >>> from hivemem import Memory
    >>> m = Memory()                                    # ~/.cache/hivemem/memory.sqlite
    >>> m.add("I like green tea", user_id="alice")
    {'results': [{'id': '...', 'memory': 'I like green tea', 'event': 'ADD', ...}]}
    >>> m.search("what drinks?", filters={"user_id": "alice"})["results"][0]["memory"]
    'I like green tea'

Path of an add: validate everything → look up which (scope, text) pairs are already stored →
embed the rest in ONE embedder call (outside any lock) → one short write transaction. Adding a
text already stored in the same scope returns the stored id with event ``"NONE"`` and writes
nothing. On SQLite, concurrent ``add``/``add_batch`` calls of one process walk that path together
(``hivemem.infra.grouping.Combiner``): one lookup, one embed call and one transaction per group of
calls, each call still stored whole or not at all and answered with its own result or error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hivemem.embed.protocol import EmbedderLike
from hivemem.embed.validate import check_unicode
from hivemem.errors import LimitExceeded, MemoryNotFound
from hivemem.infra.grouping import Combiner, Release, each_alone
from hivemem.memory import batch as bt
from hivemem.memory import filters as flt
from hivemem.memory import hybrid
from hivemem.memory import rerank as rr
from hivemem.memory.embedders import resolve_embedder
from hivemem.memory.infer import FactExtractor, infer_memories
from hivemem.memory.records import (
    ENTITIES,
    RESERVED_METADATA,
    NewMemory,
    check_entity,
    check_metadata,
    check_text,
    instant,
    prepare,
)
from hivemem.memory.searching import SearchGroups, check_threshold
from hivemem.memory.storage.backends import open_storage
from hivemem.memory.storage.locate import PostgresLocation, from_mem0_pgvector, resolve
from hivemem.memory.storage.sqlcompile import unexpired

_OPTIONS = ("keyword_context", "vector_context", "keyword_dates")  # of Memory(); hybrid.configure_context
_CONFIG_KEYS = {"path", "vector_store", "embedder", "llm", "reranker", "history_db_path", "version"}
_CONFIG_KEYS |= {"custom_instructions", "custom_fact_extraction_prompt", *_OPTIONS}

# Results one get_all/search may ask for (Python; HTTP has lower caps). SQLite's LIMIT is a 64-bit
# integer: 10**20 was an OverflowError from the driver.
MAX_TOP_K = 1_000_000_000


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_k > MAX_TOP_K:
        raise LimitExceeded(
            f"top_k is {top_k}; the limit is {MAX_TOP_K:,} (MAX_TOP_K)",
            limit_name="MAX_TOP_K",
            limit=MAX_TOP_K,
            field="top_k",
        )
    return top_k


def _check_id(memory_id: Any) -> str:
    if not isinstance(memory_id, str) or not memory_id:
        raise TypeError(f"memory_id must be a non-empty string, got {memory_id!r}")
    return check_unicode(memory_id, "memory_id")


def _check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_given_ids(new: list[NewMemory], found: dict[tuple[str, str], str]) -> None:
    """A caller-chosen id must name its memory: refuse (before anything is written) a text that
    is already stored, or added earlier in the same batch, under another id in the same scope."""
    first: dict[tuple[str, str], str] = {}
    for m in new:
        key = (m.scope, m.hash)
        owner = found.get(key) or first.setdefault(key, m.id)
        if m.given_id and owner != m.id:
            raise ValueError(
                f"memory id {m.id!r}: the same text is already stored in this scope as memory {owner!r} "
                "(hivemem keeps one copy of a text per scope); use that id, or update/delete it first"
            )


def _results(
    new: list[NewMemory],
    found: dict[tuple[str, str], str],
    todo: list[NewMemory],
    stored: list[tuple[str, str]],
) -> list[dict[str, Any]]:
    """One result per memory of an add: its id and event (``"NONE"``: already stored)."""
    outcome = {id(m): r for m, r in zip(todo, stored, strict=True)}
    results = []
    for m in new:
        memory_id, event = outcome.get(id(m)) or (found[(m.scope, m.hash)], "NONE")
        results.append(
            {"id": memory_id, "memory": m.memory, "event": event, "actor_id": m.actor_id, "role": m.role}
        )
    return results


# Calls of up to COMBINE_MAX memories are joined into groups of up to COMBINE_GROUP_MAX (the
# engine queue's batch). Larger calls go straight to the engine's queue, which cuts them into
# parts so that they cannot hold up small callers for their whole embedding.
COMBINE_MAX = 64
COMBINE_GROUP_MAX = 256


class Memory:
    """Long-term memory for agents (see the module docstring).

    ``path``: where the memories live (``hivemem.memory.storage.locate``): a file path (SQLite),
    a ``postgresql://user@host/db?schema=…`` URL (PostgreSQL + pgvector), or ``None`` for
    ``$HIVEMEM_MEMORY_URL`` or else ``hivemem.infra.config.home()/memory.sqlite``. ``embedder``: any
    ``hivemem.EmbedderLike``; by default the hivemem service if one is running, else an
    in-process engine, created on first use (listing, deleting and keyword search never load a
    model). ``reranker``: an optional ``hivemem.Reranker``, used by ``search(..., rerank=True)``.
    """

    # Names every record has at the top level: they cannot be metadata keys (adapters escape them).
    RESERVED_METADATA = RESERVED_METADATA

    def __init__(
        self,
        path: str | Path | PostgresLocation | None = None,
        embedder: EmbedderLike | None = None,
        *,
        embedder_config: dict[str, Any] | None = None,
        reranker: rr.Reranker | dict[str, Any] | None = None,
        llm: dict[str, Any] | FactExtractor | None = None,
        keyword_context: bool | None = None,
        vector_context: bool | None = None,
        keyword_dates: bool | None = None,
    ) -> None:
        # a Reranker object, or Mem0's {"provider": "llm", "config": …} (ours to close)
        self._reranker, self._owns_reranker = rr.resolve(reranker)
        where = resolve(path)
        self.location = str(where)  # for messages; a PostgreSQL password is never shown
        self.path: Path | None = where if isinstance(where, Path) else None  # the SQLite file
        self._storage = open_storage(where, hybrid.dates_option(keyword_dates))
        hybrid.configure_context(keyword_context, vector_context, self._storage, keyword_dates)
        # Concurrent adds joined into groups (grouping.Combiner) where the storage commits groups as one
        # transaction (SQLite); PostgreSQL's writers run in parallel, one transaction each.
        grouped = self._storage.capabilities.group_commit
        self._combiner: Combiner[list[NewMemory], list[dict[str, Any]]] | None = (
            Combiner(self._store_group, max_size=COMBINE_GROUP_MAX) if grouped else None
        )
        self._searches = SearchGroups(self._storage, grouped)  # concurrent searches too (SQLite)
        self._embedder: EmbedderLike | None = None
        self._owns_embedder = False
        self._embedder_config = embedder_config
        self._embedder_lock = threading.Lock()
        if embedder is not None:
            self._embedder, self._owns_embedder = resolve_embedder(embedder)
            self._storage.bind_model(self._embedder.model_id, self._embedder.dim)
        # infer=True: a FactExtractor, or Mem0's "llm" config dict (else $HIVEMEM_LLM_URL), built on first use
        self._llm: FactExtractor | None = llm if isinstance(llm, FactExtractor) else None
        self._llm_config = None if isinstance(llm, FactExtractor) else llm
        self._owns_llm = False
        self._prompts: dict[str, str | None] = {}

    @classmethod
    def from_config(cls, config_dict: dict[str, Any]) -> Memory:
        """Mem0-style config: ``{"vector_store": {"provider": "sqlite", "config": {"path": …}},
        "embedder": {"provider": "hivemem" | "service" | "huggingface", "config": {…}}}``
        (or simply ``{"path": …}``). PostgreSQL: ``{"vector_store": {"provider": "pgvector",
        "config": {"connection_string": "postgresql://…", "collection_name": "team_a"}}}`` (Mem0's
        ``dbname/user/password/host/port`` keys work too; ``collection_name`` is the schema)."""
        if not isinstance(config_dict, dict):
            raise TypeError(f"config must be a dict, got {type(config_dict).__name__}")
        unknown = set(config_dict) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        path: Any = config_dict.get("path")
        store = config_dict.get("vector_store") or {}
        if store:
            provider = store.get("provider", "sqlite")
            options = store.get("config") or {}
            if not isinstance(options, dict):
                raise TypeError(f"vector_store config must be a dict, got {type(options).__name__}")
            if provider in ("pgvector", "postgres", "postgresql"):
                path = from_mem0_pgvector(options)
            elif provider in ("sqlite", "hivemem"):
                path = options.get("path", path)
            else:
                raise ValueError(
                    f"vector_store provider {provider!r} is not available; use 'sqlite' or 'pgvector'"
                )
        memory = cls(
            path=path,
            embedder_config=config_dict.get("embedder"),
            llm=config_dict.get("llm"),
            reranker=config_dict.get("reranker"),
            **{name: config_dict.get(name) for name in _OPTIONS},
        )
        memory._prompts = {
            k: config_dict.get(k) for k in ("custom_instructions", "custom_fact_extraction_prompt")
        }
        return memory

    # -- embedding -----------------------------------------------------------------------------

    @property
    def embedder(self) -> EmbedderLike:
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    emb, owned = resolve_embedder(None, self._embedder_config)
                    self._storage.bind_model(emb.model_id, emb.dim)
                    self._owns_embedder = owned
                    self._embedder = emb
        return self._embedder

    @property
    def llm(self) -> FactExtractor:
        """The fact extractor behind ``infer=True`` (see ``hivemem.memory.infer``)."""
        llm: FactExtractor = self._built_once(
            "_llm",
            "_owns_llm",
            lambda: FactExtractor.from_config(self._llm_config, **self._prompts),
            "infer=True needs an LLM, and no LLM is configured: pass Memory(llm={'provider': "
            "'openai', 'config': {'model': …, 'openai_base_url': …}}) or set HIVEMEM_LLM_URL",
        )
        return llm

    def _built_once(self, name: str, owned: str, build: Callable[[], Any], missing: str) -> Any:
        """``self.<name>``, built by ``build`` on first use (once, under the lock) and then ours to
        close (``self.<owned>``); ValueError(``missing``) when ``build`` finds nothing configured."""
        if getattr(self, name) is None:
            with self._embedder_lock:
                if getattr(self, name) is None:
                    built = build()
                    if built is None:
                        raise ValueError(missing)
                    setattr(self, name, built)
                    setattr(self, owned, True)
        return getattr(self, name)

    # -- writes --------------------------------------------------------------------------------

    def add(
        self,
        messages: Any,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        infer: bool = False,
        prompt: str | None = None,
        expiration_date: Any = None,
        timestamp: Any = None,
    ) -> dict[str, list[dict[str, Any]]]:
        """Store ``messages`` (a string, or ``[{"role", "content"}]``; system turns are skipped).

        ``infer=True``: store the facts an LLM finds in them instead (``prompt``: extra instructions
        for this call); see ``hivemem.memory.infer``. ``expiration_date``: an ISO date or datetime
        after which ``search``/``get_all`` leave the memory out (``records.expiry``: a date means
        the end of that day in UTC, a naive datetime is UTC). ``timestamp`` (Mem0's): when it was
        created, instead of now (``records.created``: Unix seconds, ISO date or datetime).
        """
        item = {"messages": messages, "user_id": user_id, "agent_id": agent_id, "run_id": run_id}
        item |= {"metadata": metadata, "infer": infer, "prompt": prompt}
        item |= {"timestamp": timestamp, "expiration_date": expiration_date}
        return {"results": self._store(self._memories([item], [""], False))}

    def add_batch(self, items: list[dict[str, Any]], infer: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Many ``add`` calls in one embed call and one transaction: all stored, or none.

        Each item: ``{"messages": …, "user_id"/"agent_id"/"run_id": …, "metadata": …}``, and
        optionally ``"id"``: the caller's id for an item of one message (LangChain document ids, ids
        imported from Mem0; otherwise a uuid4 is generated), ``"expiration_date"``, ``"timestamp"``.
        Results are flat, in item order (one per non-system message). ``infer=True`` (or an item's
        ``"infer"``, with its ``"prompt"``): the LLM's facts instead, all conversations asked
        concurrently, then still one embed call and one transaction for everything.
        """
        if not isinstance(items, list | tuple):
            raise TypeError(f"add_batch takes a list of dicts, got {type(items).__name__}")
        allowed = {"messages", *ENTITIES, "metadata", "infer", "prompt", "id", "expiration_date", "timestamp"}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise TypeError(f"items[{i}] must be a dict, got {type(item).__name__}")
            extra = set(item) - allowed
            if extra:
                raise ValueError(f"items[{i}] has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}")
            if "messages" not in item:
                raise ValueError(f"items[{i}] needs 'messages'")
        return {
            "results": self._store(self._memories(items, [f"items[{i}]: " for i in range(len(items))], infer))
        }

    def _memories(self, items: list[dict[str, Any]], wheres: list[str], infer: bool) -> list[NewMemory]:
        """Validated memories for ``add`` calls, in order; those with ``infer`` via the LLM."""
        per_item: list[list[NewMemory]] = []
        asked: list[tuple[int, dict[str, Any]]] = []
        for i, (item, where) in enumerate(zip(items, wheres, strict=True)):
            args = {k: v for k, v in item.items() if k != "infer"}
            flag = item.get("infer", infer)
            if not isinstance(flag, bool):
                raise TypeError(f"{where}infer must be True or False, got {flag!r}")
            if flag:
                asked.append((i, args))
            elif args.pop("prompt", None) is not None:
                raise ValueError(f"{where}prompt is for infer=True (the LLM's instructions)")
            per_item.append([] if flag else prepare(**args, where=where))
        if asked:
            found = infer_memories(self, [a for _, a in asked], [wheres[i] for i, _ in asked])
            for (i, _), memories in zip(asked, found, strict=True):
                per_item[i] = memories
        return [m for memories in per_item for m in memories]

    def _store(self, new: list[NewMemory]) -> list[dict[str, Any]]:
        if not new:
            return []
        if self._combiner is None or len(new) > COMBINE_MAX:
            return self._store_alone(new)
        return self._combiner.submit(new, len(new))

    def _store_alone(self, new: list[NewMemory], release: Release = lambda: None) -> list[dict[str, Any]]:
        """One call on its own: a group of one (no combiner, a large call, or a group that failed)."""
        (outcome,) = self._store_group([new], release)
        if isinstance(outcome, BaseException):
            raise outcome
        results: list[dict[str, Any]] = outcome
        return results

    def _store_group(self, calls: list[list[NewMemory]], release: Release) -> list[Any]:
        """The ``grouping.Combiner`` runner (and, for one call, ``_store_alone``): concurrent ``_store``
        calls in one lookup, one embed call and one group commit (``SQLiteStorage.insert_many``),
        each call still all or nothing. An outcome is a call's results or its exception."""
        outcomes: list[Any] = [None] * len(calls)
        todos: list[tuple[int, list[NewMemory]]] = []
        try:
            found = self._storage.existing(list(dict.fromkeys((m.scope, m.hash) for c in calls for m in c)))
            for i, new in enumerate(calls):
                try:
                    _check_given_ids(new, found)
                except ValueError as exc:
                    outcomes[i] = exc
                    continue
                todos.append((i, [m for m in new if (m.scope, m.hash) not in found]))
            texts = list(dict.fromkeys(m.memory for _, todo in todos for m in todo))
            vectors = self.embedder.embed(texts) if texts else np.empty((0, 0), dtype=np.float32)
        except Exception:
            if len(calls) == 1:
                raise
            return each_alone(lambda call: self._store_alone(call, release), calls)  # errors to their causes
        release()  # the engine is free: the next group may start while this one writes
        row = {t: i for i, t in enumerate(texts)}
        jobs = [(i, todo) for i, todo in todos if todo]
        batches = [(todo, vectors[[row[m.memory] for m in todo]]) for _, todo in jobs]
        if self._combiner is not None:  # capabilities.group_commit: one transaction for all
            stored = self._storage.insert_many(batches)
        else:  # one call (no combiner): its one transaction
            stored = [self._storage.insert(todo, vecs) for todo, vecs in batches]
        done = dict(zip((i for i, _ in jobs), stored, strict=True))
        for i, todo in todos:
            result = done.get(i, [])
            if isinstance(result, BaseException):
                outcomes[i] = result
            else:
                outcomes[i] = _results(calls[i], found, todo, result)
        return outcomes

    def update(
        self,
        memory_id: str,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        expiration_date: Any = bt.KEEP,
    ) -> dict[str, str]:
        """Replace the text (re-embedded), the metadata and/or the ``expiration_date`` (None: never
        expires; left out: unchanged) of one memory."""
        memory_id = _check_id(memory_id)
        if text is not None:
            text = check_text(text, "text", embedded=True)
        meta = check_metadata(metadata) if metadata is not None else None
        change = bt.Update(memory_id, text, meta, expiration_date)
        bt.apply(self._storage, lambda: self.embedder, [change])
        return {"message": "Memory updated successfully!"}

    def batch_update(self, memories: list[dict[str, Any]]) -> dict[str, str]:
        """Update many memories, all or nothing (Mem0's platform ``batch_update``): each item
        ``{"memory_id", "text"?, "metadata"?, "expiration_date"?}``; the new texts embedded in ONE
        call, then one transaction with one UPDATE event per memory. An unknown id changes nothing
        (``MemoryNotFound`` names it); at most ``batch.MAX_BATCH_CHANGES`` items."""
        changes = bt.updates(memories)
        bt.apply(self._storage, lambda: self.embedder, changes)
        return {"message": f"Successfully updated {len(changes)} memories"}

    def batch_delete(self, memories: list[dict[str, Any]]) -> dict[str, str]:
        """Delete many memories (items ``{"memory_id"}``) in one transaction, all or nothing: an
        unknown id deletes nothing (``MemoryNotFound`` names it). One DELETE event per memory."""
        ids = bt.deletions(memories)
        try:
            self._storage.delete_many(ids)
        except KeyError as exc:
            raise MemoryNotFound(f"Memory with id {exc.args[0]} not found; nothing was deleted") from None
        return {"message": f"Successfully deleted {len(ids)} memories"}

    def purge_expired(self) -> int:
        """Delete every memory whose ``expiration_date`` has passed (with DELETE events) → how many."""
        return self._storage.purge_expired(instant(datetime.now(UTC)))

    def delete(self, memory_id: str) -> dict[str, str]:
        if not self._storage.delete(_check_id(memory_id)):
            raise MemoryNotFound(f"Memory with id {memory_id} not found")
        return {"message": "Memory deleted successfully!"}

    def delete_all(
        self, user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None
    ) -> dict[str, str]:
        ids = {n: check_entity(n, v) for n, v in zip(ENTITIES, (user_id, agent_id, run_id), strict=True)}
        scope = {k: v for k, v in ids.items() if v}
        if not scope:
            raise ValueError(
                "At least one filter is required to delete all memories. If you want to delete all "
                "memories, use the `reset()` method."
            )
        where = flt.literal(scope)  # the ids as literals: never the filter shorthand
        assert where is not None
        self._storage.delete_where(where)
        return {"message": "Memories deleted successfully!"}

    def reset(self) -> None:
        """Delete every memory and all history in this store."""
        self._storage.reset()
        if self._embedder is not None:
            self._storage.bind_model(self._embedder.model_id, self._embedder.dim)

    # -- reads ---------------------------------------------------------------------------------

    def _where(self, filters: Any, user_id: Any, agent_id: Any, run_id: Any) -> flt.Node | None:
        scope: dict[str, str] = {}
        for n, v in zip(ENTITIES, (user_id, agent_id, run_id), strict=True):
            checked = check_entity(n, v)
            if checked is not None:
                scope[n] = checked
        return flt.and_(flt.literal(scope), flt.parse(filters))  # scope: literal equality

    def _live(self, where: flt.Node | None, show_expired: Any) -> flt.Node | None:
        """``where`` and "not expired now", unless ``show_expired`` or nothing is expired now (index
        seeks: a store where nothing has expired is searched exactly as before). Call it in the
        ``snapshot`` of the read it serves."""
        if _check_flag(show_expired, "show_expired"):
            return where
        expired, bound = self._storage.expiry_cut(instant(datetime.now(UTC)))
        if not expired:
            return where
        live = unexpired(bound)
        if isinstance(where, flt.Logic) and where.kind == "AND":  # kept flat: the scope stays on top
            return flt.Logic("AND", (*where.items, live))
        return flt.and_(where, live)

    def get(self, memory_id: str) -> dict[str, Any] | None:
        """The memory, or ``None`` for an unknown id (as Mem0)."""
        return self._storage.get(_check_id(memory_id))

    def get_all(
        self,
        *,
        filters: dict[str, Any] | None = None,
        top_k: int = 100,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        show_expired: bool = False,
    ) -> dict[str, list[dict[str, Any]]]:
        """Memories passing the scope and ``filters``, in insertion order (not by ``timestamp``);
        expired ones only with ``show_expired=True``."""
        where = self._where(filters, user_id, agent_id, run_id)
        k = _check_top_k(top_k)
        with self._storage.snapshot():
            return {"results": self._storage.list(self._live(where, show_expired), k)}

    def search(
        self,
        query: str,
        *,
        filters: dict[str, Any] | None = None,
        top_k: int = 20,
        threshold: float | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        mode: str = "hybrid",
        rerank: bool = False,
        show_expired: bool = False,
        explain: bool = False,
    ) -> dict[str, list[dict[str, Any]]]:
        """The ``top_k`` memories that best answer ``query`` among those that pass ``filters``.

        ``mode``: ``"hybrid"`` (default: keyword BM25 fused with vector similarity, see ``hybrid``),
        ``"vector"`` (cosine only) or ``"keyword"`` (BM25 only; no model is loaded). ``score`` is
        higher-is-better: the fused score, the cosine, or the BM25 relevance. ``threshold`` (Mem0's
        meaning) drops memories whose *cosine* is below it, in hybrid and vector mode. ``rerank=True``
        hands the best ``4 × top_k`` (at least 20) to the ``reranker`` given to ``Memory`` and returns
        its top ``top_k``. Both backends have all three modes and rank alike (docs/postgres.md).
        Expired memories are left out of both sides before ranking unless ``show_expired=True``.
        ``explain=True`` adds each hit's ``score_details`` (``hybrid.fuse``, ``rerank.apply``).
        """
        query = check_text(query, "query", embedded=True)
        where = self._where(filters, user_id, agent_id, run_id)
        k = _check_top_k(top_k)
        threshold = check_threshold(threshold)
        if mode not in hybrid.MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, hybrid.MODES))}, got {mode!r}")
        if mode == "keyword" and threshold is not None:
            raise ValueError("threshold is a cosine cut-off; keyword mode computes no cosine (omit it)")
        if mode == "keyword" and not self._storage.capabilities.keywords:
            raise ValueError(f"{self.location} has no keyword index yet: use mode='vector' or 'hybrid'")
        for flag, name in ((rerank, "rerank"), (show_expired, "show_expired"), (explain, "explain")):
            _check_flag(flag, name)
        reranker = self._reranker_for_search() if rerank else None
        terms = hybrid.query_terms(query) if mode != "vector" else []
        vector = None if mode == "keyword" else np.asarray(self.embedder.embed_one(query), dtype=np.float32)
        depth = max(rr.RERANK_DEPTH * k, 20) if rerank else k
        dates = hybrid.query_dates(self._storage, query) if mode == "hybrid" else None  # days it names

        def search() -> list[dict[str, Any]]:  # in a read snapshot, of a group on SQLite (searching.py)
            live = self._live(where, show_expired)
            return hybrid.rank(self._storage, mode, vector, terms, live, depth, threshold, explain, dates)

        hits = self._searches.run(search)
        if reranker is not None:
            hits = rr.apply(reranker, query, hits, k, explain)
        return {"results": hits}

    def history(
        self,
        memory_id: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every ADD / UPDATE / DELETE of this id, oldest first (as Mem0's history rows).

        ``user_id``/``agent_id``/``run_id``: only the events that happened in a scope with these
        ids (the HTTP API passes the API key's user). An id is never reused across scopes (a
        caller-chosen id another scope used is refused), so all of an id's events share a scope,
        except events of files made before history kept scopes (docs/memory.md)."""
        memory_id = _check_id(memory_id)
        ids = {n: check_entity(n, v) for n, v in zip(ENTITIES, (user_id, agent_id, run_id), strict=True)}
        scope = {k: v for k, v in ids.items() if v is not None}
        return self._storage.history(memory_id, scope or None)

    def count(self) -> int:
        return self._storage.count()

    def _reranker_for_search(self) -> rr.Reranker:
        """The reranker given to ``Memory``, else the LLM one ``HIVEMEM_LLM_URL`` names (built once)."""
        from hivemem.memory.llm_rerank import LLMReranker

        reranker: rr.Reranker = self._built_once(
            "_reranker",
            "_owns_reranker",
            lambda: LLMReranker.from_config(None),
            "rerank=True needs a reranker: Memory(..., reranker=<a hivemem.Reranker> or "
            "{'provider': 'llm', 'config': {...}}), or HIVEMEM_LLM_URL for the LLM reranker",
        )
        return reranker

    def close(self) -> None:
        self._storage.close()
        if self._owns_reranker and self._reranker is not None:
            close_reranker = getattr(self._reranker, "close", None)
            if close_reranker is not None:
                close_reranker()
            self._reranker, self._owns_reranker = None, False
        if self._owns_llm and self._llm is not None:
            self._llm.close()  # built here from a config or the environment, so ours to close
            self._llm, self._owns_llm = None, False
        if self._owns_embedder and self._embedder is not None:
            close = getattr(self._embedder, "close", None)
            if close is not None:
                close()
        self._embedder = None

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
