"""The limits table of docs/security.md says what the code enforces (issue 22).

Each row of the table is mapped below to the constants whose values its "Value" cell states; the
test reads those constants from the code and finds each value, written as the doc writes numbers
(``10,000``, ``16 MiB``, ``30 s``), in the cell. A row added to the table must be mapped here, and
every public ``MAX_*`` constant of hivemem must be in the table or in ``INTERNAL`` with the reason
it is not a limit a caller meets.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"

# row (its first cell) -> (module, constant) whose values the row's "Value" cell states
ROWS: dict[str, list[tuple[str, str]]] = {
    "`MAX_FILTER_DEPTH`": [("hivemem.memory.filters", "MAX_FILTER_DEPTH")],
    "`MAX_FILTER_BRANCHES`": [("hivemem.memory.filters", "MAX_FILTER_BRANCHES")],
    "`MAX_FILTER_CONDITIONS`": [("hivemem.memory.filters", "MAX_FILTER_CONDITIONS")],
    "`MAX_IN_VALUES`": [("hivemem.memory.filters", "MAX_IN_VALUES")],
    "`MAX_FIELD_CHARS`": [("hivemem.memory.filters", "MAX_FIELD_CHARS")],
    "`MAX_METADATA_DEPTH`": [("hivemem.memory.records", "MAX_METADATA_DEPTH")],
    "`MAX_METADATA_BYTES`": [("hivemem.memory.records", "MAX_METADATA_BYTES")],
    "`MAX_ID_CHARS`": [("hivemem.memory.records", "MAX_ID_CHARS")],
    "`MAX_TEXT_CHARS`": [("hivemem.embed.validate", "MAX_TEXT_CHARS")],
    "`MAX_TOP_K`": [
        ("hivemem.memory.store", "MAX_TOP_K"),
        ("hivemem.memory.records", "REMOTE_MAX_SEARCH"),
        ("hivemem.memory.records", "REMOTE_MAX_LIST"),
    ],
    "`REMOTE_MAX_BATCH`": [("hivemem.memory.records", "REMOTE_MAX_BATCH")],
    "`MAX_BATCH_CHANGES`": [("hivemem.memory.batch", "MAX_BATCH_CHANGES")],
    "`MAX_DATE_CHARS`": [("hivemem.memory.records", "MAX_DATE_CHARS")],
    "MCP message (`MAX_MESSAGE`)": [("hivemem.mcp.relay", "MAX_MESSAGE")],
    "MCP stores (`MAX_STORES`)": [("hivemem.mcp.host", "MAX_STORES")],
    "socket frame read": [("hivemem.service.server", "ServiceConfig.read_timeout")],
    "socket texts in flight": [],  # a rule: max_pending / 4 (the row states both)
    "threshold": [],  # a rule (a finite number), not a size
    "batch (HTTP)": [("hivemem.http.memory_models", "MAX_BATCH"), ("hivemem.http.app", "MAX_INPUTS")],
    "HTTP body": [("hivemem.http.limits", "DEFAULT_MAX_BODY")],
    "HTTP request read": [("hivemem.http.limits", "DEFAULT_READ_TIMEOUT")],
    "socket frame": [("hivemem.service.wire", "DEFAULT_MAX_FRAME")],
    "auto-started service idle": [("hivemem.service.spawn", "AUTO_IDLE_TIMEOUT")],
    "task JSON depth": [
        ("hivemem.tasks.source", "DEFAULT_MAX_DEPTH"),
        ("hivemem.tasks.source", "MAX_DEPTH_LIMIT"),
    ],
    "socket reply": [("hivemem.service.wire", "MAX_REPLY")],
    "`MAX_URLS`": [("hivemem.embed.remote", "MAX_URLS")],
    "`MAX_TOKENS`": [("hivemem.embed.model", "MAX_TOKENS")],
    "`MAX_CONVERSATION_CHARS`": [("hivemem.memory.infer", "MAX_CONVERSATION_CHARS")],
    "`MAX_ANSWER_CHARS`": [("hivemem.memory.llm", "MAX_ANSWER_CHARS")],
    "`MAX_FACTS`": [("hivemem.memory.infer", "MAX_FACTS")],
    "`MAX_FACT_CHARS`": [("hivemem.memory.infer", "MAX_FACT_CHARS")],
    "`MAX_CONCURRENCY`": [("hivemem.memory.infer", "MAX_CONCURRENCY")],
    "`MAX_RERANK_CANDIDATES` / `MAX_DOCUMENT_CHARS`": [
        ("hivemem.memory.llm_rerank", "MAX_RERANK_CANDIDATES"),
        ("hivemem.memory.llm_rerank", "MAX_DOCUMENT_CHARS"),
    ],
    "reranker workers (`MAX_WORKERS`)": [("hivemem.memory.llm_rerank", "MAX_WORKERS")],
    "`MAX_LINE`": [("hivemem.memory.transfer", "MAX_LINE")],
    "`MAX_EVENTS`": [("hivemem.memory.transfer", "MAX_EVENTS")],
    "`MAX_ID` / `MAX_STAMP`": [
        ("hivemem.memory.transfer", "MAX_ID"),
        ("hivemem.memory.transfer", "MAX_STAMP"),
    ],
    "dashboard form (`MAX_UI_FORM_BYTES`)": [("hivemem.http.ui.web", "MAX_UI_FORM_BYTES")],
    "dashboard filter (`MAX_UI_FILTER_CHARS`)": [("hivemem.http.ui.memories", "MAX_UI_FILTER_CHARS")],
    "dashboard pages (`MAX_PAGE`)": [("hivemem.http.ui.memories", "MAX_PAGE")],
    "dashboard sessions (`MAX_UI_SESSIONS`)": [
        ("hivemem.http.ui.sessions", "MAX_UI_SESSIONS"),
        ("hivemem.http.ui.sessions", "SESSION_IDLE_S"),
        ("hivemem.http.ui.sessions", "SESSION_MAX_S"),
    ],
    "dashboard runs (`MAX_READ_BYTES`)": [
        ("hivemem.http.ui.jobs", "MAX_READ_BYTES"),
        ("hivemem.http.ui.jobs", "MAX_RUNS_SHOWN"),
        ("hivemem.http.ui.jobs", "MAX_LIBRARIES_SHOWN"),
    ],
    "machine registries (`MAX_ENTRIES`)": [
        ("hivemem.infra.registry", "MAX_ENTRIES"),
        ("hivemem.infra.registry", "MAX_ENTRY_BYTES"),
    ],
    "`MAX_TERMS` / `MAX_TERM_CHARS`": [
        ("hivemem.memory.hybrid", "MAX_TERMS"),
        ("hivemem.memory.hybrid", "MAX_TERM_CHARS"),
    ],
}
# public MAX_* constants that are not limits a caller meets, and why
INTERNAL: dict[str, str] = {
    "hivemem.embed.w8a8.MAX_CALIBRATION_ROWS": "model preparation: rows used to calibrate int8",
    "hivemem.memory.mem0_import.MAX_MEMORIES": "a read bound on the user's own Mem0 store",
    "hivemem.memory.storage.pgwords.MAX_INDEXED_CHARS": "how much of a memory the keyword index covers",
    "hivemem.memory.storage.pgpostings.MAX_CACHED": "a cache size of the keyword index",
    "hivemem.memory.storage.pgpostings.MAX_CHANGES": "when the keyword cache starts afresh",
    "hivemem.mcp.relay.MAX_SENDS": "how often a relay resends one request after a reconnect",
    "hivemem.tasks.convert.MAX_REGISTERED_TYPES": "how many task types a library's registry entry names",
}


def table() -> dict[str, str]:
    """First cell -> "Value" cell of each row of the ``## Limits`` table."""
    text = DOC.read_text(encoding="utf-8").split("\n## Limits\n", 1)[1]
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith(("| Limit ", "|---")):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1]
        elif rows and not line.startswith("|"):
            break
    return rows


def written(value: int | float) -> list[str]:
    """The ways the doc writes ``value``: 10,000 / 16 MiB / 1 GiB / 30 s."""
    forms = []
    if float(value).is_integer():
        n = int(value)
        forms.append(f"{n:,}")
        for unit, shift in (("GiB", 30), ("MiB", 20)):
            if n >= 1 << shift and n % (1 << shift) == 0:
                forms.append(f"{n >> shift} {unit}")
        forms.append(f"{n} s")
    return forms


def stated(cell: str, value: int | float) -> bool:
    return any(re.search(rf"(?<![\d,.]){re.escape(form)}(?![\d,])", cell) for form in written(value))


def test_every_row_of_the_limits_table_states_the_code_s_value() -> None:
    rows = table()
    assert set(rows) == set(ROWS), (
        f"rows not mapped in this test: {sorted(set(rows) - set(ROWS))}; "
        f"mapped rows gone from the doc: {sorted(set(ROWS) - set(rows))}"
    )
    drift = []
    for row, constants in ROWS.items():
        for module, name in constants:
            value = functools.reduce(getattr, name.split("."), importlib.import_module(module))
            if not stated(rows[row], value):
                drift.append(f"{row}: {module}.{name} = {value:,} is not what the doc says ({rows[row]!r})")
    assert not drift, "\n".join(drift)


def test_every_public_max_constant_is_in_the_table_or_named_internal() -> None:
    mapped = {f"{m}.{n}" for constants in ROWS.values() for m, n in constants}
    found = set()
    for path in (ROOT / "hivemem").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.startswith("MAX_"):
                    found.add(f"{module}.{target.id}")
    missing = sorted(found - mapped - set(INTERNAL))
    assert not missing, f"add these limits to docs/security.md (and ROWS here), or to INTERNAL: {missing}"
    assert not (set(INTERNAL) - found), f"INTERNAL names constants that are gone: {set(INTERNAL) - found}"


def test_the_checker_catches_a_drifted_value() -> None:
    """The comparison itself: a cell that says another number is caught."""
    assert stated("10,000 values in all lists", 10_000)
    assert not stated("100,000 values", 10_000) and not stated("1,000 values", 10_000)
    assert stated("16 MiB (`--max-body`)", 16 << 20) and not stated("32 MiB", 16 << 20)
    assert stated("30 s for headers", 30.0) and not stated("300 s", 30.0)
