"""``hivemem run module:function --items items.jsonl --results out.jsonl``: the command-line face
of :func:`hivemem.run_parallel`. Run it again after a crash and it picks up where it stopped."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def _resolve(spec: str, what: str) -> Any:
    """Import ``module:attr`` (attr may be dotted), with the current directory importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise typer.BadParameter(f"{what} must look like 'module:function', got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules next to the user resolve
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import module {module_name!r} for {what}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise typer.BadParameter(f"module {module_name!r} has no attribute {attr!r} ({what})") from None
    if not callable(obj):
        raise typer.BadParameter(f"{spec} is not callable ({what})")
    return obj


def _read_items(path: Path) -> list[Any]:
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except ValueError as exc:
                    raise typer.BadParameter(f"{path}:{lineno}: not a JSON line: {exc}") from None
    except OSError as exc:
        raise typer.BadParameter(f"cannot read items file {path}: {exc}") from None
    return items


def run(
    function: Annotated[
        str,
        typer.Argument(help="module:function called per item (fn(item), or fn(obj, item) with --factory)"),
    ],
    items: Annotated[Path, typer.Option("--items", help="JSONL file, one item per line")],
    results: Annotated[
        Path, typer.Option("--results", help="JSONL results file (appended; resumed on rerun)")
    ],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="number of workers")] = os.cpu_count()
    or 1,
    factory: Annotated[
        str | None, typer.Option("--factory", help="module:function building each worker's object once")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="item field naming each item (default: 'id', else the line index)"),
    ] = None,
    kind: Annotated[str, typer.Option("--kind", help="'process' or 'thread' (local workers)")] = "process",
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds per item before its worker is killed")
    ] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="re-run items recorded as errors")
    ] = False,
    fsync: Annotated[
        bool, typer.Option("--fsync", help="fsync each result (survives power loss, slower)")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="Dask scheduler address (tcp://host:8786): run on its workers ('cluster' extra)",
        ),
    ] = None,
) -> None:
    """Run FUNCTION over every item on warm workers; skip items already in the results file."""
    from hivemem.errors import HivememError
    from hivemem.pool.runner import run_parallel

    if kind not in ("process", "thread"):
        raise typer.BadParameter(f"--kind must be 'process' or 'thread', got {kind!r}")
    fn = _resolve(function, "FUNCTION")
    make = _resolve(factory, "--factory") if factory else None
    try:
        summary = run_parallel(
            _read_items(items),
            fn,
            workers=workers,
            factory=make,
            results=results,
            key=key,
            kind=kind,  # type: ignore[arg-type]
            retry_errors=retry_errors,
            timeout=timeout,
            progress=progress,
            fsync=fsync,
            cluster=cluster,
        )
    except (HivememError, TypeError, ValueError, RuntimeError, ImportError) as exc:
        typer.echo(f"error: {exc}", err=True)  # a RunSetupError: where, and the user's traceback
        raise typer.Exit(2) from None
    typer.echo(
        f"{summary.total} items: {summary.skipped} already done, {summary.ok} ok, {summary.errors} errors "
        f"in {summary.seconds:.1f} s -> {results}"
    )
    if summary.errors:
        raise typer.Exit(1)


app = typer.Typer(add_completion=False, help=__doc__)
app.command()(run)

if __name__ == "__main__":
    app()
