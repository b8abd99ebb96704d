"""``python -m hivemem.service …``: what ``hivemem.connect()`` spawns — ``hivemem serve`` by another
name (same options). An entry point, not a module of the service package: it runs the composition
in ``hivemem.serve`` (the service plus, with ``--http``, the HTTP application)."""

import typer

from hivemem.serve import serve

typer.run(serve)
