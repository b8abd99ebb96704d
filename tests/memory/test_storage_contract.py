"""Both backends fulfil ``storage.base.Storage``: every abstract method implemented, capabilities
said, options checked in one place, filters compiled by one walk in two dialects, and the shared
write steps (update, delete, import) behave the same on SQLite and PostgreSQL.

The vectors here are random unit vectors, not a model's: these tests measure storage only."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hivemem.memory import filters
from hivemem.memory.records import prepare
from hivemem.memory.storage.backends import open_storage
from hivemem.memory.storage.base import Capabilities, Storage
from hivemem.memory.storage.locate import PostgresLocation, resolve
from hivemem.memory.storage.pgcompile import PgDialect
from hivemem.memory.storage.postgres import PostgresStorage
from hivemem.memory.storage.sqlcompile import SQLITE, compile_filter
from hivemem.memory.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL unless a test takes `location`

DIM = 8
PG = PgDialect('"s".hm_lower')
TREES = [
    {"user_id": "a"},
    {"user_id": 3, "cat": {"in": ["a", 1, True]}},
    {"cat": {"gte": 3, "lt": "z"}, "memory": {"icontains": "Ab"}},
    {"OR": [{"a": 1}, {"user_id": "x"}], "NOT": [{"b": {"ne": 2}}], "AND": [{"c": {"nin": ["q"]}}]},
    {"OR": [], "NOT": [], "topic": "*", "user_id": "*"},
]


@pytest.mark.parametrize("cls", [SQLiteStorage, PostgresStorage])
def test_each_backend_implements_the_whole_contract(cls: type[Storage]) -> None:
    assert issubclass(cls, Storage) and not inspect.isabstract(cls), cls.__abstractmethods__
    assert isinstance(cls.capabilities, Capabilities)


def test_capabilities_are_said_not_probed() -> None:
    assert SQLiteStorage.capabilities == Capabilities(keywords=True, group_commit=True)
    assert PostgresStorage.capabilities == Capabilities(keywords=True, group_commit=False)


@pytest.mark.parametrize("dialect", [SQLITE, PG], ids=["sqlite", "postgres"])
def test_no_filter_is_a_flag_not_sql_text(dialect: Any) -> None:
    for tree in (None, filters.parse({}), filters.and_(None, None)):
        compiled = compile_filter(tree, dialect)
        assert compiled.always and compiled.params == [] and compiled.sql == dialect.true
    for tree in TREES:
        assert not compile_filter(filters.parse(tree), dialect).always


@pytest.mark.parametrize("tree", TREES)
def test_one_walk_two_dialects(tree: dict[str, Any]) -> None:
    """The same tree gives the same shape in both dialects: one placeholder per parameter, and the
    same negations around the atoms."""
    node = filters.parse(tree)
    lite, pg = compile_filter(node, SQLITE), compile_filter(node, PG)
    assert lite.sql.count("?") == len(lite.params) and pg.sql.count("%s") == len(pg.params)
    assert lite.sql.count("(NOT ") == pg.sql.count("(NOT ")


def test_postgres_options_are_checked_once_with_the_names_users_write() -> None:
    with pytest.raises(ValueError, match="minconn must not exceed maxconn, got minconn=5, maxconn=3"):
        resolve("postgresql://h/db?minconn=5&maxconn=3")  # at resolve time, before any connection
    with pytest.raises(ValueError, match="minconn must be an integer from 1 to 1000, got 0"):
        PostgresStorage("postgresql://h/db", min_size=0)  # the older keyword, the same check
    with pytest.raises(ValueError, match="minconn must not exceed maxconn"):
        PostgresStorage("postgresql://h/db", minconn=4, maxconn=2)
    with pytest.raises(ValueError, match="search must be local, server or hnsw"):
        PostgresStorage("postgresql://h/db", search="fast")
    with pytest.raises(ValueError, match="ef_search must be an integer from 1 to 1000"):
        PostgresLocation("postgresql://h/db", ef_search=True)
    loc = resolve("postgresql://h/db?minconn=2&maxconn=7&ef_search=40")
    assert isinstance(loc, PostgresLocation) and (loc.minconn, loc.maxconn, loc.ef_search) == (2, 7, 40)


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_shared_write_steps_on_each_backend(location: str, tmp_path: Path) -> None:
    """update, delete, delete_where and import_rows are ``Storage``'s, run over each backend's
    ``WriteTx``: the same events and the same results on both."""
    storage = open_storage(resolve(location))
    try:
        storage.bind_model("test/random", DIM)
        mems = [m for t in ("alpha", "beta", "gamma", "delta") for m in prepare(t, user_id="u")]
        assert [e for _, e in storage.insert(mems, _unit(4, 1))] == ["ADD"] * 4
        a, b, c, d = (m.id for m in mems)

        storage.update(a, "alpha two", _unit(1, 2)[0], None, "h-alpha-two")
        storage.update(b, None, None, '{"k": 1}')
        with pytest.raises(ValueError, match="in the same scope already has this text"):
            storage.update(c, "x", _unit(1, 3)[0], None, mems[3].hash)
        with pytest.raises(KeyError):
            storage.update("no-such-id", None, None, '{"k": 2}')
        assert [(h["event"], h["old_memory"], h["new_memory"]) for h in storage.history(a)] == [
            ("ADD", None, "alpha"),
            ("UPDATE", "alpha", "alpha two"),
        ]
        got_b = storage.get(b)
        assert got_b is not None and got_b["metadata"] == {"k": 1}

        assert storage.delete(c) and not storage.delete(c)
        assert storage.delete_where(filters.parse({"memory": "delta"})) == 1
        deleted = storage.history(c)[-1]
        assert (deleted["event"], deleted["is_deleted"], deleted["new_memory"]) == ("DELETE", True, None)
        assert storage.deleted_ids() == [c, d] and storage.count() == 2

        new = prepare("epsilon", user_id="u")[0]
        event = {"id": "e-1", "memory_id": new.id, "old_memory": None, "new_memory": "epsilon",
                 "event": "ADD", "created_at": "2020-01-01T00:00:00", "updated_at": "2020-01-01T00:00:00",
                 "is_deleted": False, "actor_id": None, "role": None}  # fmt: skip
        stamp = "2021-05-05T00:00:00"
        result = storage.import_rows([mems[0], new], _unit(2, 4), [stamp, stamp], [event])
        assert result == [(a, "SKIP"), (new.id, "ADD")]
        again = storage.import_rows([new], _unit(1, 4), [stamp], [event])  # repeatable
        assert again == [(new.id, "SKIP")]
        imported = storage.get(new.id)
        assert imported is not None and imported["updated_at"] == stamp
        assert [h["id"] for h in storage.history(new.id)] == ["e-1"]  # replaces the synthetic ADD
        assert [r["memory"] for r in storage.list(filters.parse({"user_id": "u"}), 10)] == [
            "alpha two",
            "beta",
            "epsilon",
        ]
    finally:
        storage.close()
