"""``run_parallel(..., cluster=...)``: the same resumable run, sharded over a Dask distributed cluster.

Why Dask and not Ray (measured on these machines, ``shared/FACTS.md``): a Dask worker is a plain
Python process of ~70 MB that starts in seconds and runs 1,000 tiny tasks in ~4.8 s; Ray needs
0.7–1.3 GB RSS and 4–9 s to initialise before the first task. A batch job over warm agents needs
neither Ray's actors nor its object store: a worker plugin gives "build once per worker", and
Dask already reschedules the tasks of a worker that dies.

How the run maps onto Dask:

* **The user's code travels with the run.** The source of every loaded module of the user's own
  files (not installed: outside site-packages and the standard library) goes to the workers in
  the run's plugin, where an import hook serves it under its original file name
  (:class:`ShippedModules`); ``fn``, ``factory`` and each item are cloudpickled on the driver and
  unpickled only on a worker, after the hook is in place. So a scheduler and workers with only
  hivemem installed run the user's module, and its tracebacks name the user's file and line.
  (Not ``cloudpickle.register_pickle_by_value``: its functions lose their file name, shown as
  ``<dynamic-code>``, and a module used as ``helper.f()`` is pickled with its whole namespace,
  which fails on a lock or a connection made at import.)
* **Warm objects.** ``fn`` and ``factory`` travel in a ``WorkerPlugin`` registered under a name
  derived from the results file. Every worker (also one that joins or is restarted by its nanny
  later) loads ``fn`` and builds its object once, in the task thread of its first item (the
  worker's event loop keeps answering the scheduler meanwhile); its other items wait for it. A
  rerun after a driver crash registers the same name, which replaces (tears down) what the
  crashed run left on the workers; a clean run unregisters it.
* **Setup errors stop the run.** A factory that raises, or a ``fn``/``factory`` that cannot be
  loaded on a worker, ends the run at the first worker that reports it, with
  :class:`~hivemem.errors.RunSetupError` naming that worker and host, and nothing recorded for
  it. So does a task the cluster itself cannot run (any Dask error but ``KilledWorker``).
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

The scheduler and workers need hivemem (with the ``cluster`` extra) and the *installed* packages
the job imports; the user's own files need not be there. With ``--nthreads N > 1`` a worker
runs N items at once *on the same object*; use ``--nthreads 1`` (one worker per core) for agents
that are not thread-safe, the same one-call-at-a-time contract as the local pool.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import linecache
import os
import pickle
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hivemem.errors import RunSetupError
from hivemem.pool.failures import (
    callable_name,
    setup_stopped,
    user_traceback,
    worker_exited,
)
from hivemem.pool.results import error_fields

try:
    import cloudpickle
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


def _installed_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.join(os.path.abspath(paths[k]), "") for k in ("stdlib", "platstdlib")})


def user_sources() -> dict[str, tuple[str, str, bool]]:
    """``{module name: (file, source, is_package)}`` of the loaded modules that are the user's own
    files, not installed packages: plain ``.py`` files outside any ``site-packages`` or
    ``dist-packages`` folder and the standard library, except hivemem itself. These travel with a
    cluster run (:class:`ShippedModules`)."""
    stdlib = _installed_dirs()
    found = {}
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        file = getattr(module, "__file__", None)
        if top in ("__main__", "__mp_main__", "hivemem") or top in sys.stdlib_module_names:
            continue  # __main__'s functions travel by value with cloudpickle
        if not isinstance(file, str) or not file.endswith(".py"):
            continue  # built-in, namespace package, extension module
        path = os.path.abspath(file)
        parts = set(path.split(os.sep))
        if "site-packages" in parts or "dist-packages" in parts or path.startswith(stdlib):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
        except (OSError, ValueError):
            continue  # gone or not text since it was imported: it cannot travel
        found[name] = (path, source, hasattr(module, "__path__"))
    return found


class ShippedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """The import hook on a cluster worker that serves the user's modules from the sources a run
    brought (:func:`user_sources`), under their original file names: ``import job`` works, runs
    the module's code as a normal import would, and tracebacks name the user's file and line.

    One per worker process, first on ``sys.meta_path``; each run's plugin adds its sources. A
    module that a run brings in another version replaces the one an earlier run imported."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, str, bool]] = {}

    @classmethod
    def install(cls, sources: dict[str, tuple[str, str, bool]]) -> None:
        found = [f for f in sys.meta_path if isinstance(f, cls)]
        hook = found[0] if found else cls()
        if not found:
            sys.meta_path.insert(0, hook)
        for name, entry in sources.items():
            if hook.sources.get(name) != entry:
                module = sys.modules.get(name)
                if module is not None and getattr(module, "__loader__", None) is hook:
                    del sys.modules[name]  # another run's version: import this run's afresh
                hook.sources[name] = entry
                path, source, _ = entry
                linecache.cache[path] = (len(source), None, source.splitlines(True), path)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        entry = self.sources.get(fullname)
        if entry is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=entry[0], is_package=entry[2])

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: Any) -> None:
        path, source, _ = self.sources[module.__name__]
        module.__file__ = path
        exec(compile(source, path, "exec"), module.__dict__)


class _SetupFailed(Exception):
    """Raised on a worker whose plugin could not load ``fn`` or build the object."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(what)
        self.what = what
        self.tb = user_traceback(exc)


# Dask's API is untyped: its two entry points used here, as the checker sees them.
_Client: Any = distributed.Client
_as_completed: Any = distributed.as_completed


class RunPlugin(distributed.WorkerPlugin):
    """Carries the run's ``fn`` and ``factory`` (cloudpickled on the driver) to every worker;
    loads them there and builds one object per worker process, shared by the run's items."""

    def __init__(
        self,
        sources: dict[str, tuple[str, str, bool]],
        fn_blob: bytes,
        factory_blob: bytes | None,
        fn_name: str,
        factory_name: str,
    ) -> None:
        self.sources = sources
        self.fn_blob = fn_blob
        self.factory_blob = factory_blob
        self.fn_name = fn_name
        self.factory_name = factory_name

    def setup(self, worker: Any = None) -> None:
        self.fn: Any = None
        self.obj: Any = None
        self.built = False
        self.error: _SetupFailed | None = None
        self.lock = threading.Lock()
        name = getattr(worker, "name", None)
        address = getattr(worker, "address", None) or "?"
        self.where = f"Dask worker {name} at {address} (process {os.getpid()} on {socket.gethostname()})"
        ShippedModules.install(self.sources)

    def get(self) -> tuple[Callable[..., Any], Any]:
        """``(fn, object)`` of this worker, built by its first item (in a task thread: the worker's
        event loop keeps answering the scheduler, and ``distributed.get_worker()`` works in the
        factory); raises :class:`_SetupFailed` if this worker could not set up."""
        with self.lock:
            if not self.built and self.error is None:
                self._build()
        if self.error is not None:
            raise self.error
        return self.fn, self.obj

    def _build(self) -> None:
        try:
            if self.fn is None:
                try:
                    self.fn = pickle.loads(self.fn_blob)
                except Exception as exc:
                    raise _SetupFailed(f"{self.fn_name} cannot be loaded", exc) from None
            if self.factory_blob is not None:
                try:
                    factory = pickle.loads(self.factory_blob)
                except Exception as exc:
                    raise _SetupFailed(f"the factory {self.factory_name} cannot be loaded", exc) from None
                try:
                    self.obj = factory()
                except BaseException as exc:  # SystemExit in a factory must not take the worker down
                    raise _SetupFailed(f"the factory {self.factory_name} failed", exc) from None
            self.built = True
        except _SetupFailed as failed:
            self.obj, self.error = None, failed

    def discard(self) -> None:
        """Drop the object (its call asked the worker to stop); the next item builds a new one."""
        with self.lock:
            self.obj, self.built = None, False

    def teardown(self, worker: Any = None) -> None:
        self.obj = None


def run_item(plugin_name: str, item_blob: bytes) -> tuple[str, Any, float]:
    """Runs on a cluster worker: ``("ok", result, seconds)``, ``("error", error fields, 0.0)``, or
    ``("setup", {"what", "where", "traceback"}, 0.0)`` when this worker could not set up.

    Never raises, so Dask never retries a failure of user code. ``SystemExit`` and other
    non-``Exception`` errors fail the item with ``WorkerExited``, as in the local pool, and the
    worker's object is rebuilt by the factory for its next item."""
    plugin: Any = distributed.get_worker().plugins.get(plugin_name)
    if plugin is None:
        where = f"Dask worker process {os.getpid()} on {socket.gethostname()}"
        return (
            "setup",
            {"what": "the run's plugin is missing (it was unregistered)", "where": where, "traceback": ""},
            0.0,
        )
    try:
        fn, obj = plugin.get()
    except _SetupFailed as failed:
        return "setup", {"what": failed.what, "where": plugin.where, "traceback": failed.tb}, 0.0
    try:
        item = pickle.loads(item_blob)
        started = time.perf_counter()
        result = fn(obj, item) if plugin.factory_blob is not None else fn(item)
        return "ok", result, time.perf_counter() - started
    except Exception as exc:
        return "error", error_fields(exc), 0.0
    except BaseException as exc:  # sys.exit() in user code: this item fails, the worker lives on
        err = worker_exited(
            exc, getattr(fn, "__qualname__", None) or repr(fn), f"Dask worker process {os.getpid()}"
        )
        err.__cause__ = exc
        plugin.discard()
        return "error", error_fields(err), 0.0


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
        client = _Client(target, timeout=_CONNECT_TIMEOUT_S, set_as_default=False)
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
    threads: dict[str, int] = client.nthreads()
    return WINDOW_PER_THREAD * max(1, sum(threads.values()))


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
    fn_blob, factory_blob = _ship("fn", fn), None if factory is None else _ship("factory", factory)
    plugin = RunPlugin(user_sources(), fn_blob, factory_blob, callable_name(fn), callable_name(factory))
    client, owned = connect_cluster(cluster)
    try:
        _run(client, todo, plugin, record, plugin_name)
    finally:
        if owned:
            with contextlib.suppress(Exception):
                client.close(timeout=5)


def _ship(what: str, fn: Callable[..., Any]) -> bytes:
    try:
        blob: bytes = cloudpickle.dumps(fn)
        return blob
    except Exception as exc:
        raise TypeError(
            f"{what} {callable_name(fn)} cannot be sent to the cluster ({type(exc).__name__}: {exc}); "
            "send module-level functions, or partials of them, with picklable arguments"
        ) from None


def _check_cluster(client: Any) -> None:
    """At least one worker, and hivemem importable on the scheduler and the workers."""
    address = client.scheduler.address
    try:
        client.wait_for_workers(1, timeout=_WAIT_WORKERS_S)
    except TimeoutError:
        raise RuntimeError(
            f"the Dask cluster at {address} has no worker after {_WAIT_WORKERS_S:g} s"
        ) from None
    for where, probe in (("the scheduler", client.run_on_scheduler), ("a worker", client.run)):
        try:
            probe(_probe)
        except Exception as exc:
            raise RuntimeError(
                f"{where} of {address} cannot import hivemem ({type(exc).__name__}: {exc}); install "
                "'hivemem[cluster]' on the scheduler and every worker"
            ) from None


def _run(
    client: Any, todo: list[tuple[Key, Any]], plugin: RunPlugin, record: Recorder, plugin_name: str
) -> None:
    registered = False
    pending: dict[Any, Key] = {}
    clean = False
    try:
        _check_cluster(client)
        try:
            client.register_plugin(plugin, name=plugin_name)
        except Exception as exc:
            raise setup_stopped(
                "the run's plugin could not be installed",
                f"the workers of {client.scheduler.address}",
                str(exc),
            ) from None
        registered = True
        items = iter(todo)
        window, refreshed = _window(client), time.monotonic()
        done: Any = _as_completed(loop=client.loop)

        def submit_more() -> None:
            while len(pending) < window:
                nxt = next(items, None)
                if nxt is None:
                    return
                k, item = nxt
                try:
                    fut = client.submit(run_item, plugin_name, cloudpickle.dumps(item), pure=False)
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
        except RunSetupError:
            raise
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
                    outcomes[fut] = ("error", error_fields(exc), 0.0)  # e.g. cannot be unpickled here
    setup: RunSetupError | None = None
    for fut in batch:
        if fut in outcomes:
            status, value, seconds = outcomes[fut]
        elif fut.status == "error":  # only Dask's own errors: run_item never raises
            error = fut.exception(timeout=_CONNECT_TIMEOUT_S)
            if error is None:
                raise _SchedulerLost("a future failed without an error")
            if type(error).__name__ == "KilledWorker":  # this item killed its workers again and again
                status, value, seconds = "error", error_fields(error), 0.0
            else:  # e.g. the scheduler cannot deserialize the task: every item would fail the same way
                where = f"the Dask cluster at {client.scheduler.address}"
                what = "the cluster could not run the job's tasks"
                status, value, seconds = (
                    "setup",
                    {"what": what, "where": where, "traceback": user_traceback(error)},
                    0.0,
                )
        elif fut.status == "cancelled":  # never by us while running: the scheduler forgot it
            raise _SchedulerLost("the scheduler cancelled the run's tasks")
        else:
            continue  # re-queued above
        k = pending.pop(fut)
        if status == "ok":
            record({"key": k, "ok": True, "result": value, "seconds": round(seconds, 6)})
        elif status == "error":
            record({"key": k, **value})
        elif setup is None:  # a worker (or the cluster) could not set up: not this item's error
            setup = setup_stopped(value["what"], value["where"], value["traceback"])
    if setup is not None:
        raise setup
