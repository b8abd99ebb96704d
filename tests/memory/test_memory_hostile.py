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
from memory_helpers import HashEmbedder
from typer.testing import CliRunner

from hivemem import Memory
from hivemem.app.cli import app
from hivemem.http.keys import load_keys


class Counting(HashEmbedder):
    """The hash embedder (not a model), counting the texts it was asked to embed."""

    def __init__(self) -> None:
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts += len(texts)
        return super().embed(texts)


@pytest.fixture
def store(location: str) -> Iterator[Memory]:
    """A store with two tenants, on each backend (``location``, tests/memory/conftest.py)."""
    m = Memory(location, embedder=Counting())
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


def test_cli_delete_star_is_refused(store: Memory, location: str) -> None:
    out = CliRunner().invoke(app, ["memory", "delete", "--user-id", "*", "--path", location])
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


# -- defect 5: hostile filters stop in the parser, with the limit named -----------------------------


def _nest(kind: str, depth: int) -> dict[str, Any]:
    f: dict[str, Any] = {"k": 1}
    for _ in range(depth):
        f = {kind: [f]}
    return f


@pytest.mark.parametrize(
    ("bad", "limit"),
    [
        (_nest("AND", 60), "MAX_FILTER_DEPTH"),
        (_nest("NOT", 11), "MAX_FILTER_DEPTH"),
        ({"OR": [{"k": i} for i in range(1200)]}, "MAX_FILTER_BRANCHES"),
        ({"AND": [{} for _ in range(300)]}, "MAX_FILTER_BRANCHES"),
        ({f"k{i}": i for i in range(257)}, "MAX_FILTER_CONDITIONS"),
        ({"k": {"in": list(range(10_001))}}, "MAX_IN_VALUES"),
        ({"a": {"in": list(range(6000))}, "b": {"nin": list(range(6000))}}, "MAX_IN_VALUES"),
        ({"k" * 257: 1}, "MAX_FIELD_CHARS"),
    ],
    ids=["and-60", "not-11", "or-1200", "empty-300", "conditions-257", "in-10001", "in-total", "long-key"],
)
def test_filter_limits_are_checked_in_the_parser(store: Memory, bad: dict, limit: str) -> None:
    for call in (lambda: store.get_all(filters=bad), lambda: store.search("q", filters=bad)):
        with pytest.raises(ValueError, match=limit):
            call()
    assert store.embedder.texts == 2  # refused before the query was embedded


def test_filters_at_the_limits_run(store: Memory) -> None:
    """The worst shapes the limits allow compile and run in SQLite (its parser stack overflowed at
    24 nested NOTs, its expression tree at ~1,000 ORed conditions)."""
    from hivemem.memory.filters import (
        MAX_FILTER_BRANCHES,
        MAX_FILTER_CONDITIONS,
        MAX_FILTER_DEPTH,
        MAX_IN_VALUES,
    )

    for kinds in (["NOT"], ["AND"], ["OR"], ["NOT", "OR", "AND"]):
        # as deep as allowed, every remaining branch ORed at the bottom, every condition used
        n_or = MAX_FILTER_BRANCHES - (MAX_FILTER_DEPTH - 1)
        per = MAX_FILTER_CONDITIONS // n_or
        bottom = [{f"k{j}": {"gte": i} for j in range(per)} for i in range(n_or)]
        bottom[0].update({f"x{j}": {"ne": j} for j in range(MAX_FILTER_CONDITIONS - per * n_or)})
        bottom[1]["k"] = {"in": list(range(MAX_IN_VALUES))}
        bottom[1].pop("k0")
        f: dict[str, Any] = {"OR": bottom}
        for level in range(MAX_FILTER_DEPTH - 1):
            f = {kinds[level % len(kinds)]: [f]}
        store.get_all(filters=f)
        store.search("secret", filters=f, user_id="alice")
        store.delete_all(user_id="nobody")  # the scope ANDed on top of nothing
    flat = {f"k{i}": i for i in range(MAX_FILTER_CONDITIONS)}
    store.get_all(filters=flat, user_id="alice")


def test_long_in_lists_are_bound_not_expanded(store: Memory) -> None:
    """An ``in`` of 10,000 values (``MAX_IN_VALUES``) is one bound parameter; it once became 10,000
    ORed terms and an sqlite3.OperationalError. The matches are those of ``eq``."""
    MAX_IN_VALUES = 10_000
    m = store
    m.add_batch(
        [{"messages": f"n{i}", "user_id": "carol", "metadata": {"n": i, "s": f"v{i}"}} for i in range(50)]
    )
    values = list(range(0, 2 * MAX_IN_VALUES, 2))  # even numbers only
    got = {r["metadata"]["n"] for r in m.get_all(filters={"n": {"in": values}})["results"]}
    assert got == set(range(0, 50, 2))
    got = {
        r["metadata"]["n"] for r in m.get_all(filters={"n": {"nin": values}, "user_id": "carol"})["results"]
    }
    assert got == set(range(1, 50, 2))
    strings = [f"v{i}" for i in range(MAX_IN_VALUES - 3)] + [True, 7.0, "zz"]
    got = {r["metadata"]["n"] for r in m.get_all(filters={"s": {"in": strings}})["results"]}
    assert got == set(range(50))
    # type families stay apart: the string "3" is not the number 3, True is not 1
    assert m.get_all(filters={"n": {"in": ["3", True]}})["results"] == []
    users = [f"user{i}" for i in range(MAX_IN_VALUES - 1)] + ["bob"]
    assert [r["memory"] for r in m.get_all(filters={"user_id": {"in": users}})["results"]] == ["bob's secret"]
    assert len(m.get_all(filters={"user_id": {"nin": users}}, top_k=1000)["results"]) == 51


# -- defect 6: metadata is limited at write time, the same for every entry point --------------------


def _deep(depth: int) -> dict[str, Any]:
    x: Any = "leaf"
    for _ in range(depth - 1):
        x = {"k": x}
    return {"k": x}


@pytest.mark.parametrize(
    ("meta", "limit"),
    [
        (_deep(33), "MAX_METADATA_DEPTH"),
        (_deep(5000), "MAX_METADATA_DEPTH"),
        ({"k": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "MAX_METADATA_DEPTH"),
        ({"blob": "x" * 70_000}, "MAX_METADATA_BYTES"),
        ({"blob": "é" * 40_000}, "MAX_METADATA_BYTES"),  # counted in UTF-8 bytes
    ],
    ids=["depth-33", "depth-5000", "lists-33", "bytes", "utf8-bytes"],
)
def test_metadata_limits_at_write_time(store: Memory, meta: dict, limit: str) -> None:
    calls = [
        lambda: store.add("new", user_id="alice", metadata=meta),
        lambda: store.add_batch(
            [
                {"messages": "ok", "user_id": "alice"},
                {"messages": "new", "user_id": "alice", "metadata": meta},
            ]
        ),
        lambda: store.update(store.get_all(user_id="alice")["results"][0]["id"], metadata=meta),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=limit):
            call()
    assert _owners(store) == ["alice", "bob"]
    assert store.embedder.texts == 2
    assert store.get_all(user_id="alice")["results"][0]["metadata"] is None


def test_metadata_at_the_limits_reads_back(store: Memory) -> None:
    from hivemem.memory.records import MAX_METADATA_BYTES, MAX_METADATA_DEPTH

    deep = _deep(MAX_METADATA_DEPTH)
    big = {"blob": "x" * (MAX_METADATA_BYTES - len('{"blob":""}'))}
    store.add("deep", user_id="dora", metadata=deep)
    store.add("big", user_id="dora", metadata=big)
    got = {r["memory"]: r["metadata"] for r in store.get_all(user_id="dora")["results"]}
    assert got == {"deep": deep, "big": big}
    assert len(store.search("deep", user_id="dora", filters={"k": "*"})["results"]) == 1


# -- item 8: lesser defects of the memory part ------------------------------------------------------

LONE = "\udcff"  # a lone surrogate: a valid Python str that is not valid Unicode


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: m.add("x", user_id=f"u{LONE}"), "user_id"),
        (lambda m: m.add("x", user_id="u", agent_id=LONE), "agent_id"),
        (lambda m: m.add("x", run_id=f"r{LONE}"), "run_id"),
        (lambda m: m.add([{"role": f"user{LONE}", "content": "x"}], user_id="u"), "role"),
        (lambda m: m.add([{"role": "user", "content": "x", "name": LONE}], user_id="u"), "name"),
        (lambda m: m.add("x", user_id="u", metadata={"k": f"v{LONE}"}), r"metadata\['k'\]"),
        (lambda m: m.add("x", user_id="u", metadata={f"k{LONE}": 1}), "metadata"),
        (lambda m: m.add("x", user_id="u", metadata={"k": [{"z": LONE}]}), r"metadata\['k'\]\[0\]\['z'\]"),
        (lambda m: m.get(f"id{LONE}"), "memory_id"),
        (lambda m: m.delete(f"id{LONE}"), "memory_id"),
        (lambda m: m.update(f"id{LONE}", metadata={}), "memory_id"),
        (lambda m: m.history(f"id{LONE}"), "memory_id"),
        (lambda m: m.get_all(user_id=LONE), "user_id"),
        (lambda m: m.delete_all(agent_id=LONE), "agent_id"),
        (lambda m: m.get_all(filters={"k": f"v{LONE}"}), "filter 'k'"),
        (lambda m: m.get_all(filters={f"k{LONE}": "v"}), "filter key"),
        (lambda m: m.search("q", filters={"k": {"in": ["a", LONE]}}), "filter 'k'"),
    ],
)
def test_lone_surrogates_are_named_before_embedding(store: Memory, call: Any, field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field}.*lone surrogate"):
        call(store)
    assert store.embedder.texts == 2
    assert _owners(store) == ["alice", "bob"]


@pytest.mark.parametrize("top_k", [10**20, 2**63, 1_000_000_001])
def test_huge_top_k_is_a_named_error(store: Memory, top_k: int) -> None:
    for call in (lambda: store.get_all(top_k=top_k), lambda: store.search("q", top_k=top_k)):
        with pytest.raises(ValueError, match=r"top_k.*MAX_TOP_K"):
            call()


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_threshold_is_refused(store: Memory, threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        store.search("secret", threshold=threshold)
    assert len(store.search("secret", threshold=-1.0)["results"]) == 2


def test_import_checks_every_line_first_and_names_the_file_line(
    store: Memory, location: str, tmp_path: Path
) -> None:
    lines = [json.dumps({"memory": f"fact {i}", "user_id": "erin"}) for i in range(7)]
    lines[5] = json.dumps({"memory": "no scope at all"})  # a valid JSON line that Memory refuses
    lines.insert(2, "")  # blank lines count: the error names the line of the file (now line 7)
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(
        app, ["memory", "import", str(src), "--batch", "2", "--path", location], catch_exceptions=False
    )
    assert out.exit_code == 2, out.output
    assert "line 7:" in out.output and "user_id, agent_id or run_id" in out.output
    assert _owners(store) == ["alice", "bob"]  # nothing of the file was stored


def test_cli_path_that_is_a_directory_or_unwritable(tmp_path: Path) -> None:
    run = CliRunner()
    for path in (tmp_path, Path("/proc/no-such-dir/memory.sqlite")):
        for args in (["list"], ["add", "x", "--user-id", "u"], ["delete", "--user-id", "u"]):
            out = run.invoke(app, ["memory", *args, "--path", str(path)])
            assert out.exit_code == 2, out.output
            assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
            assert str(path) in out.output and "Traceback" not in out.output


# -- Hypothesis: whatever a caller sends, a clear refusal or a faithful result ----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hivemem.memory.records import MAX_METADATA_DEPTH  # noqa: E402

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

HOSTILE_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["*", " * ", "", "  ", "\x00", "a\udcff", "\ud800", "é" * 300, "x" * 2000, '"', "$.x"]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    HOSTILE_TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
    max_leaves=10,
)
FIELD = st.one_of(st.sampled_from(["k", "n", "user_id", "memory", "role", "AND"]), HOSTILE_TEXT)
OPS = ["eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains", "icontains", "between"]
LEAF_FILTER = st.dictionaries(
    FIELD,
    st.one_of(
        SCALARS, st.dictionaries(st.sampled_from(OPS), st.one_of(SCALARS, st.lists(SCALARS, max_size=4)))
    ),
    max_size=3,
)
FILTERS = st.recursive(
    LEAF_FILTER,
    lambda inner: st.dictionaries(
        st.sampled_from(["AND", "OR", "NOT"]), st.lists(inner, max_size=3), min_size=1
    ),
    max_leaves=8,
)
REFUSED = (ValueError, TypeError)  # the only ways a call may fail: naming the problem


def _wrap(node: Any, levels: int) -> Any:
    for _ in range(levels):
        node = {"NOT": [node]} if levels % 2 else {"AND": [node, {}]}
    return node


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memory]:
    m = Memory(tmp_path_factory.mktemp("hyp") / "h.sqlite", embedder=HashEmbedder())
    m.add_batch(
        [
            {"messages": f"fact {i}", "user_id": f"u{i % 3}", "metadata": {"k": i, "n": str(i)}}
            for i in range(9)
        ]
    )
    yield m
    m.close()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(filters=FILTERS, extra_depth=st.integers(0, 30))
def test_any_filter_gives_rows_or_a_named_refusal(shared: Memory, filters: Any, extra_depth: int) -> None:
    """Never an sqlite3 error, a RecursionError or a UnicodeEncodeError: rows, or ValueError/TypeError."""
    f = _wrap(filters, extra_depth)
    for call in (lambda: shared.get_all(filters=f, top_k=100), lambda: shared.search("fact", filters=f)):
        try:
            rows = call()["results"]
        except REFUSED as exc:
            assert str(exc)
            continue
        assert all(r["id"] for r in rows)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(metadata=JSONISH, depth=st.integers(0, MAX_METADATA_DEPTH + 3))
def test_any_metadata_is_stored_faithfully_or_refused_whole(tmp_path_factory: pytest.TempPathFactory,
                                                             metadata: Any, depth: int) -> None:  # fmt: skip
    m = Memory(tmp_path_factory.mktemp("meta") / "m.sqlite", embedder=Counting())
    meta: Any = {"v": metadata}
    for _ in range(depth):
        meta = {"w": meta}
    try:
        m.add_batch(
            [{"messages": "first", "user_id": "u"}, {"messages": "second", "user_id": "u", "metadata": meta}]
        )
    except REFUSED:
        assert m.count() == 0 and m.embedder.texts == 0  # refused before embedding, nothing stored
    else:
        stored = {r["memory"]: r["metadata"] for r in m.get_all(user_id="u")["results"]}
        assert stored["second"] == json.loads(json.dumps(meta))  # JSON's own reading (tuples → lists)
    m.close()


MESSAGES = st.one_of(
    HOSTILE_TEXT,
    st.dictionaries(st.sampled_from(["role", "content", "name", "x"]), SCALARS, max_size=4),
    st.lists(
        st.one_of(
            st.fixed_dictionaries(
                {
                    "role": st.sampled_from(["user", "assistant", "system", "", "tool"]),
                    "content": HOSTILE_TEXT,
                },
                optional={"name": st.one_of(st.none(), HOSTILE_TEXT, st.integers())},
            ),
            SCALARS,
        ),
        max_size=4,
    ),
    st.integers(),
    st.none(),
)
IDS = st.one_of(st.none(), HOSTILE_TEXT, st.integers(), st.lists(st.text(max_size=2), max_size=2))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages=MESSAGES, user_id=IDS, agent_id=IDS, run_id=IDS)
def test_any_message_shape_and_ids_are_stored_literally_or_refused(
    tmp_path_factory: pytest.TempPathFactory, messages: Any, user_id: Any, agent_id: Any, run_id: Any
) -> None:
    m = Memory(tmp_path_factory.mktemp("ids") / "i.sqlite", embedder=Counting())
    m.add("someone else's", user_id="other")
    scope = {"user_id": user_id, "agent_id": agent_id, "run_id": run_id}
    try:
        added = m.add(messages, **scope)["results"]
    except REFUSED:
        assert m.count() == 1 and m.embedder.texts == 1
    else:
        ids = {k: v.strip() for k, v in scope.items() if v is not None}
        assert "*" not in ids.values()
        mine = m.get_all(**scope)["results"]
        assert {r["id"] for r in mine} == {r["id"] for r in added}  # exactly these: literal equality
        assert all(r.get(k) == v for r in mine for k, v in ids.items())
        m.delete_all(**scope)
        assert [r["memory"] for r in m.get_all()["results"]] == ["someone else's"]
    m.close()
