"""The package map holds: each folder is one part, parts depend on each other only as declared below,
and there is no import cycle — between parts, or between the modules of a part.

Run as a script to print the import graph between parts::

    python tests/test_layout.py

ARCHITECTURE.md holds a block generated from ``ALLOWED`` and ``FORBIDDEN`` (a table and a diagram);
a test keeps it equal to them, and ``python tests/test_layout.py --write`` rewrites it.

Imports are read from the source (``ast``), lazy ones inside functions included: a lazy import is
still a dependency. Imports under ``if TYPE_CHECKING:`` are not (they name types for the checker
and never run). ``from hivemem import X`` counts as an import of the module that defines ``X``
(``hivemem._EXPORTS``), and ``from package import module`` as an import of that module alone.
``__main__`` modules are entry points that nothing imports; they are left out, and so is the facade
``hivemem/__init__.py`` itself (its names resolve lazily, on first use).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hivemem"

# part -> the parts it may import. Leaves first. The package root holds only the facade
# (``__init__``), the error tree (``errors``) and the parts; ``hivemem.infra`` (settings, files, locks,
# SQLite) and ``hivemem.app`` (the command line, ``serve``, ``status``, the demo) are layers whose
# modules are parts of their own: the infrastructure below every part, the application above them all.
LAYERS = {"infra", "app"}
INFRA = {"settings", "config", "errors", "grouping", "locks", "sqlitedb", "registry"}
ALLOWED: dict[str, set[str]] = {
    "settings": set(),  # every environment variable, read in one place
    "config": {"settings"},
    "errors": set(),
    "locks": set(),
    # leader/follower groups: the engine's queue, grouped adds, the group commit; GroupLeaderFailed
    "grouping": {"errors"},
    "sqlitedb": {"errors"},  # disk_full(): SQLite's full disk as the DiskFull of the error tree
    "registry": {"config"},  # the machine's run / task-library registries, in the runtime directory
    "embed": INFRA,  # the engine: no transport, no memory, no pool
    "service": INFRA | {"embed"},  # the machine's embedding daemon and its clients
    # receives an EmbedderLike; memory.embedders resolves Mem0's embedder config, which may name the
    # machine's service (a client of it, never the daemon itself)
    "memory": INFRA | {"embed", "service"},
    "tasks": INFRA,
    "pool": INFRA | {"__init__"},  # hivemem.__version__: Dask workers must run the same release
    # the memory tools over MCP: the relay reaches the service (stdlib only), the host serves the stores
    "mcp": INFRA | {"__init__", "service", "memory"},
    # composes the HTTP application (+ /mcp, /ui); the dashboard's fleet page shows the machine report
    # `hivemem status` prints (hivemem.service.report): one implementation for terminal and browser
    "http": INFRA | {"embed", "service", "memory", "pool", "mcp"},
    "integrations": {"__init__"},  # the public API only
    # the application layer (hivemem.app): one module per command group, then the composition on top
    "cli_model": INFRA | {"embed"},
    "cli_memory": INFRA | {"memory"},
    "cli_run": INFRA | {"pool"},
    "cli_tasks": INFRA | {"tasks"},
    "serve": INFRA | {"service", "http", "pool", "mcp", "cli_run"},  # --agent resolves as `hivemem run`
    "status": INFRA | {"service"},
    # the demo's workers use the public API (``hivemem.connect``, ``hivemem.Memory``), as a user's would
    "demo": INFRA | {"__init__", "embed", "service", "memory", "tasks"},
    "cli": INFRA
    | {"embed", "service", "memory", "pool", "tasks", "serve", "status", "demo", "mcp"}
    | {"cli_model", "cli_memory", "cli_run", "cli_tasks"},
}
# Third-party packages a part must never import (even lazily): the daemon runs without the
# ``server`` extra, and nothing but the HTTP application may pull in the web stack.
WEB = {"fastapi", "starlette", "uvicorn", "pydantic", "prometheus_client"}
FORBIDDEN: dict[str, set[str]] = {
    "embed": WEB,
    "service": WEB,
    "memory": WEB,
    "pool": WEB,
    "tasks": WEB | {"onnxruntime", "tokenizers", "torch"},
    "mcp": WEB,  # the SDK brings its own; the HTTP side of MCP lives in hivemem.http.mcp_route
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exports() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS":
            return ast.literal_eval(node.value)  # type: ignore[arg-type]
    raise AssertionError("hivemem._EXPORTS not found")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}


def imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(hivemem module -> hivemem modules it imports, hivemem module -> top-level third-party names)``."""
    modules = _modules()
    exports = _exports()
    internal: dict[str, set[str]] = defaultdict(set)
    external: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                if base == "hivemem":  # the flat API: name the module that defines each name
                    targets = [
                        mod if (mod := f"hivemem.{a.name}") in modules else exports.get(a.name, "hivemem")
                        for a in node.names
                    ]
                else:
                    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                    targets = submodules or [base]
            for target in targets:
                if target == "hivemem" or target.startswith("hivemem."):
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]
                    if target != name:
                        internal[name].add(target)
                elif target:
                    external[name].add(target.split(".")[0])
    return internal, external


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except what sits under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def part(module: str) -> str:
    bits = module.split(".")
    if len(bits) > 2 and bits[1] in LAYERS:
        return bits[2]
    return bits[1] if len(bits) > 1 else "__init__"


def part_graph() -> dict[str, dict[str, set[str]]]:
    """part -> part it imports -> the module-level imports behind that edge."""
    internal, _ = imports()
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for source, targets in internal.items():
        for target in targets:
            a, b = part(source), part(target)
            if a != b and a != "__init__":
                graph[a][b].add(f"{source} -> {target}")
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_every_part_is_declared() -> None:
    parts = {part(m) for m in _modules()} - {"__init__"} - LAYERS
    assert parts == set(ALLOWED), f"undeclared: {parts - set(ALLOWED)}, gone: {set(ALLOWED) - parts}"


def test_the_root_holds_the_facade_the_error_tree_and_packages_only() -> None:
    """Everything else sits in a part, or in one of the two layers (``infra`` below, ``app`` above)."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "errors.py"], loose
    for layer in LAYERS:  # a layer is a folder of parts, not code of its own
        tree = ast.parse((PACKAGE / layer / "__init__.py").read_text())
        assert all(isinstance(n, ast.Expr) for n in tree.body), f"hivemem/{layer}/__init__.py holds code"


def test_no_two_modules_share_a_name() -> None:
    """``sqlite.py`` in two parts or three ``server.py`` make tracebacks, imports and searches ambiguous."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            seen[path.name].append(str(path.relative_to(ROOT)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


def test_parts_import_only_what_they_may() -> None:
    bad = [
        f"{a} may not import {b}: {sorted(why)}"
        for a, targets in part_graph().items()
        for b, why in targets.items()
        if b not in ALLOWED[a]
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_parts() -> None:
    graph = part_graph()
    assert cycles({a: set(bs) for a, bs in graph.items()}) == []


def test_no_import_cycle_between_modules() -> None:
    internal, _ = imports()
    internal.pop("hivemem", None)
    assert cycles(internal) == []


def test_parts_keep_clear_of_forbidden_packages() -> None:
    _, external = imports()
    bad = [
        f"{module} imports {sorted(names & FORBIDDEN[part(module)])}"
        for module, names in external.items()
        if names & FORBIDDEN.get(part(module), set())
    ]
    assert not bad, "\n".join(bad)


# The one-time model preparation (torch export, quantisation, verification) and the optional
# sentence-transformers backend are the only modules that may use torch; everything a serving
# process runs reads the model through ``hivemem.embed.model`` (the spec) and onnxruntime.
PREPARATION = {"hivemem.embed.prepare", "hivemem.embed.quantize", "hivemem.embed.w8a8"}
TORCH = {"torch", "transformers", "sentence_transformers"}
TORCH_OK = PREPARATION | {"hivemem.embed.st_backend"}
# who may load the preparation code: `hivemem model prepare` (a serving process that finds no prepared
# model runs it in a child process: hivemem.embed.model.prepared_manifest)
PREPARES = {"hivemem.app.cli_model", *PREPARATION}


def test_serving_modules_never_import_torch() -> None:
    internal, external = imports()
    bad = [f"{m} imports {sorted(names & TORCH)}" for m, names in external.items() if names & TORCH]
    assert sorted(bad) == sorted(
        f"{m} imports {sorted(external[m] & TORCH)}" for m in TORCH_OK if external[m] & TORCH
    ), "\n".join(bad)
    loaders = {m for m, targets in internal.items() if targets & PREPARATION and m != "hivemem"}
    assert loaders <= PREPARES, f"the preparation code is imported by {sorted(loaders - PREPARES)}"


@pytest.mark.model  # embeds with the real model, without a fixture that says so
def test_an_embedding_process_loads_no_torch() -> None:
    """The real serving path (model spec, ONNX backend, queue) embeds without torch in the process."""
    code = (
        "import sys, hivemem\ne = hivemem.Embedder(cache=False)\ne.embed(['a cat sat'])\ne.close()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', "
        "'hivemem.embed.prepare', 'hivemem.embed.quantize') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_a_worker_s_client_stays_light() -> None:
    """What a worker imports to reach the service: no model runtime, no web stack."""
    heavy = ("onnxruntime", "tokenizers", "torch", "fastapi", "uvicorn", "sqlite3")
    code = (
        "import sys; import hivemem; hivemem.connect; hivemem.aconnect;"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_bare_service_entry_imports_nothing_above_the_service() -> None:
    """``python -m hivemem.service`` is the service part's own entry: it used to run the composition
    (``hivemem.app.serve``), the one edge from a part up into the layer that composes it."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hivemem.service", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    above = sorted(
        m
        for m in loaded
        if m.split(".")[:2]
        in (["hivemem", "serve"], ["hivemem", "cli"], ["hivemem", "http"], ["hivemem", "mcp"])
    )
    assert "hivemem.service.server" in loaded and above == [], above
    assert "usage: python -m hivemem.service" in out.stdout


# -- ARCHITECTURE.md ----------------------------------------------------------------------------------

ARCHITECTURE = ROOT / "ARCHITECTURE.md"
BEGIN = "<!-- BEGIN generated by `python tests/test_layout.py --write` from ALLOWED: do not edit -->"
END = "<!-- END generated -->"


def architecture_block() -> str:
    """The generated part of ARCHITECTURE.md: who may import whom, and what each part never imports."""
    rows = ["| part | may import | never imports |", "|---|---|---|"]
    for p, allowed in ALLOWED.items():  # in declaration order: leaves first
        infra = allowed >= INFRA and p not in INFRA
        shown = (["*infrastructure*"] if infra else []) + [
            "`hivemem` (the public API)" if q == "__init__" else f"`{q}`"
            for q in sorted(allowed)
            if not (infra and q in INFRA)
        ]
        never = ", ".join(sorted(FORBIDDEN.get(p, ()))) or "—"
        rows.append(f"| `{p}` | {', '.join(shown) or '—'} | {never} |")
    edges = [
        f"    {p} --> {'api' if q == '__init__' else q}"
        for p in sorted(ALLOWED)
        for q in sorted(ALLOWED[p])
        if q not in INFRA or p in INFRA
    ]
    infra = " and ".join((", ".join(f"`{q}`" for q in sorted(INFRA)[:-1]), f"`{sorted(INFRA)[-1]}`"))
    return "\n".join(
        [
            BEGIN,
            "",
            f"*Infrastructure* is {infra}: parts that import nothing of hivemem.",
            "",
            *rows,
            "",
            "The same graph without the edges to infrastructure (`api` is the public `hivemem` facade):",
            "",
            "```mermaid",
            "graph BT",
            *edges,
            "```",
            "",
            END,
        ]
    )


def _doc_block(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    assert 0 <= start < end, f"{ARCHITECTURE.name} has lost its generated block ({BEGIN!r} ... {END!r})"
    return text[start : end + len(END)]


def test_architecture_doc_is_the_allowed_graph() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert _doc_block(text) == architecture_block(), "run: python tests/test_layout.py --write"


def test_architecture_doc_says_what_every_part_owns() -> None:
    """One ``### `part` `` paragraph per declared part, and none for a part that is gone."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    described = {line[len("### `") :].split("`")[0] for line in text.splitlines() if line.startswith("### `")}
    assert described == set(ALLOWED), (
        f"describe: {sorted(set(ALLOWED) - described)}; gone: {sorted(described - set(ALLOWED))}"
    )


def write_architecture() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    ARCHITECTURE.write_text(text.replace(_doc_block(text), architecture_block()), encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        write_architecture()
        print(f"wrote the generated block of {ARCHITECTURE}")
        raise SystemExit(0)
    for a, targets in sorted(part_graph().items()):
        print(f"{a:13} -> {', '.join(sorted(targets))}")
    internal, _ = imports()
    internal.pop("hivemem", None)
    print("cycles between parts:", cycles({a: set(bs) for a, bs in part_graph().items()}))
    print("cycles between modules:", cycles(internal))
