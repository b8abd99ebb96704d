"""Hostile input against ``hivemem.Memory`` (the standing module of issue 9 for the memory part).

A store is shared by many tenants, so every input a caller controls must be refused with an error
naming the field and the limit, before it reaches SQLite, the JSON functions or the embedder —
and nothing of a refused call may be stored. Storage-only tests use the hash embedder (it says so
in ``conftest.py``); ``Counting`` wraps it to prove that refusals happen before any embedding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HashEmbedder
from typer.testing import CliRunner

from hivemem import Memory
from hivemem.cli import app
from hivemem.service.keys import load_keys


class Counting(HashEmbedder):
    """The hash embedder (not a model), counting the texts it was asked to embed."""

    def __init__(self) -> None:
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return super().embed(texts)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Memory]:
    m = Memory(tmp_path / "hostile.sqlite", embedder=Counting())
    m.add("alice's secret", user_id="alice", agent_id="a1", run_id="r1")
    m.add("bob's secret", user_id="bob", agent_id="b1", run_id="r2")
    yield m
    m.close()


def _owners(m: Memory) -> list[str]:
    return sorted(r["user_id"] for r in m.get_all(top_k=1000)["results"])


# -- defect 1: a scope value is a literal, never a wildcard -----------------------------------------


@pytest.mark.parametrize("field", ["user_id", "agent_id", "run_id"])
def test_star_is_not_a_tenant_id_anywhere(store: Memory, field: str) -> None:
    """``"*"`` as a scope value once meant "every tenant": delete_all(user_id="*") wiped the store."""
    calls = {
        "add": lambda: store.add("x", **{field: "*"}),
        "add_batch": lambda: store.add_batch([{"messages": "x", field: "*"}]),
        "get_all": lambda: store.get_all(**{field: "*"}),
        "search": lambda: store.search("secret", **{field: "*"}),
        "delete_all": lambda: store.delete_all(**{field: "*"}),
        "delete_all padded": lambda: store.delete_all(**{field: " * "}),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{field} '\*' is not a valid id") as err:
            call()
        assert "filters" in str(err.value), name  # the message says how to spell the wildcard
    assert _owners(store) == ["alice", "bob"]
    assert store.embedder.texts == 2  # nothing refused was embedded


def test_scope_arguments_compare_literally(store: Memory) -> None:
    """The scope arguments are equality on the column, whatever the filter shorthand would read."""
    assert [r["memory"] for r in store.get_all(user_id="alice")["results"]] == ["alice's secret"]
    assert [r["memory"] for r in store.search("secret", user_id="bob")["results"]] == ["bob's secret"]
    # the wildcard stays available as a filter operator the caller spells out
    assert len(store.get_all(filters={"user_id": "*"})["results"]) == 2
    # ANDed with a literal scope it cannot widen it
    assert len(store.get_all(user_id="alice", filters={"user_id": "*"})["results"]) == 1
    store.delete_all(user_id="alice")
    assert _owners(store) == ["bob"]


def test_cli_delete_star_is_refused(store: Memory) -> None:
    out = CliRunner().invoke(app, ["memory", "delete", "--user-id", "*", "--path", str(store.path)])
    assert out.exit_code == 2 and "is not a valid id" in out.output
    assert _owners(store) == ["alice", "bob"]


def test_keys_file_refuses_a_star_user(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k-0001": {"user_id": "*"}}))
    with pytest.raises(ValueError, match=r"\{\"admin\": true\}"):
        load_keys(keys)
    keys.write_text(json.dumps({"k-0001": {"user_id": " * "}}))
    with pytest.raises(ValueError, match="not a valid id"):
        load_keys(keys)


def _unused(*_: Any) -> None:  # keeps imports used while the module grows
    pass
