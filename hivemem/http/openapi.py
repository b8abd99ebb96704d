"""The published OpenAPI spec: ``python -m hivemem.http.openapi [--check] [PATH]``.

Writes ``docs/openapi.json`` (every route ``hivemem serve --http`` can serve: embeddings, memory,
agent stream, health, metrics); ``--check`` exits 1 when the committed file is stale, which is
what the test suite runs. The spec depends only on the routes and their models, so it is rendered
without loading a model or opening a database.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


class _SchemaOnly:
    """Stands in for the engine, the memory store and the pool while routes are only described:
    route functions close over them but are never called here."""

    model_id = "all-MiniLM-L6-v2"
    dim = 384


def build_spec() -> dict[str, Any]:
    from hivemem.http.app import create_app

    nothing = _SchemaOnly()
    app = create_app(nothing, memory=nothing, agent_pool=nothing, agent_fn=print)
    return app.openapi()


def render() -> str:
    return json.dumps(build_spec(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0]) if paths else DEFAULT_PATH
    text = render()
    if check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            print(f"{path} is stale: run python -m hivemem.http.openapi", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
