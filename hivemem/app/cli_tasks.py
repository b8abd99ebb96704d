"""``hivemem tasks …``: convert a JSON task library and read it from scripts (JSON on stdout).

Errors print one line on stderr and exit with status 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from hivemem.errors import TaskLibraryError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Convert a JSON task library once; sample, fetch and allocate tasks from it.",
)

T = TypeVar("T")

LibraryArg = Annotated[Path, typer.Argument(help="A task library made by `hivemem tasks convert`.")]
FieldsOpt = Annotated[
    str | None,
    typer.Option("--fields", help="Comma-separated top-level fields to return, e.g. id,task_type,workflow."),
]
WhereOpt = Annotated[
    list[str] | None, typer.Option("--where", help="FIELD=VALUE on an indexed field (repeatable).")
]


def _emit(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False))
    sys.stdout.write("\n")


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except (TaskLibraryError, ValueError, KeyError, TypeError, OSError) as exc:
        message = str(exc) if not isinstance(exc, KeyError) or len(exc.args) != 1 else str(exc.args[0])
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1) from None


def _fields(fields: str | None) -> list[str] | None:
    return [f.strip() for f in fields.split(",") if f.strip()] if fields else None


def _where(where: list[str] | None) -> dict[str, Any] | None:
    if not where:
        return None
    parsed: dict[str, Any] = {}
    for item in where:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--where expects FIELD=VALUE, got {item!r}")
        try:  # numbers, true/false, null as JSON; anything else is a string
            value = json.loads(raw)
            if isinstance(value, list | dict):
                value = raw
        except json.JSONDecodeError:
            value = raw
        parsed[name] = value
    return parsed


def _open(path: Path) -> Any:
    from hivemem.tasks.library import TaskLibrary

    return TaskLibrary(path)


@app.command()
def convert(
    src: Annotated[
        Path, typer.Argument(help="The JSON task file: a list, a dict of lists by type, or JSONL.")
    ],
    dest: Annotated[Path, typer.Argument(help="The library file to write (replaced atomically).")],
    id_field: Annotated[str, typer.Option("--id-field", help="Field holding the task id.")] = "id",
    type_field: Annotated[
        str, typer.Option("--type-field", help="Field holding the task type.")
    ] = "task_type",
    index: Annotated[
        list[str] | None,
        typer.Option("--index", help="Extra scalar field to index, e.g. difficulty (repeatable)."),
    ] = None,
    compression: Annotated[str, typer.Option("--compression", help="none, zlib or zstd.")] = "none",
    fmt: Annotated[str, typer.Option("--format", help="auto, json or jsonl.")] = "auto",
    on_duplicate: Annotated[
        str, typer.Option("--on-duplicate", help="error (default) or keep-last.")
    ] = "error",
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: on a terminal).")
    ] = None,
    max_depth: Annotated[
        int, typer.Option("--max-depth", help="Levels of JSON nesting allowed (at most 900).")
    ] = 512,
) -> None:
    """Convert SRC (JSON) into the read-only task library DEST; prints a JSON summary.

    DEST is replaced only if it is a task library already; any other existing file is refused.
    """
    from hivemem.tasks.convert import convert_tasks

    _emit(
        _run(
            lambda: convert_tasks(
                src,
                dest,
                id_field=id_field,
                type_field=type_field,
                index_fields=index or (),
                compression=compression,
                fmt=fmt,
                on_duplicate=on_duplicate,  # type: ignore[arg-type]
                progress=progress,
                max_depth=max_depth,
            )
        )
    )


@app.command()
def info(library: LibraryArg) -> None:
    """Counts per type, indexed fields, source provenance (and whether the source changed)."""
    _emit(_run(lambda: _open(library).info()))


@app.command()
def sample(
    library: LibraryArg,
    task_type: Annotated[str | None, typer.Argument(help="Task type; omit for any type.")] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="How many tasks.")] = 1,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for a reproducible draw.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Draw with replacement.")] = False,
    fields: FieldsOpt = None,
    where: WhereOpt = None,
    ids_only: Annotated[bool, typer.Option("--ids", help="Print only the ids.")] = False,
) -> None:
    """Print N random tasks of TASK_TYPE as a JSON list."""

    def act() -> Any:
        lib = _open(library)
        chosen = [lib.id_field] if ids_only else _fields(fields)
        tasks = lib.sample(task_type, n, seed=seed, replace=replace, fields=chosen, where=_where(where))
        return [t.get(lib.id_field) for t in tasks] if ids_only else tasks

    _emit(_run(act))


@app.command()
def get(
    library: LibraryArg,
    task_ids: Annotated[list[str], typer.Argument(help="One or more task ids.")],
    fields: FieldsOpt = None,
) -> None:
    """Print the task with this id (or a JSON list of them, given several ids)."""

    def act() -> Any:
        tasks = _open(library).get_many(task_ids, _fields(fields))
        return tasks[0] if len(tasks) == 1 else tasks

    _emit(_run(act))


@app.command()
def allocate(
    library: LibraryArg,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Number of workers.")],
    per_worker: Annotated[int, typer.Option("--per-worker", "-n", help="Tasks per worker.")],
    task_type: Annotated[str | None, typer.Option("--type", help="Task type; omit for any type.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed: the same seed gives the same plan.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Let workers share tasks if too few.")] = False,
    where: WhereOpt = None,
) -> None:
    """Print a plan {"workers": [[ids of worker 0], …]} with disjoint task ids per worker."""

    def act() -> Any:
        lib = _open(library)
        plan = lib.allocate(workers, per_worker, task_type, seed=seed, replace=replace, where=_where(where))
        return {"task_type": task_type, "seed": seed, "workers": plan}

    _emit(_run(act))
