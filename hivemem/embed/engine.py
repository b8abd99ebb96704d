"""``hivemem.Embedder``: the in-process engine every other part stands on.

    >>> from hivemem import Embedder
    >>> emb = Embedder()                      # ONNX Runtime, the variant prepare() picked
    >>> emb.embed(["a cat sat", "a dog ran"]).shape
    (2, 384)

Path of a call: validate → cache (in-process LRU, then the machine-wide SQLite store) → the
micro-batching queue for the misses → backend. Results are stored in the cache by the queue's
worker after the callers have them. ``aembed`` never blocks its event loop: it checks the
in-process LRU on the loop (no I/O) and reads the SQLite file (and the shared tier) in a thread,
one thread hop and one query for all the requests that missed in the same turn of the loop; the
queue's worker hands a batch's results back to each event loop with one wake-up, not one per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hivemem.embed.cache import EmbeddingCache, Lookup
from hivemem.embed.protocol import Backend
from hivemem.embed.queue import MicroBatcher
from hivemem.embed.validate import check_text, check_texts, model_input

BackendName = Literal["onnx", "sentence-transformers", "openai"]

log = logging.getLogger(__name__)


def make_backend(
    backend: BackendName | str = "onnx",
    *,
    variant: str = "default",
    threads: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    url: str | None = None,
    api_key: str | None = None,
    openai_model: str = "all-MiniLM-L6-v2",
) -> Backend:
    """Build one backend by name (see the module docs of each for what it costs).

    ``batch_size``: texts per model run; ``None`` takes the size ``prepare`` measured fastest for the
    variant on this machine (ONNX) or 32.
    """
    if backend == "onnx":
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            Fail,
            InvalidGraph,
            InvalidProtobuf,
            NoSuchFile,
        )

        from hivemem.embed.mapped import REPAIR, ensure_mapped
        from hivemem.embed.model import lock_path, model_dir, prepared_manifest
        from hivemem.embed.onnx_backend import OnnxBackend, providers_for
        from hivemem.errors import ModelDamaged

        providers_for(device, ort.get_available_providers())  # a bad device fails before any export
        # first use, or an older recipe: prepared now, once, in a child process (torch never loads here)
        manifest = prepared_manifest()
        name = resolve_variant(manifest, variant, device)
        directory = model_dir()
        # the tables in their own file, mapped (a home of an older version is converted once, here);
        # a damaged file raises ModelDamaged before ONNX Runtime maps it
        manifest = ensure_mapped(directory, name, manifest, lock_path())
        report = manifest["variants"][name]
        try:
            return OnnxBackend(
                directory / report["file"],
                directory / "tokenizer.json",
                threads=threads,
                # prepare measured the batch size on this CPU; a GPU gets the usual 32 unless told
                batch_size=batch_size or (report.get("batch_size", 32) if device == "cpu" else 32),
                device=device,
                model_id=f"{manifest['model']}/onnx-{name}",
            )
        except (Fail, NoSuchFile, InvalidProtobuf, InvalidGraph) as e:
            # a file it cannot open or read: checked a moment ago, then changed (`prepare --force`)
            raise ModelDamaged(
                f"{directory / report['file']} could not be loaded ({str(e).strip()}): {REPAIR}"
            ) from None
    if backend == "sentence-transformers":
        from hivemem.embed.st_backend import SentenceTransformersBackend

        return SentenceTransformersBackend(threads=threads, batch_size=batch_size or 32, device=device)
    if backend == "openai":
        from hivemem.embed.openai_backend import OpenAIBackend

        if not url:
            raise ValueError("backend='openai' needs url='http://host:port/v1'")
        return OpenAIBackend(url, model=openai_model, api_key=api_key)
    raise ValueError(f"unknown backend {backend!r}: choose onnx, sentence-transformers or openai")


def resolve_variant(manifest: dict[str, Any], variant: str, device: str = "cpu") -> str:
    """The prepared variant that ``variant`` names on ``device``.

    ``"default"``/``"fast"`` are the variants ``prepare`` measured fastest on this machine's CPU; on a
    GPU they mean ``"fp32"``, because the int8 graphs are built for CPU kernels (per-token int8
    has no CUDA kernels for its blocked ``QuantizeLinear``) and a GPU runs fp32 fast anyway.
    """
    if variant in ("default", "fast"):
        return manifest[variant] if device == "cpu" else "fp32"
    report = manifest["variants"].get(variant)
    if report is None:
        raise ValueError(
            f"unknown variant {variant!r}: choose default, fast or one of {sorted(manifest['variants'])}"
        )
    if report.get("error"):
        raise ValueError(f"variant {variant!r} could not be built on this machine: {report['error']}")
    return variant


class Embedder:
    """Thread-safe, batching, caching embedder (see the module docstring).

    ``cache``: ``True`` (the machine-wide store), a path, an ``EmbeddingCache``, or ``False``.
    ``batching=False`` calls the backend directly under a lock (for one single-threaded user).
    """

    def __init__(
        self,
        backend: BackendName | str | Backend = "onnx",
        *,
        variant: str = "default",
        threads: int | None = None,
        device: str = "cpu",
        batch_size: int | None = None,
        batching: bool = True,
        max_batch: int = 256,
        max_wait_ms: float = 5.0,
        max_pending: int | None = None,
        cache: bool | str | Path | EmbeddingCache = True,
        url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if isinstance(backend, str):
            self.backend: Backend = make_backend(
                backend,
                variant=variant,
                threads=threads,
                batch_size=batch_size,
                device=device,
                url=url,
                api_key=api_key,
            )
        else:
            self.backend = backend
        if cache is True:
            self.cache: EmbeddingCache | None = EmbeddingCache()
        elif cache is False or cache is None:
            self.cache = None
        elif isinstance(cache, EmbeddingCache):
            self.cache = cache
        else:
            self.cache = EmbeddingCache(cache)
        self._queue: MicroBatcher | None = None
        self._lock: threading.Lock | None = None
        self._disk = _DiskLookups(self)
        self._inbox = _Inboxes()
        if batching:
            self._queue = MicroBatcher(
                self._encode_batch,
                max_batch=max_batch,
                max_wait_ms=max_wait_ms,
                max_pending=max_pending,
                on_batch=self._store if self.cache is not None else None,
                on_handed=self._inbox.flush,
            )
            self._inbox.worker = self._queue.thread
        else:
            self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    @property
    def dim(self) -> int:
        return self.backend.dim

    @property
    def truncated(self) -> int:
        """How many inputs so far were longer than the model's limit and were cut."""
        return self.backend.truncated

    def _none(self) -> np.ndarray:
        """The answer to no texts, at once: an empty call never reaches the queue (no batch
        counted, no ``max_wait_ms`` wait)."""
        return np.zeros((0, self.dim), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return self._none()
        if self._queue is None:
            return self._embed_direct(items)[0]
        if self.cache is None:
            vectors: np.ndarray = self._queue.call(items)
            return vectors
        out, todo = self._lookup(items)
        if len(todo) == len(items):
            vectors = self._queue.call(items)
            return vectors
        if todo:  # the misses wait on the queue (its ``call``: this thread blocks anyway)
            out[todo] = self._queue.call([items[i] for i in todo])
        return out

    def embed_one(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed([check_text(text)])[0]
        return vector

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        items = check_texts(texts)
        if not items:
            return self._none()
        if self._queue is None:
            return (await asyncio.to_thread(self._embed_direct, items))[0]
        vectors: np.ndarray = await self._inbox.wait(self._fill(items, *await self._alookup(items)))
        return vectors

    async def aembed_one(self, text: str) -> np.ndarray:
        vector: np.ndarray = (await self.aembed([check_text(text)]))[0]
        return vector

    async def aembed_counted(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """``aembed`` and the texts' token count (the HTTP ``usage``), each text tokenized once:
        the texts the model computes are counted by the backend as it tokenizes them; cache hits,
        which are never tokenized otherwise, are counted off the event loop."""
        items = check_texts(texts)
        if not items:
            return self._none(), 0
        if self._queue is None:
            return await asyncio.to_thread(self._embed_direct, items, True)
        out, todo = await self._alookup(items)
        computed = self._fill(items, out, todo, counted=True)
        missed = set(todo)
        hits = [t for i, t in enumerate(items) if i not in missed]
        tokens = await asyncio.to_thread(self.count_tokens, hits) if hits else 0
        vectors, counted = await self._inbox.wait(computed)
        if counted is None:  # a backend that does not count: count its texts here
            counted = await asyncio.to_thread(self.count_tokens, [items[i] for i in todo])
        return vectors, tokens + counted

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens of ``texts`` as the model would see them (its tokenizer when the backend has one,
        else whitespace-separated words)."""
        if not texts:
            return 0
        tokenizer = getattr(self.backend, "tokenizer", None)
        if tokenizer is not None:
            return sum(len(e.ids) for e in model_input(tokenizer, list(texts)))
        return sum(len(t.split()) for t in texts)

    def _encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """One queue batch through the backend, with the token counts it reports (if any)."""
        vectors = self.backend.encode(texts)
        return vectors, getattr(self.backend, "last_tokens", None)

    def _lookup(self, items: list[str]) -> tuple[np.ndarray, list[int]]:
        if self.cache is None:
            return self._assemble(items, [None] * len(items))
        return self._assemble(items, self.cache.get_many(self.model_id, self.dim, items))

    async def _alookup(self, items: list[str]) -> tuple[np.ndarray, list[int]]:
        """``_lookup`` for the event loop: the in-process LRU here, the SQLite file in a thread."""
        cache = self.cache
        if cache is None:
            return self._assemble(items, [None] * len(items))
        lookup = cache.lookup_memory(self.model_id, items)
        if lookup.missing and cache.needs_io:
            await self._disk.lookup(lookup)
        else:
            cache.lookup_rest(self.model_id, self.dim, lookup)  # nothing to read: counts the misses
        return self._assemble(items, lookup.found)

    def _assemble(self, items: list[str], found: list[np.ndarray | None]) -> tuple[np.ndarray, list[int]]:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        todo = []
        for i, vec in enumerate(found):
            if vec is None:
                todo.append(i)
            else:
                out[i] = vec
        return out, todo

    def _fill(self, items: list[str], out: np.ndarray, todo: list[int], counted: bool = False) -> Future[Any]:
        """Cache hits are in ``out`` already; the misses' rows arrive when the queue's batch is
        done. The future resolves to the vectors — with ``counted``, to ``(vectors, tokens of the
        misses)`` (None: the backend does not count)."""
        if not todo:
            done: Future[Any] = Future()
            done.set_result((out, 0) if counted else out)
            return done
        assert self._queue is not None
        pending = self._queue.submit([items[i] for i in todo], counted=counted)
        if len(todo) == len(items):
            return pending
        merged: Future[Any] = Future()
        # a cancelled call (its task was cancelled) cancels its misses too; they are never
        # computed if their batch has not started, and ``fill`` then has nothing to settle
        merged.add_done_callback(lambda m: pending.cancel() if m.cancelled() else None)

        def fill(f: Future[Any]) -> None:
            if merged.done():  # cancelled: nobody waits for these rows
                return
            with contextlib.suppress(InvalidStateError):  # cancelled on its loop's thread just now
                if f.cancelled():
                    merged.cancel()
                elif (error := f.exception()) is not None:
                    merged.set_exception(error)
                elif counted:
                    rows, tokens = f.result()
                    out[todo] = rows
                    merged.set_result((out, tokens))
                else:
                    out[todo] = f.result()
                    merged.set_result(out)

        pending.add_done_callback(fill)
        return merged

    def _embed_direct(self, items: list[str], counted: bool = False) -> tuple[np.ndarray, int]:
        """Without the queue: the misses through the backend under a lock; ``(vectors, tokens)``
        (tokens 0 unless ``counted``)."""
        out, todo = self._lookup(items)
        tokens = 0
        if counted and len(todo) < len(items):
            missed = set(todo)
            tokens = self.count_tokens([t for i, t in enumerate(items) if i not in missed])
        if todo:
            missing = [items[i] for i in todo]
            assert self._lock is not None
            with self._lock:
                vectors, counts = self._encode_batch(missing)
            out[todo] = vectors
            if counted:
                tokens += int(counts.sum()) if counts is not None else self.count_tokens(missing)
            self._store(missing, vectors)
        return out, tokens

    def _store(self, texts: list[str], vectors: np.ndarray) -> None:
        if self.cache is not None:
            self.cache.put_many(self.model_id, texts, vectors)

    def stats(self) -> dict[str, Any]:
        """Queue and cache counters of this process."""
        out: dict[str, Any] = {"model_id": self.model_id, "dim": self.dim, "truncated": self.truncated}
        if self._queue is not None:
            out["queue"] = _counters(
                self._queue, "depth", "batches", "texts_computed", "texts_deduplicated", "tokens"
            )
        if self.cache is not None:
            c = self.cache
            out["cache"] = _counters(c, "hits_memory", "hits_disk", "hits_shared", "misses")
            if c.shared is not None:
                out["cache"]["shared"] = c.shared.stats()
        return out

    def close(self) -> None:
        """Finish queued requests and release the model."""
        if self._queue is not None:
            self._queue.close()
        self.backend.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DiskLookups:
    """``aembed``'s cache lookups beyond the in-process tier, gathered per event loop: the
    requests that miss in one turn of the loop (the service reads many connections' frames per
    turn) share one thread hop and one SQLite query instead of one each."""

    def __init__(self, engine: Embedder) -> None:
        self._engine = engine
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Lookup, asyncio.Future[None]]]] = {}
        self._lock = threading.Lock()  # an engine may serve several loops (threads)

    async def lookup(self, lookup: Lookup) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            group = self._pending.get(loop)
            if group is None:
                self._pending[loop] = group = []
                loop.call_soon(self._flush, loop)  # after the loop's other ready callbacks
            group.append((lookup, done))
        await done

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            group = self._pending.pop(loop)
        engine = self._engine
        assert engine.cache is not None
        lookups = [lookup for lookup, _ in group]
        work = loop.run_in_executor(None, engine.cache.lookup_rest_many, engine.model_id, engine.dim, lookups)

        def settle(f: asyncio.Future[None]) -> None:
            error = None if f.cancelled() else f.exception()
            for _, done in group:
                if done.done():
                    continue  # its request was cancelled meanwhile
                if f.cancelled():
                    done.cancel()
                elif error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(None)

        work.add_done_callback(settle)


class _Inboxes:
    """``aembed``'s results on their way from the queue's worker thread to the event loops.

    ``asyncio.wrap_future`` costs one ``call_soon_threadsafe`` per call — a wake-up of the loop
    (a write to its self-pipe) from the worker, and the loop, woken, takes the GIL from the
    worker between two calls' hand-outs: 25 per batch when 25 service clients share it. Here the
    worker's results wait until the batch is handed out (the queue's ``on_handed``: ``flush``),
    then each loop is woken once for all of them. A result completed on any other thread wakes its
    loop at once. Cancelling the awaiting task cancels the call's ``Future`` (a call not yet in a
    batch is never computed), as with ``wrap_future``.
    """

    def __init__(self) -> None:
        self.worker: threading.Thread | None = None  # whose results wait for ``flush``
        self._lock = threading.Lock()
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._waiting: list[asyncio.AbstractEventLoop] = []  # loops with results, not yet woken

    async def wait(self, source: Future[Any]) -> Any:
        """``await asyncio.wrap_future(source)``, woken as described above."""
        if source.done():
            return source.result()
        loop = asyncio.get_running_loop()
        target: asyncio.Future[Any] = loop.create_future()
        source.add_done_callback(lambda f: self._post(loop, target, f))
        target.add_done_callback(lambda t: source.cancel() if t.cancelled() else None)
        return await target

    def _post(
        self, loop: asyncio.AbstractEventLoop, target: asyncio.Future[Any], source: Future[Any]
    ) -> None:
        with self._lock:
            inbox = self._inboxes.setdefault(loop, [])
            first = not inbox
            inbox.append((target, source))
            if not first:
                return  # a wake-up for this loop is on its way (or waits for ``flush``)
            if threading.current_thread() is self.worker:
                self._waiting.append(loop)
                return
        self._wake(loop)

    def flush(self) -> None:
        """Wake every loop that has results from the batch just handed out (worker thread)."""
        with self._lock:
            loops, self._waiting = self._waiting, []
        for loop in loops:
            self._wake(loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._drain, loop)
        except RuntimeError:  # the loop closed meanwhile: nobody awaits there
            with self._lock:  # its results hold the loop (each target's ``_loop``): let both go
                self._inboxes.pop(loop, None)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            inbox = self._inboxes.pop(loop, [])
        for target, source in inbox:
            _settle(target, source)


def _settle(target: asyncio.Future[Any], source: Future[Any]) -> None:
    """Give ``target`` the outcome of ``source``; never raises, so that one call's odd outcome
    cannot leave the calls settled after it waiting forever. An error an asyncio future refuses
    (``StopIteration``: TypeError) reaches the caller as a RuntimeError raised from it."""
    if target.done():  # its task was cancelled meanwhile
        return
    error = None if source.cancelled() else source.exception()
    try:
        if source.cancelled():
            target.cancel()
        elif error is not None:
            target.set_exception(error)
        else:
            target.set_result(source.result())
    except Exception as exc:
        log.warning("hivemem: could not hand an embedding call its outcome (%r): %r", error, exc)
        failure = RuntimeError(f"the embedding call failed: {error!r}")
        failure.__cause__ = error
        target.set_exception(failure)


def _counters(source: object, *names: str) -> dict[str, Any]:
    return {name: getattr(source, name) for name in names}
