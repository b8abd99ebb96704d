"""``hivemem memory …``: the memory store from the shell; every command prints JSON.

``--path``/``--url`` name the store: a SQLite file or a ``postgresql://`` URL (default:
``$HIVEMEM_MEMORY_URL``, else ``HIVEMEM_HOME/memory.sqlite``). Export/import use JSONL with ids,
timestamps, metadata and history (``hivemem.memory.transfer``), so a store can be moved between
SQLite and PostgreSQL, backed up or seeded; import re-embeds with the target's model and skips
memories already there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

memory_app = typer.Typer(no_args_is_help=True, help="The Mem0-compatible memory store.")

UserOpt = typer.Option(None, "--user-id")
AgentOpt = typer.Option(None, "--agent-id")
RunOpt = typer.Option(None, "--run-id")
ExpiredOpt = typer.Option(False, "--show-expired", help="Include memories past their expiration date.")
PathOpt = typer.Option(
    None,
    "--path",
    "--url",
    help="The store: a SQLite file or a postgresql:// URL "
    "(default: $HIVEMEM_MEMORY_URL, else HIVEMEM_HOME/memory.sqlite).",
)


def _open(path: str | None) -> Any:
    import sqlite3

    from hivemem.memory.storage.locate import default_path
    from hivemem.memory.store import Memory

    try:
        return Memory(path)
    except (OSError, sqlite3.Error) as exc:  # a directory, an unwritable place, not a database
        typer.echo(f"error: cannot open the memory database {path or default_path()}: {exc}", err=True)
        raise typer.Exit(2) from None
    except (ValueError, TypeError, ImportError, ConnectionError, RuntimeError) as exc:  # a bad URL, no server
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _echo(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=None))


def _json_opt(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _answer(path: str | None, call: Callable[[Any], Any]) -> None:
    """Open the store, run ``call(memory)``, print its JSON; refused input exits 2, failed work 1."""
    with _open(path) as m:
        _echo(_run(lambda: call(m)))


def _run(fn: Any) -> Any:
    from hivemem.errors import DiskFull, LLMError

    try:
        return fn()
    except (ValueError, TypeError, NotImplementedError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (LLMError, DiskFull) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@memory_app.command("add")
def add(
    text: str = typer.Argument(..., help="The memory text."),
    user_id: str | None = UserOpt,
    agent_id: str | None = AgentOpt,
    run_id: str | None = RunOpt,
    metadata: str | None = typer.Option(None, "--metadata", help="A JSON object."),
    infer: bool = typer.Option(
        False, "--infer", help="Store the facts an LLM finds in the text (needs HIVEMEM_LLM_URL)."
    ),
    expiration_date: str | None = typer.Option(
        None, "--expiration-date", help="ISO date (the end of that day, UTC) or datetime (naive: UTC)."
    ),
    timestamp: str | None = typer.Option(
        None,
        "--timestamp",
        help="When it was created: an ISO date (its start, UTC; 8 digits: YYYYMMDD) or datetime,"
        " or Unix seconds (other digits).",
    ),
    path: str | None = PathOpt,
) -> None:
    """Add one memory (event NONE with the existing id if the text is already in the scope)."""
    meta = _json_opt(metadata, "--metadata")
    scope = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
    dates = {"expiration_date": expiration_date, "timestamp": timestamp}  # read as the library reads them
    _answer(path, lambda m: m.add(text, **scope, metadata=meta, infer=infer, **dates))


@memory_app.command("search")
def search(
    query: str = typer.Argument(...),
    user_id: str | None = UserOpt,
    agent_id: str | None = AgentOpt,
    run_id: str | None = RunOpt,
    filters: str | None = typer.Option(
        None, "--filters", help='Mem0 filters as JSON, e.g. {"k": {"gte": 2}}'
    ),
    top_k: int = typer.Option(10, "--top-k"),
    threshold: float | None = typer.Option(None, "--threshold"),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (BM25 + vector), vector or keyword"),
    show_expired: bool = ExpiredOpt,
    path: str | None = PathOpt,
) -> None:
    """Search within the given scope and filters (hybrid by default)."""
    f = _json_opt(filters, "--filters")
    scope = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
    options = {
        "filters": f,
        "top_k": top_k,
        "threshold": threshold,
        "mode": mode,
        "show_expired": show_expired,
    }
    _answer(path, lambda m: m.search(query, **scope, **options))


@memory_app.command("list")
def list_(
    user_id: str | None = UserOpt,
    agent_id: str | None = AgentOpt,
    run_id: str | None = RunOpt,
    filters: str | None = typer.Option(None, "--filters"),
    top_k: int = typer.Option(100, "--top-k"),
    show_expired: bool = ExpiredOpt,
    path: str | None = PathOpt,
) -> None:
    """List memories (oldest first)."""
    f = _json_opt(filters, "--filters")
    scope = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
    _answer(path, lambda m: m.get_all(**scope, filters=f, top_k=top_k, show_expired=show_expired))


@memory_app.command("delete")
def delete(
    memory_id: str | None = typer.Argument(None, help="One memory id; or use --user-id/--agent-id/--run-id."),
    user_id: str | None = UserOpt,
    agent_id: str | None = AgentOpt,
    run_id: str | None = RunOpt,
    path: str | None = PathOpt,
) -> None:
    """Delete one memory by id, or every memory of a scope."""
    with _open(path) as m:
        if memory_id is not None:
            _echo(_run(lambda: m.delete(memory_id)))
        else:
            _echo(_run(lambda: m.delete_all(user_id=user_id, agent_id=agent_id, run_id=run_id)))


@memory_app.command("purge")
def purge(
    expired: bool = typer.Option(
        False, "--expired", help="Delete the memories whose expiration date has passed (required)."
    ),
    path: str | None = PathOpt,
) -> None:
    """Delete expired memories, each with a DELETE event in its history; prints {"deleted": N}."""
    if not expired:
        raise typer.BadParameter("say what to purge: --expired")
    _answer(path, lambda m: {"deleted": m.purge_expired()})


@memory_app.command("export")
def export(path: str | None = PathOpt) -> None:
    """Write every memory (ids, metadata, history; no vectors) as JSONL to stdout."""
    from hivemem.memory.transfer import export_lines

    with _open(path) as m:
        for line in export_lines(m):
            typer.echo(line)


@memory_app.command("import")
def import_(
    source: Path | None = typer.Argument(None, help="A JSONL file as written by export ('-' for stdin)."),
    from_mem0: str | None = typer.Option(
        None,
        "--from-mem0",
        help="Copy a Mem0 store instead: its config (the dict for Mem0's Memory.from_config) as a JSON "
        "file or JSON text; '{}' means Mem0's defaults. Memories, ids, timestamps and history are kept.",
    ),
    batch: int = typer.Option(500, "--batch", min=1, max=10_000, help="Memories per transaction."),
    path: str | None = PathOpt,
) -> None:
    """Add the memories of a JSONL file as written by export (with their ids and history), or of a
    Mem0 store, in batches; memories already in the store (same id, or same text in the same
    scope) are skipped.

    Every line of a JSONL file is checked before anything is stored, so a bad line (named by its
    line number in the file) leaves the store untouched; a run that fails later can be repeated.
    """
    if (source is None) == (from_mem0 is None):
        raise typer.BadParameter("give a JSONL file or --from-mem0 CONFIG (one of them)")
    if from_mem0 is not None:
        from hivemem.memory.mem0_import import import_mem0, load_config

        config = _run(lambda: load_config(from_mem0))
        with _open(path) as m:
            _echo(_run(lambda: import_mem0(m, config, batch=batch)))
        return
    assert source is not None
    from hivemem.memory.transfer import import_lines

    stream = sys.stdin if str(source) == "-" else source.open(encoding="utf-8")
    with _open(path) as m:
        _echo(_run(lambda: import_lines(m, stream, batch)))
