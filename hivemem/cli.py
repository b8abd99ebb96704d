"""The ``hivemem`` command line: the same verbs as the Python API.

Each part registers its own sub-command group (``hivemem model …``, ``hivemem cache …``,
``hivemem tasks …``); this module only assembles them.
"""

from __future__ import annotations

import typer

from hivemem.demo import demo
from hivemem.embed.cli import cache_app, model_app
from hivemem.memory.cli import memory_app
from hivemem.pool.cli import run as run_command
from hivemem.serve import serve
from hivemem.status import status
from hivemem.tasks.cli import app as tasks_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.add_typer(model_app, name="model")
app.add_typer(cache_app, name="cache")
app.add_typer(tasks_app, name="tasks")
app.add_typer(memory_app, name="memory")
app.command("demo")(demo)
app.command("run")(run_command)
app.command("serve")(serve)
app.command("status")(status)

if __name__ == "__main__":
    app()
