"""``run_parallel(..., cluster=...)``: the same resumable run, sharded over a Dask distributed cluster.

Why Dask and not Ray (measured on these machines, ``shared/FACTS.md``): a Dask worker is a plain
Python process of ~70 MB that starts in seconds and runs 1,000 tiny tasks in ~4.8 s; Ray needs
0.7–1.3 GB RSS and 4–9 s to initialise before the first task. A batch job over warm agents needs
neither Ray's actors nor its object store: a worker plugin gives "build once per worker", and
Dask already reschedules the tasks of a worker that dies.

How the run maps onto Dask:

* **Warm objects.** ``factory`` travels in a ``WorkerPlugin`` registered under a name derived from
  the results file. Every worker (also one that joins or is restarted by its nanny later) starts
  building its object in a background thread the moment it gets the plugin; items wait for it.
  A factory that raises fails the items that need it and is tried again by the next one, as in
  the local pool. A rerun after a driver crash registers the same name, which replaces (tears
  down) what the crashed run left on the workers; a clean run unregisters it.
* **Bounded in-flight work.** At most ``16 × the cluster's threads`` items are submitted at a
  time (about 2 per thread sit on the workers, the rest wait on the scheduler, ready the moment a
  thread frees up); each completion submits the next one, so a 10-million-item job holds a small
  window of futures, a driver crash redoes at most that window and a worker crash only its own
  few items.
* **Results on the driver.** Workers send each outcome back; the driver alone appends it to the
  JSONL file, once per key (:class:`hivemem.pool.runner.Recorder`). When a worker dies, Dask
  reruns its tasks elsewhere; since only completed futures are recorded, and each future
  completes once, an item is neither lost nor recorded twice (its *side effects* may happen
  twice: it ran twice).
* **Crashes in user code.** The task wrapper catches every exception, ``SystemExit`` included,
  and returns it as that item's error record, with the worker-side traceback. A crash that
  kills the worker process (``os._exit``, a segfault) is retried by Dask on other workers up to
  ``distributed.scheduler.allowed-failures`` times (default 3), then recorded as ``KilledWorker``.

Workers need hivemem and the code of ``fn``/``factory`` importable (functions defined in the
driver's ``__main__`` travel by value through cloudpickle). With ``--nthreads N > 1`` a worker
runs N items at once *on the same object*; use ``--nthreads 1`` (one worker per core) for agents
that are not thread-safe, the same one-call-at-a-time contract as the local pool.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hivemem.pool.errors import WorkerInitError, worker_exited
from hivemem.pool.results import error_fields

try:
    import distributed
except ImportError as exc:  # pragma: no cover - the optional extra is part of dev
    raise ImportError(
        "run_parallel(cluster=...) needs Dask distributed: pip install 'hivemem[cluster]'"
    ) from exc

if TYPE_CHECKING:
    from hivemem.pool.results import Key
    from hivemem.pool.runner import Recorder

_CONNECT_TIMEOUT_S = 30.0
_PROBE_TIMEOUT_S = 5.0
_WAIT_WORKERS_S = 120.0
# Items in flight per worker thread. Dask keeps about 2 per thread on the workers and the rest queued
# on the scheduler, so a worker's next item is there when one ends: with 2 per thread a worker
# idled 10.7 ms p50 between 5 ms items (a driver round trip), with 8 3.1 ms, with 16 1.1 ms
# (benchmarks/cluster.py, 2 workers on 2 cores). A driver crash redoes at most this window.
WINDOW_PER_THREAD = 16
_REFRESH_WINDOW_S = 2.0  # how often the window follows workers joining or leaving


class FactoryPlugin(distributed.WorkerPlugin):
    """Builds one object per worker process; the items of the run share it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def setup(self, worker: Any = None) -> None:
        self.obj: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()
        # Build in the background: setup runs on the worker's event loop, which must keep
        # answering the scheduler's heartbeats while a model loads for a minute.
        threading.Thread(target=self._build, name="hivemem-factory", daemon=True).start()

    def _build(self) -> None:
        with self.lock:
            try:
                self.obj, self.error = self.factory(), None
            except BaseException as exc:  # SystemExit in a factory must not take the worker down
                self.obj, self.error = None, exc
            finally:
                self.ready.set()

    def get(self) -> Any:
        """The worker's object; after a failed factory, one more attempt for this item."""
        self.ready.wait()
        if self.error is not None:
            self._build()
            err = self.error
            if err is not None:
                raise WorkerInitError(f"the factory failed: {type(err).__name__}: {err}") from err
        return self.obj

    def discard(self) -> None:
        """Drop the object (its call asked the worker to stop); the next item builds a new one."""
        with self.lock:
            self.obj, self.error = None, RuntimeError("the object was discarded")

    def teardown(self, worker: Any = None) -> None:
        self.obj = None


def run_item(plugin_name: str | None, fn: Callable[..., Any], item: Any) -> tuple[bool, Any, float]:
    """Runs on a cluster worker: ``(True, result, seconds)`` or ``(False, error fields, 0.0)``.

    Never raises, so Dask never retries a failure of user code. ``SystemExit`` and other
    non-``Exception`` errors fail the item with ``WorkerExited``, as in the local pool, and the
    worker's object is rebuilt by the factory for its next item."""
    plugin: Any = None  # this worker's _WarmObjects plugin
    try:
        if plugin_name is None:
            started = time.perf_counter()
            result = fn(item)
        else:
            plugin = distributed.get_worker().plugins.get(plugin_name)
            if plugin is None:
                raise WorkerInitError(f"this worker has no plugin {plugin_name!r} (the run was unregistered)")
            obj = plugin.get()
            started = time.perf_counter()
            result = fn(obj, item)
        return True, result, time.perf_counter() - started
    except Exception as exc:
        return False, error_fields(exc), 0.0
    except BaseException as exc:  # sys.exit() in user code: this item fails, the worker lives on
        name = getattr(fn, "__qualname__", None) or repr(fn)
        err = worker_exited(exc, name, f"Dask worker process {os.getpid()}")
        err.__cause__ = exc
        if plugin is not None:
            plugin.discard()
        return False, error_fields(err), 0.0


def _probe() -> str:
    import hivemem

    return hivemem.__version__


def connect_cluster(cluster: Any) -> tuple[Any, bool]:
    """``(client, owned)`` for an address, a ``distributed.Client`` or a cluster object."""
    if isinstance(cluster, distributed.Client):
        return cluster, False
    target = cluster if isinstance(cluster, str) else getattr(cluster, "scheduler_address", None)
    if not isinstance(target, str) or not target:
        raise TypeError(
            f"cluster must be a scheduler address ('tcp://host:8786'), a distributed.Client or a "
            f"cluster object, got {type(cluster).__name__}"
        )
    _check_reachable(target)
    try:
        client = distributed.Client(target, timeout=_CONNECT_TIMEOUT_S, set_as_default=False)
    except OSError as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {target}: {exc}") from None
    return client, True


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Dask's 30 s of connection retries, when nothing listens."""
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return  # tls://, ucx://, inproc://: leave it to Dask
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Dask scheduler address looks like 'tcp://host:8786', got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def _window(client: Any) -> int:
    """Items in flight: enough that a worker finds its next item queued when one ends, although
    the driver learns of the end one scheduler round trip later."""
    return WINDOW_PER_THREAD * max(1, sum(client.nthreads().values()))


def run_on_cluster(
    cluster: Any,
    todo: list[tuple[Key, Any]],
    fn: Callable[..., Any],
    factory: Callable[[], Any] | None,
    record: Recorder,
    *,
    plugin_name: str,
) -> None:
    """Run ``todo`` on the cluster's workers, handing each outcome to ``record`` as it arrives."""
    client, owned = connect_cluster(cluster)
    registered = False
    pending: dict[Any, Key] = {}
    clean = False
    try:
        try:
            client.wait_for_workers(1, timeout=_WAIT_WORKERS_S)
        except TimeoutError:
            raise RuntimeError(
                f"the Dask cluster at {client.scheduler.address} has no worker after {_WAIT_WORKERS_S:g} s"
            ) from None
        try:
            client.run(_probe)
        except Exception as exc:
            raise RuntimeError(
                f"a worker of {client.scheduler.address} cannot import hivemem ({type(exc).__name__}: "
                f"{exc}); install hivemem and your code on every worker"
            ) from None
        if factory is not None:
            client.register_plugin(FactoryPlugin(factory), name=plugin_name)
            registered = True
        name = plugin_name if factory is not None else None
        items = iter(todo)
        window, refreshed = _window(client), time.monotonic()
        done = distributed.as_completed(loop=client.loop)

        def submit_more() -> None:
            while len(pending) < window:
                nxt = next(items, None)
                if nxt is None:
                    return
                k, item = nxt
                try:
                    fut = client.submit(run_item, name, fn, item, pure=False)
                except Exception as exc:  # this item cannot be serialized: its own error
                    record({"key": k, **error_fields(exc)})
                    continue
                pending[fut] = k
                done.add(fut)

        submit_more()
        try:
            while pending:
                batch = done.next_batch(block=True)
                _collect(client, batch, pending, done, record)
                if time.monotonic() - refreshed > _REFRESH_WINDOW_S:
                    window, refreshed = _window(client), time.monotonic()
                submit_more()
        except Exception as exc:
            if client.status == "running" and not isinstance(exc, _SchedulerLost):
                raise
            raise RuntimeError(
                f"lost the Dask scheduler at {client.scheduler.address} ({exc or type(exc).__name__}); "
                f"{len(pending)} items in flight were not recorded: run the same command again to "
                "finish (recorded items are skipped)"
            ) from None
        clean = True
    finally:
        # Best effort after a failure: the scheduler may be gone, and the first error is the news.
        with contextlib.suppress(*((Exception,) if not clean else ())):
            if pending:
                client.cancel(list(pending), force=True)
            if registered:
                client.unregister_worker_plugin(plugin_name)
        if owned:
            with contextlib.suppress(Exception):
                client.close(timeout=5)


def _lost_connection(exc: BaseException) -> bool:
    """An error of the connection to the cluster, not of the item."""
    return isinstance(exc, OSError | TimeoutError) or type(exc).__name__ in (
        "CommClosedError",
        "FutureCancelledError",
        "CancelledError",
    )


class _SchedulerLost(Exception):
    """The scheduler went away (or restarted and forgot the run): stop, record nothing more."""


def _collect(client: Any, batch: list[Any], pending: dict[Any, Key], done: Any, record: Recorder) -> None:
    """Record the finished futures of ``batch``; put back any whose result was lost meanwhile."""
    finished = [f for f in batch if f.status == "finished"]
    outcomes: dict[Any, Any] = {}
    if finished:
        try:
            outcomes = dict(zip(finished, client.gather(finished), strict=True))
        except Exception:
            for fut in finished:  # one at a time, to find the one that cannot come back
                try:
                    outcomes[fut] = fut.result(timeout=_CONNECT_TIMEOUT_S)
                except Exception as exc:
                    if client.status != "running" or fut.status == "cancelled" or _lost_connection(exc):
                        raise _SchedulerLost(f"{type(exc).__name__}: {exc}") from exc
                    if fut.status in ("pending", "lost"):  # its worker died before we got the result
                        done.add(fut)  # Dask recomputes it; wait for it again
                        continue
                    outcomes[fut] = (False, error_fields(exc), 0.0)  # e.g. cannot be unpickled here
    for fut in batch:
        if fut in outcomes:
            ok, value, seconds = outcomes[fut]
        elif fut.status == "error":  # only Dask's own errors: KilledWorker after repeated deaths
            error = fut.exception(timeout=_CONNECT_TIMEOUT_S)
            if error is None:
                raise _SchedulerLost("a future failed without an error")
            ok, value, seconds = False, error_fields(error), 0.0
        elif fut.status == "cancelled":  # never by us while running: the scheduler forgot it
            raise _SchedulerLost("the scheduler cancelled the run's tasks")
        else:
            continue  # re-queued above
        k = pending.pop(fut)
        if ok:
            record({"key": k, "ok": True, "result": value, "seconds": round(seconds, 6)})
        else:
            record({"key": k, **value})
