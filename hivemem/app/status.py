"""``hivemem status``: the service, the memory stores it knows, and where files live.

The facts come from ``hivemem.service.report`` (no model loaded, no file created); rendered here as
rich tables, or with ``--json`` as one JSON object for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from hivemem.service.report import collect, service_rows


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
