"""``run_parallel``: run a function over many items on warm workers, resumably.

Built for eval harnesses and batch jobs: each result is appended to a JSONL file the moment it
completes, so killing the runner (or the machine) loses at most the items that were in flight,
and running the same command again skips everything already recorded. An item that raises is
recorded with its traceback instead of stopping the run.

A *setup* error is the run's, not an item's: a factory that fails, or a job that cannot be loaded
where it runs, would fail every item the same way. The first one, on any worker, stops the run
with :class:`RunSetupError` (where it happened and the user's traceback) and records nothing for
it, so a plain rerun after the fix processes every item (docs/pool.md says why the first).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from hivemem.errors import RunSetupError, WorkerInitError
from hivemem.infra import registry
from hivemem.pool.failures import RemoteTraceback, callable_name, setup_stopped, user_traceback
from hivemem.pool.pool import Kind, WorkerPool
from hivemem.pool.results import Key, ResultsFile, error_fields


@dataclass
class RunSummary:
    """What a run did. ``records`` holds every record only when no results file was given."""

    total: int
    skipped: int
    ok: int
    errors: int
    seconds: float
    results: Path | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


def _no_object() -> None:
    """Factory used when the caller has none: workers hold ``None``."""
    return None


def _apply(fn: Callable[..., Any], pass_obj: bool, obj: Any, item: Any) -> tuple[Any, float]:
    """Runs in the worker: call ``fn`` the way the caller asked and time it there."""
    started = time.perf_counter()
    result = fn(obj, item) if pass_obj else fn(item)
    return result, time.perf_counter() - started


def _default_key(index: int, item: Any) -> Any:
    if isinstance(item, dict) and "id" in item:
        return item["id"]
    return index


def _keys(items: list[Any], key: Callable[[Any], Any] | str | None) -> list[Key]:
    key_fn: Callable[[int, Any], Any]
    if isinstance(key, str):
        field_name = key

        def by_field(i: int, item: Any) -> Any:
            try:
                return item[field_name]
            except (KeyError, TypeError, IndexError):
                raise ValueError(f"item {i} has no field {field_name!r} to use as its key") from None

        key_fn = by_field
    elif key is None:
        key_fn = _default_key
    elif callable(key):
        call = key

        def by_callable(i: int, item: Any) -> Any:
            return call(item)

        key_fn = by_callable
    else:
        raise TypeError(f"key must be a callable, a field name or None, got {key!r}")
    keys: list[Key] = []
    seen: dict[Key, int] = {}
    for i, item in enumerate(items):
        k = key_fn(i, item)
        if isinstance(k, bool) or not isinstance(k, str | int):
            raise TypeError(f"item {i}: key must be a str or int (it goes into the results file), got {k!r}")
        if k in seen:
            raise ValueError(f"items {seen[k]} and {i} have the same key {k!r}; keys must be unique")
        seen[k] = i
        keys.append(k)
    return keys


def _error_record(k: Key, exc: BaseException) -> dict[str, Any]:
    return {"key": k, **error_fields(exc)}


class Recorder:
    """Where each outcome goes the moment it is known: the results file (or the summary's
    ``records``), the counters and the progress bar. Shared by the local and the cluster engine."""

    def __init__(self, store: ResultsFile | None, summary: RunSummary, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.store = store
        self.summary = summary
        self.done: set[Key] = set()
        self.bar = tqdm(
            total=summary.total, initial=summary.skipped, disable=not progress, unit="item", smoothing=0.1
        )

    def __call__(self, rec: dict[str, Any]) -> None:
        if rec["key"] in self.done:  # never twice, whatever an engine reports
            return
        if self.store is not None:
            try:
                self.store.append(rec)
            except (TypeError, ValueError) as exc:  # result not JSON-serializable
                rec = _error_record(rec["key"], TypeError(f"the result cannot be stored as JSON: {exc}"))
                self.store.append(rec)
        else:
            self.summary.records.append(rec)
        self.done.add(rec["key"])
        if rec["ok"]:
            self.summary.ok += 1
        else:
            self.summary.errors += 1
        self.bar.update(1)
        self.bar.set_postfix(errors=self.summary.errors, refresh=False)

    def close(self) -> None:
        self.bar.close()


def run_parallel(
    items: Iterable[Any],
    fn: Callable[..., Any],
    workers: int | None = None,
    factory: Callable[[], Any] | None = None,
    results: str | os.PathLike[str] | None = None,
    key: Callable[[Any], Key] | str | None = None,
    *,
    kind: Kind = "process",
    retry_errors: bool = False,
    timeout: float | None = None,
    progress: bool = True,
    fsync: bool = False,
    cluster: Any = None,
) -> RunSummary:
    """Run ``fn`` over ``items`` on ``workers`` warm workers; record each outcome as it completes.

    With ``factory``, each worker builds ``obj = factory()`` once and calls ``fn(obj, item)``;
    without, ``fn(item)``. ``results`` is a JSONL file: one ``{"key", "ok", "result"|"error",
    "traceback", "seconds"}`` record per item. Items already recorded there are skipped, so
    re-running after a crash finishes the job; ``retry_errors=True`` also re-runs the recorded
    failures (their old records are replaced). ``key`` names each item: a callable, a field
    name, or by default the item's ``"id"`` field, else its index.

    ``cluster``: a Dask scheduler address (``"tcp://host:8786"``), a ``distributed.Client`` or a
    cluster object (``LocalCluster``): run on its workers instead of local ones (``cluster``
    extra; see :mod:`hivemem.pool.cluster` and docs/cluster.md). ``workers`` and ``kind`` are
    then the cluster's; ``timeout`` is not supported there.
    """
    started = time.perf_counter()
    items = list(items)
    keys = _keys(items, key)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if factory is not None and not callable(factory):
        raise TypeError(f"factory must be callable (it builds each worker's object), got {factory!r}")
    if cluster is not None and timeout is not None:
        raise ValueError(
            "timeout is not supported with cluster=: a Dask worker thread cannot be killed; "
            "bound the time inside fn instead"
        )
    if kind == "process" and cluster is None:
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"fn {fn!r} cannot be sent to worker processes ({exc}); define it at module level "
                "or use kind='thread'"
            ) from None
    store = ResultsFile(results, fsync=fsync) if results is not None else None
    summary = RunSummary(
        total=len(items), skipped=0, ok=0, errors=0, seconds=0.0, results=store.path if store else None
    )
    if store is not None:
        store.open()
    try:
        done: set[Key] = set()
        if store is not None:
            wanted = set(keys)
            if retry_errors:
                store.drop({k for k, r in store.records.items() if not r["ok"] and k in wanted})
            done = {k for k in store.records if k in wanted}
        todo = [(k, item) for k, item in zip(keys, items, strict=True) if k not in done]
        summary.skipped = len(items) - len(todo)
        entry = _register(store, summary) if todo else None
        if todo:
            record = Recorder(store, summary, progress)
            try:
                if cluster is not None:
                    from hivemem.pool.cluster import run_on_cluster

                    run_on_cluster(cluster, todo, fn, factory, record, plugin_name=_plugin_name(store))
                else:
                    _run(todo, fn, workers, factory, kind, timeout, record)
            except BaseException as exc:
                _finish(entry, "failed", type(exc).__name__)
                raise
            finally:
                record.close()
            _finish(entry, "finished", None)
    finally:
        if store is not None:
            store.close()
    summary.seconds = time.perf_counter() - started
    return summary


RUNS = "runs"  # the registry kind (hivemem.infra.registry) the fleet page lists


def _register(store: ResultsFile | None, summary: RunSummary) -> dict[str, Any] | None:
    """Record the run in the machine's run registry (runs with a results file only: the fleet page
    counts their progress there). Best effort: a registry that cannot be written never stops a run."""
    if store is None:
        return None
    entry: dict[str, Any] = {
        **registry.here(),
        "results": str(store.path.resolve()),
        "total": summary.total,
        "skipped": summary.skipped,
        "started": time.time(),
        "state": "running",
    }
    try:
        entry["_path"] = str(registry.put(RUNS, f"{entry['pid']}-{uuid.uuid4().hex[:8]}", entry))
    except (OSError, ValueError):
        return None
    return entry


def _finish(entry: dict[str, Any] | None, state: str, error: str | None) -> None:
    """Mark the registered run finished (or failed, naming the exception) in place."""
    if entry is None:
        return
    path = Path(entry.pop("_path"))
    entry.update(state=state, ended=time.time(), error=error)
    with contextlib.suppress(OSError, ValueError):
        registry.put(RUNS, path.stem, entry)


def _plugin_name(store: ResultsFile | None) -> str:
    """Names the run's factory plugin on the cluster's workers. Derived from the results file, so a
    rerun after a driver crash replaces the plugin the crashed run left behind instead of adding one."""
    if store is None:
        return f"hivemem-run-{uuid.uuid4().hex[:16]}"
    where = f"{socket.gethostname()}:{store.path.resolve()}".encode()
    return f"hivemem-run-{hashlib.blake2b(where, digest_size=8).hexdigest()}"


def _setup_error(
    err: WorkerInitError, fn: Callable[..., Any], factory: Callable[[], Any] | None
) -> RunSetupError:
    """The run-stopping error for a worker that could not set up (see :class:`WorkerInitError`)."""
    cause = err.__cause__
    where = err.where or "a worker"
    if isinstance(cause, RemoteTraceback):  # the worker process could not load the job's function
        return setup_stopped(f"{callable_name(fn)} cannot be loaded", where, cause.tb)
    if cause is None:
        return setup_stopped("a worker could not set up", where, str(err))
    remote = cause.__cause__
    tb = remote.tb if isinstance(remote, RemoteTraceback) else user_traceback(cause)
    return setup_stopped(f"the factory {callable_name(factory)} failed", where, tb)


def _run(
    todo: list[tuple[Key, Any]],
    fn: Callable[..., Any],
    workers: int | None,
    factory: Callable[[], Any] | None,
    kind: Kind,
    timeout: float | None,
    record: Recorder,
) -> None:
    size = min(workers or os.cpu_count() or 1, len(todo))
    pool = WorkerPool(factory or _no_object, size=size, kind=kind)
    pending: dict[Future[Any], Key] = {}
    window = 2 * size  # enough to keep every worker fed; small so a crash loses little
    queue = iter(todo)
    call = partial(_apply, fn, factory is not None)  # travels apart from the item: see _child._run
    clean = False
    try:
        try:
            pool.wait_ready()  # every factory runs at once; the first one that fails stops the run
        except WorkerInitError as exc:
            raise _setup_error(exc, fn, factory) from None
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < window:
                nxt = next(queue, None)
                if nxt is None:
                    exhausted = True
                    break
                k, item = nxt
                try:
                    fut = pool.submit(call, item, timeout=timeout)
                except TypeError as exc:  # this item cannot be pickled: its own error, not the run's
                    record(_error_record(k, exc))
                    continue
                pending[fut] = k
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            setup: WorkerInitError | None = None
            for fut in finished:
                k = pending.pop(fut)
                error = fut.exception()
                if isinstance(error, WorkerInitError):  # setup, not this item: record nothing for it
                    setup = setup or error
                elif error is not None:
                    record(_error_record(k, error))
                else:
                    result, seconds = fut.result()
                    record({"key": k, "ok": True, "result": result, "seconds": round(seconds, 6)})
            if setup is not None:
                raise _setup_error(setup, fn, factory) from None
        clean = True
    finally:
        # On an interrupt or a setup error, don't wait for in-flight items (they are redone by the
        # rerun): their process workers are killed, and joined, so none outlives the run.
        pool.close(wait=True, cancel_pending=not clean, kill_running=not clean)
