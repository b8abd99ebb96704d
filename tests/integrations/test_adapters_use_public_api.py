"""The adapters import only ``hivemem``'s flat public API, so moving a part never breaks them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hivemem.integrations

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

ADAPTERS = sorted(Path(hivemem.integrations.__file__).parent.glob("*.py"))


def test_adapters_import_only_the_public_api() -> None:
    assert len(ADAPTERS) >= 3
    for path in ADAPTERS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hivemem"):
                raise AssertionError(f"{path.name}: from {node.module} import … (use `import hivemem`)")
            if isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("hivemem.")]
                assert not bad, f"{path.name}: import {bad}"
