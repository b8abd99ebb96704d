"""LangChain adapters (``pip install 'hivemem[langchain]'``).

* ``HivememEmbeddings``: LangChain ``Embeddings`` on hivemem's model: by default the machine's
  shared service (``hivemem.connect()``, one model and one cache for every process), or an
  in-process engine (``local=True``), or any ``hivemem.EmbedderLike`` you pass.
* ``HivememVectorStore``: a LangChain ``VectorStore`` over ``hivemem.Memory``. Documents are
  memories of one scope (``user_id``/``agent_id``/``run_id``; default ``agent_id="langchain"``), so
  the same memories are visible through ``hivemem.Memory``, its CLI and its HTTP API.
* ``LangChainEmbedder``: the other direction, any LangChain ``Embeddings`` as a
  ``hivemem.EmbedderLike`` (rows L2-normalised), so ``hivemem.Memory`` can store vectors of a model
  hivemem does not serve. ``HivememVectorStore(embedding=…)`` uses it.

Ids. A LangChain document id *is* the hivemem memory id. Without ids, hivemem generates uuid4
strings. hivemem keeps one copy of a text per scope, so ``add_texts(["a", "a"])`` stores one memory
and returns its id twice, and adding a text that is already stored returns the stored id (Mem0's
event ``NONE``). With ids, ``add_texts`` is an upsert: an id that exists gets the new text and
metadata (re-embedded, recorded as ``UPDATE`` in ``Memory.history``), adding the same documents
with the same ids again changes nothing. An id whose text is already stored under *another* id of
the scope, or an id taken by a memory of another scope, raises ``ValueError`` and nothing of the
call's new documents is written.

Metadata. A document's metadata is the memory's metadata. Keys that hivemem reserves for its own
fields (``id``, ``memory``, ``user_id``, … see ``hivemem.Memory.RESERVED_METADATA``) and keys that
start with ``lc_`` are stored with an ``lc_`` prefix and unescaped on the way back, so any LangChain
metadata round-trips exactly; filters are translated the same way.

Filters. ``filter=`` takes hivemem's (Mem0's) filter language, ``{"genre": "jazz", "year": {"gte":
2000}, "OR": [...]}``, and also its ``$``-spelling common in LangChain stores (``{"$and": [...],
"year": {"$gte": 2000}, "tag": {"$in": [...]}, "source": {"$exists": True}}``).

Scores. ``similarity_search_with_score`` returns the cosine similarity (higher is closer);
relevance scores are the same number clipped at 0.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

import hivemem

_PREFIX = "lc_"
_LOGICAL = {"$and": "AND", "$or": "OR", "$not": "NOT", "AND": "AND", "OR": "OR", "NOT": "NOT"}
_ID_CHUNK = 500  # ids per lookup query
DEFAULT_SCOPE = {"agent_id": "langchain"}


class HivememEmbeddings(Embeddings):
    """LangChain ``Embeddings`` served by hivemem (see the module docstring).

    ``embedder``: any ``hivemem.EmbedderLike``. Otherwise the shared service on ``socket_path``
    (default: ``$HIVEMEM_SOCKET`` or the per-user runtime dir; started if none runs), or with
    ``local=True`` an in-process ``hivemem.Embedder``. Created on first use.

        >>> emb = HivememEmbeddings(local=True)     # in-process; HivememEmbeddings(): the service
        >>> len(emb.embed_query("Alice is allergic to peanuts."))
        384
    """

    def __init__(self, embedder: Any = None, *, local: bool = False, socket_path: str | None = None) -> None:
        if sum((embedder is not None, local, socket_path is not None)) > 1:
            raise ValueError("pass either embedder=, or local=True, or socket_path=, not several")
        if embedder is not None and not isinstance(embedder, hivemem.EmbedderLike):
            raise TypeError(f"embedder must be a hivemem.EmbedderLike, got {type(embedder).__name__}")
        self.local = local
        # as hivemem.connect() resolves it: the argument, else $HIVEMEM_SOCKET, else the runtime dir
        self.socket_path = socket_path or (None if local else hivemem.Settings.from_env().socket)
        self._embedder: hivemem.EmbedderLike | None = embedder
        self._owned = embedder is None

    @property
    def embedder(self) -> hivemem.EmbedderLike:
        """The ``hivemem.EmbedderLike`` behind this object (connects on first use)."""
        if self._embedder is None:
            self._embedder = hivemem.Embedder() if self.local else hivemem.connect(self.socket_path)
        return self._embedder

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return _as_rows(self.embedder.embed(list(texts)))

    def embed_query(self, text: str) -> list[float]:
        return _as_row(self.embedder.embed_one(text))

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return _as_rows(await self.embedder.aembed(list(texts)))

    async def aembed_query(self, text: str) -> list[float]:
        return _as_row((await self.embedder.aembed([text]))[0])

    def close(self) -> None:
        """Release the embedder if this object created it."""
        if self._owned and self._embedder is not None:
            close = getattr(self._embedder, "close", None)  # EmbedderLike does not promise one
            if close is not None:
                close()
            self._embedder = None


class LangChainEmbedder:
    """Any LangChain ``Embeddings`` as a ``hivemem.EmbedderLike``.

    ``dim``: the vector width (asked from the model with one ``embed_query`` when omitted).
    ``model_id``: names the model in the store, which refuses vectors of another id (default: the
    class name, its ``model``/``model_name`` attribute if any, and the width). Rows are
    L2-normalised, as hivemem's scores are dot products.
    """

    def __init__(
        self, embeddings: Embeddings, *, dim: int | None = None, model_id: str | None = None
    ) -> None:
        if not isinstance(embeddings, Embeddings):
            raise TypeError(f"embeddings must be a LangChain Embeddings, got {type(embeddings).__name__}")
        self.embeddings = embeddings
        self._dim = dim
        self._model_id = model_id

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension probe"))
        return self._dim

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            cls = type(self.embeddings)
            name = getattr(self.embeddings, "model", None) or getattr(self.embeddings, "model_name", None)
            parts = ["langchain", f"{cls.__module__}.{cls.__qualname__}"]
            if isinstance(name, str) and name:
                parts.append(name)
            self._model_id = "/".join([*parts, str(self.dim)])
        return self._model_id

    def _matrix(self, rows: Any, n: int) -> np.ndarray:
        out = np.asarray(rows, dtype=np.float32) if n else np.empty((0, self.dim), np.float32)
        if out.shape != (n, self.dim):
            raise ValueError(
                f"{type(self.embeddings).__name__} returned shape {out.shape}, expected ({n}, {self.dim})"
            )
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray = out / np.where(norms > 0, norms, 1.0)
        return unit

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._matrix(self.embeddings.embed_documents(texts) if texts else [], len(texts))

    def embed_one(self, text: str) -> np.ndarray:
        one: np.ndarray = self._matrix([self.embeddings.embed_query(text)], 1)[0]
        return one

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        return self._matrix(await self.embeddings.aembed_documents(texts) if texts else [], len(texts))


def _escape(key: str) -> str:
    return _PREFIX + key if key in hivemem.Memory.RESERVED_METADATA or key.startswith(_PREFIX) else key


def _unescape(key: str) -> str:
    return key[len(_PREFIX) :] if key.startswith(_PREFIX) else key


def _to_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    return {_escape(k) if isinstance(k, str) else k: v for k, v in metadata.items()}


def _document(record: dict[str, Any]) -> Document:
    meta = {_unescape(k): v for k, v in (record.get("metadata") or {}).items()}
    return Document(id=record["id"], page_content=record["memory"], metadata=meta)


def _op(op: Any) -> Any:
    return op[1:] if isinstance(op, str) and op.startswith("$") else op


def translate_filter(flt: dict[str, Any] | None) -> dict[str, Any] | None:
    """A LangChain-side filter → hivemem's filter language (keys escaped, ``$`` operators mapped)."""
    if flt is None:
        return None
    if not isinstance(flt, dict):
        raise TypeError(f"filter must be a dict, got {type(flt).__name__}")
    out: dict[str, Any] = {}
    for key, spec in flt.items():
        if key in _LOGICAL:
            items = [spec] if isinstance(spec, dict) else spec
            if not isinstance(items, list | tuple):
                raise TypeError(f"filter {key!r} needs a list of filters, got {type(spec).__name__}")
            out.setdefault(_LOGICAL[key], []).extend(translate_filter(s) for s in items)
            continue
        if not isinstance(key, str):
            raise TypeError(f"filter keys must be strings, got {key!r}")
        field = _escape(key)
        if isinstance(spec, dict):
            ops = {_op(op): v for op, v in spec.items()}
            exists = ops.pop("exists", None)
            if exists is not None:
                if not isinstance(exists, bool):
                    raise TypeError(f"filter {key!r}: $exists needs True or False")
                if exists:
                    out.setdefault("AND", []).append({field: "*"})
                else:
                    out.setdefault("NOT", []).append({field: "*"})
            if ops:
                out[field] = ops
            continue
        out[field] = spec
    return out


class HivememVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over ``hivemem.Memory`` (see the module docstring).

    ``memory``: an open ``hivemem.Memory`` (its embedder is used). Otherwise one is opened at
    ``path`` (default ``$HIVEMEM_HOME/memory.sqlite``) embedding with ``embedding`` (any LangChain
    ``Embeddings``; default: hivemem's own model, through the service when one runs).

        >>> store = HivememVectorStore(user_id="alice")
        >>> store.add_texts(["Alice is allergic to peanuts."], [{"topic": "health"}])
        ['...']
        >>> store.similarity_search("food allergies", k=1, filter={"topic": "health"})
        [Document(id='...', metadata={'topic': 'health'}, page_content='Alice is allergic to peanuts.')]
    """

    def __init__(
        self,
        memory: Any = None,
        embedding: Embeddings | None = None,
        *,
        path: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        if memory is not None and (embedding is not None or path is not None):
            raise ValueError("pass memory=, or embedding=/path= to open one, not both")
        self._owns_memory = memory is None
        if memory is None:
            embedder: hivemem.EmbedderLike | None
            if isinstance(embedding, HivememEmbeddings):
                embedder = embedding.embedder
            else:
                embedder = LangChainEmbedder(embedding) if embedding is not None else None
            memory = hivemem.Memory(path, embedder=embedder)
        elif not isinstance(memory, hivemem.Memory):
            raise TypeError(f"memory must be a hivemem.Memory, got {type(memory).__name__}")
        self.memory = memory
        self._embedding = embedding
        scope = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
        self.scope: dict[str, str] = {k: v for k, v in scope.items() if v is not None} or dict(DEFAULT_SCOPE)

    @property
    def embeddings(self) -> Embeddings:
        if self._embedding is None:
            self._embedding = HivememEmbeddings(self.memory.embedder)
        return self._embedding

    # -- writes --------------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store ``texts``; returns their ids (an upsert for ids that exist, see the module docstring).
        An id of ``None`` in ``ids`` lets the store choose that text's id."""
        texts = list(texts)
        n = len(texts)
        metadatas = list(metadatas) if metadatas is not None else [{}] * n
        keys: list[str | None] = list(ids) if ids is not None else [None] * n
        if len(metadatas) != n or len(keys) != n:
            raise ValueError(f"{n} texts but {len(metadatas)} metadatas and {len(keys)} ids")
        given = [i for i in keys if i is not None]
        if len(set(given)) != len(given):
            raise ValueError("ids must be unique within one call")
        stored = self._records(given)
        out: list[str | None] = list(keys)
        items: list[dict[str, Any]] = []
        where: list[int] = []
        updates: list[tuple[str, str | None, dict[str, Any]]] = []  # (id, new text or None, metadata)
        for i, (text, meta, doc_id) in enumerate(zip(texts, metadatas, keys, strict=True)):
            meta = _to_metadata(meta)
            old = stored.get(doc_id) if doc_id is not None else None
            if old is None:
                item = {"messages": text, "metadata": meta, **self.scope}
                if doc_id is not None:
                    item["id"] = doc_id
                items.append(item)
                where.append(i)
            elif doc_id is not None and (old["memory"] != text or (old.get("metadata") or {}) != meta):
                updates.append((doc_id, text if old["memory"] != text else None, meta))
        if items:  # first: all new documents in one transaction, or none of them
            results = self.memory.add_batch(items)["results"]
            for i, result in zip(where, results, strict=True):
                out[i] = result["id"]
        for key, new_text, new_meta in updates:  # then overwrite by id (LangChain's upsert), one by one
            self.memory.update(key, text=new_text, metadata=new_meta)
        return [str(i) for i in out]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete these ids of this store's scope (unknown ids are ignored); ``None``: all of them."""
        if ids is None:
            self.memory.delete_all(**self.scope)
            return True
        for memory_id in self._records(list(ids)):
            self.memory.delete(memory_id)
        return True

    # -- reads ---------------------------------------------------------------------------------

    def _records(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The records of this scope among ``ids``, by id."""
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            found = self.memory.get_all(filters={"id": {"in": chunk}}, top_k=len(chunk), **self.scope)
            out.update((r["id"], r) for r in found["results"])
        return out

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids, in the order asked; unknown ids are left out."""
        found = self._records(list(ids))
        return [_document(found[i]) for i in ids if i in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` closest documents with their cosine similarity, among those passing ``filter``
        (vector mode: a LangChain vector store's scores are similarities, not hybrid scores)."""
        hits = self.memory.search(
            query, filters=translate_filter(filter), top_k=k, mode="vector", **self.scope
        )["results"]
        return [(_document(r), float(r["score"])) for r in hits]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return _relevance

    # -- async: the same calls on a worker thread (the embedder's queue batches across threads) ---

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return await asyncio.to_thread(self.add_texts, list(texts), metadatas, ids=ids)

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.delete, ids)

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await asyncio.to_thread(self.similarity_search_with_score, query, k, filter)

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return await asyncio.to_thread(self.similarity_search, query, k, filter)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> HivememVectorStore:
        """A store at ``path`` (or the default file) in the given scope, filled with ``texts``."""
        store = cls(embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def close(self) -> None:
        """Close the ``hivemem.Memory`` if this store opened it."""
        if self._owns_memory:
            self.memory.close()


def _relevance(score: float) -> float:
    return max(0.0, min(1.0, score)) if math.isfinite(score) else 0.0


def _as_row(vector: np.ndarray) -> list[float]:
    """A vector as the float list the framework takes (numpy's ``tolist`` is typed ``Any``)."""
    row: list[float] = vector.tolist()
    return row


def _as_rows(matrix: np.ndarray) -> list[list[float]]:
    rows: list[list[float]] = matrix.tolist()
    return rows
