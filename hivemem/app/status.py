"""``hivemem status``: the service, the memory stores it knows, and where files live.

Gathered without loading a model or creating a file: the service answers a STATS request, memory
stores are opened read-only, and the service's memory use is read from ``/proc`` (PSS, which
counts shared pages once per process sharing them). Rendered as rich tables; ``--json`` prints the
same facts as one JSON object for scripts.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import typer

from hivemem.infra import config


def process_memory(pid: int) -> dict[str, float] | None:
    """PSS and RSS in MB of a process of this user (``None`` where /proc does not tell)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Pss", "Rss"):
                out[f"{key.lower()}_mb"] = round(int(value.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return out or None


def store_summary(path: Path) -> dict[str, Any]:
    """Memories, bound model and size of a memory store, read-only (``exists: False`` if absent)."""
    info: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if not info["exists"]:
        return info
    info["size_mb"] = round(sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()) / 1e6, 2)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            info["memories"] = db.execute("SELECT count(*) FROM memories").fetchone()[0]
            info["last_write"] = db.execute("SELECT max(updated_at) FROM memories").fetchone()[0]
            meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('model_id', 'dim')"))
            info["model_id"] = meta.get("model_id")
        finally:
            db.close()
    except sqlite3.Error as exc:
        info["error"] = f"not a hivemem memory store ({exc})"
    return info


def files(sock: Path, info: dict[str, Any] | None) -> dict[str, str]:
    """Where things live: as the running service reports them, else as this process resolves them."""
    home = Path((info or {}).get("home") or config.home())
    cache = (info or {}).get("cache_path") or str(config.cache_path())
    return {
        "home (HIVEMEM_HOME)": str(home),
        "models": str(home / "models"),
        "embedding cache": str(cache),
        "default memory store": str(home / "memory.sqlite"),
        "socket": str(sock),
        "pid file": str(sock.with_name(sock.name + ".pid")),
        "log (auto-started service)": str(sock.with_name(sock.name + ".log")),
    }


def collect(sock: Path, info: dict[str, Any] | None, stores: list[Path]) -> dict[str, Any]:
    """Everything ``hivemem status`` reports, as one dict (``info``: the service's STATS, or None)."""
    where = files(sock, info)
    roles: dict[Path, str] = {}
    if info and info.get("memory_path") and "://" not in info["memory_path"]:  # a file, not a server
        roles[Path(info["memory_path"]).resolve()] = "served over HTTP"
    for location in ((info or {}).get("mcp") or {}).get("stores", []):
        if "://" not in location:
            roles.setdefault(Path(location).resolve(), "served over MCP")
    roles.setdefault(Path(where["default memory store"]).resolve(), "default")
    for p in stores:
        roles.setdefault(p.expanduser().resolve(), "--memory")
    view: dict[str, Any] = {"running": info is not None, "socket": str(sock)}
    if info is not None:
        view.update(info)
        view["process_memory"] = process_memory(int(info["pid"]))
    view["stores"] = [{**store_summary(p), "role": role} for p, role in roles.items()]
    view["files"] = where
    return view


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m"
        if s >= 86400
        else (f"{s // 3600}h {s % 3600 // 60}m {s % 60}s" if s >= 3600 else f"{s // 60}m {s % 60}s")
    )


def service_rows(view: dict[str, Any]) -> list[tuple[str, str]]:
    """The service table's rows (label, value)."""
    if not view["running"]:
        return [("state", f"not running ({view.get('error', 'no answer')})"), ("socket", view["socket"])]
    model_id = str(view.get("model_id", ""))
    model, _, variant = model_id.partition("/onnx-")
    queue = view.get("queue") or {}
    cache = view.get("cache") or {}
    metrics = view.get("metrics") or {}
    hits = cache.get("hits_memory", 0) + cache.get("hits_disk", 0) + cache.get("hits_shared", 0)
    looked = hits + cache.get("misses", 0)
    requests = metrics.get("requests") or {}
    mem = view.get("process_memory") or {}
    rows = [
        ("pid", str(view["pid"])),
        ("uptime", _uptime(float(view.get("uptime_s", 0)))),
        ("model", f"{model} ({view.get('dim')}-d)"),
        ("variant", variant or "-"),
        ("threads", f"{view.get('threads', '?')} × {view.get('replicas', 1)} replica(s)"),
        ("clients (socket)", str(view.get("clients", 0))),
        ("queue depth", str(queue.get("depth", "-"))),
        ("batches", f"{queue.get('batches', 0):,} ({metrics.get('texts', 0):,} texts)"),
        ("requests", ", ".join(f"{k} {v:,}" for k, v in sorted(requests.items())) or "0"),
        ("cache hit rate", f"{hits / looked:.1%} of {looked:,}" if looked else "-"),
        ("memory", f"PSS {mem['pss_mb']:.0f} MB, RSS {mem['rss_mb']:.0f} MB" if "pss_mb" in mem else "-"),
        ("HTTP", f"http://{view['http']}" if view.get("http") else "off"),
        ("MCP", f"{view['mcp']['sessions']} relays on {view['mcp']['socket']}" if view.get("mcp") else "off"),
    ]
    errors = metrics.get("errors") or {}
    if errors:
        rows.append(("errors", ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items()))))
    return rows


def render(view: dict[str, Any]) -> None:
    """Print the three tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    service = Table(title="hivemem service", show_header=False, title_justify="left")
    service.add_column(style="bold")
    service.add_column()
    for label, value in service_rows(view):
        service.add_row(label, value)
    console.print(service)

    stores = Table(title="memory stores", title_justify="left")
    for name in ("store", "path", "memories", "size MB", "model", "last write"):
        right = name in ("memories", "size MB")
        stores.add_column(name, justify="right" if right else "left", overflow="fold", no_wrap=right)
    for s in view["stores"]:
        if not s["exists"]:
            stores.add_row(s["role"], s["path"], "-", "-", "(no file yet)", "-")
        elif "error" in s:
            stores.add_row(s["role"], s["path"], "-", f"{s['size_mb']:.2f}", s["error"], "-")
        else:
            model = s.get("model_id") or "(none yet)"
            size, count = f"{s['size_mb']:.2f}", f"{s['memories']:,}"
            stores.add_row(s["role"], s["path"], count, size, model, s.get("last_write") or "-")
    console.print(stores)

    where = Table(title="files", show_header=False, title_justify="left")
    where.add_column(style="bold")
    where.add_column(overflow="fold")
    for label, path in view["files"].items():
        where.add_row(label, path)
    console.print(where)


def status(
    socket: Path = typer.Option(None, help="Unix socket path (default: $HIVEMEM_SOCKET or the runtime dir)."),
    memory: list[Path] = typer.Option(
        None,
        "--memory",
        help="Also summarise this memory store (repeatable); the default one is always shown.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """The service (pid, uptime, model and variant, threads, clients, queue, batches, cache hit rate,
    memory), the memory stores it knows, and where files live. Exit status 1 when no service runs."""
    from hivemem.errors import ServiceError
    from hivemem.service import paths
    from hivemem.service.client import ServiceClient

    sock = paths.socket_path(socket)
    info: dict[str, Any] | None = None
    error = None
    try:
        with ServiceClient(sock, autostart=False, timeout=10) as client:
            info = client.stats()
    except ServiceError as exc:
        error = str(exc)
    view = collect(sock, info, list(memory or []))
    if error:
        view["error"] = error
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    else:
        render(view)
    if info is None:
        raise typer.Exit(1)
