"""The ``hivemem`` command line: the same verbs as the Python API.

Each part registers its own sub-command group (``hivemem model …``, ``hivemem cache …``,
``hivemem tasks …``); this module only assembles them. ``hivemem mcp`` runs once per agent and
must stay light, so ``main`` (the console script) sends it to the relay before anything else is
imported; the typer application is built on first use of ``app``.
"""

import sys
from typing import Any


def main() -> None:
    """The ``hivemem`` console script."""
    if sys.argv[1:2] == ["mcp"]:
        from hivemem.mcp.relay import main as relay

        sys.exit(relay(sys.argv[2:]))
    _build()()


def _build() -> Any:
    import typer

    from hivemem.app.cli_memory import memory_app
    from hivemem.app.cli_model import cache_app, model_app
    from hivemem.app.cli_run import run as run_command
    from hivemem.app.cli_tasks import app as tasks_app
    from hivemem.app.demo import demo
    from hivemem.app.serve import serve
    from hivemem.app.status import status

    app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
    app.add_typer(model_app, name="model")
    app.add_typer(cache_app, name="cache")
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(memory_app, name="memory")
    app.command("demo")(demo)
    app.command("run")(run_command)
    app.command("serve")(serve)
    app.command("status")(status)

    # (no ``from __future__ import annotations`` in this module: typer reads this signature's types)
    @app.command("mcp", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def mcp(ctx: typer.Context) -> None:
        """MCP server over stdio for one agent (a light relay to the machine's service; docs/mcp.md).
        Options: --user-id, --agent-id, --run-id, --store, --socket, --timeout."""
        from hivemem.mcp.relay import main as relay

        raise typer.Exit(relay(list(ctx.args)))

    globals()["app"] = app
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # ``from hivemem.app.cli import app``: the typer application (tests, old scripts)
        return _build()
    raise AttributeError(f"module 'hivemem.app.cli' has no attribute {name!r}")


if __name__ == "__main__":
    main()
