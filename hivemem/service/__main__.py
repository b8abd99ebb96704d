"""``python -m hivemem.service …``: what ``hivemem.connect()`` spawns (same options as ``hivemem serve``)."""

import typer

from hivemem.service.cli import serve

typer.run(serve)
