"""Filters: the SQL compilation must agree with a plain-Python reading of Mem0's filter language
on every input Hypothesis can think of, on SQLite and on PostgreSQL. Uses the hash embedder
(filters need no model)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem import Memory
from hivemem.memory import hybrid
from hivemem.memory.storage import pglower

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)

KEYS = ["a", "b", "ü"]
STRINGS = ["", "x", "X", "xy", "Straße", "STRASSE", "été", "ÉTÉ", "İ", "10", "9"]
ENTITY = ["u1", "u2", "Ü1"]
COLUMNS = (
    "id",
    "memory",
    "hash",
    "created_at",
    "updated_at",
    "user_id",
    "agent_id",
    "run_id",
    "actor_id",
    "role",
)

scalars = st.one_of(
    st.sampled_from(STRINGS),
    st.integers(-3, 12),
    st.sampled_from([0.5, -1.0, 2.0, 10.0]),
    st.booleans(),
)


def _records() -> list[dict[str, Any]]:
    rng = random.Random(7)
    pool: list[Any] = [*STRINGS, -3, 0, 1, 2, 10, 12, 0.5, 2.0, True, False, None, [1, "x"], {"n": 1}]
    out = []
    for i in range(120):
        meta = {k: rng.choice(pool) for k in KEYS if rng.random() < 0.6}
        scope = {"user_id": rng.choice(ENTITY)} if rng.random() < 0.8 else {"agent_id": rng.choice(ENTITY)}
        out.append({"messages": f"memory {i} {rng.choice(STRINGS)}", **scope, "metadata": meta or None})
    return out


# -- the reference: Mem0's filter language read literally, in plain Python --------------------------


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _lookup(rec: dict[str, Any], field: str) -> tuple[bool, Any]:
    if field in COLUMNS:
        return (rec.get(field) is not None, rec.get(field))
    meta = rec.get("metadata") or {}
    return (field in meta, meta.get(field))


def _same(v: Any, x: Any) -> bool:
    if isinstance(x, bool):
        return isinstance(v, bool) and v is x
    if isinstance(x, str):
        return isinstance(v, str) and v == x
    return _num(v) and v == x


def _cond(rec: dict[str, Any], field: str, op: str, x: Any) -> bool:
    present, v = _lookup(rec, field)
    if op == "exists":
        return present and v is not None
    if op == "eq":
        return present and _same(v, x)
    if op == "ne":
        return not (present and _same(v, x))
    if op == "in":
        return present and any(_same(v, y) for y in x)
    if op == "nin":
        return not (present and any(_same(v, y) for y in x))
    if op in ("gt", "gte", "lt", "lte"):
        if not ((_num(x) and _num(v)) or (isinstance(x, str) and isinstance(v, str))):
            return False
        return {"gt": v > x, "gte": v >= x, "lt": v < x, "lte": v <= x}[op]
    if op == "contains":
        return isinstance(v, str) and x in v
    if op == "icontains":
        return isinstance(v, str) and x.lower() in v.lower()
    raise AssertionError(op)


def matches(rec: dict[str, Any], f: dict[str, Any]) -> bool:
    for key, spec in f.items():
        if key == "AND":
            ok = all(matches(rec, s) for s in spec)
        elif key == "OR":
            ok = any(matches(rec, s) for s in spec)
        elif key == "NOT":
            ok = not any(matches(rec, s) for s in spec)
        elif spec == "*":
            ok = _cond(rec, key, "exists", None)
        elif isinstance(spec, dict):
            ok = all(_cond(rec, key, op, x) for op, x in spec.items())
        else:
            ok = _cond(rec, key, "eq", spec)
        if not ok:
            return False
    return True


# -- strategies -------------------------------------------------------------------------------------

fields = st.sampled_from([*KEYS, "user_id", "agent_id", "role"])
op_values = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), scalars).filter(
        lambda t: not (t[0] in ("gt", "gte", "lt", "lte") and isinstance(t[1], bool))
    ),
    st.tuples(st.sampled_from(["in", "nin"]), st.lists(scalars, max_size=3)),
    st.tuples(st.sampled_from(["contains", "icontains"]), st.sampled_from(STRINGS)),
)
field_spec = st.one_of(
    scalars,
    st.just("*"),
    st.sampled_from(ENTITY),
    st.dictionaries(st.sampled_from(["x"]), op_values, min_size=1, max_size=1).map(lambda d: dict([d["x"]])),
)
leaf = st.dictionaries(fields, field_spec, min_size=1, max_size=2)
filters = st.recursive(
    leaf,
    lambda inner: st.one_of(
        inner,
        st.dictionaries(st.sampled_from(["AND", "OR", "NOT"]), st.lists(inner, max_size=3), min_size=1),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, hash_embedder: Any
) -> Iterator[tuple[Memory, list[dict[str, Any]]]]:
    if request.param == "sqlite":
        location = str(tmp_path_factory.mktemp("filters") / "f.sqlite")
    else:
        location = request.getfixturevalue("pg_url")()
    m = Memory(location, embedder=hash_embedder)
    m.add_batch(_records())
    stored = m.get_all(top_k=10_000)["results"]
    assert len(stored) == 120
    yield m, stored
    m.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=filters)
def test_sql_filters_match_python_reference(filled: tuple[Memory, list[dict[str, Any]]], f: dict) -> None:
    m, stored = filled
    expected = {r["id"] for r in stored if matches(r, f)}
    got = {r["id"] for r in m.get_all(filters=f, top_k=10_000)["results"]}
    assert got == expected
    assert hybrid.has_keywords(m._storage)  # both backends: the filter applies to both sides
    for mode in hybrid.MODES:  # every text holds "memory": the keyword side sees every row too
        found = {r["id"] for r in m.search("memory 3", filters=f, top_k=10_000, mode=mode)["results"]}
        assert found == expected, mode


def test_search_top_k_is_exact(filled: tuple[Memory, list[dict[str, Any]]]) -> None:
    m, stored = filled
    emb = m.embedder
    q = emb.embed_one("memory 7 x")
    full = m.search("memory 7 x", top_k=10_000, mode="vector")["results"]
    best = sorted(full, key=lambda r: -r["score"])[:5]
    top5 = m.search("memory 7 x", top_k=5, mode="vector")["results"]
    assert [r["id"] for r in top5] == [r["id"] for r in best]
    vec = {r["id"]: emb.embed_one(r["memory"]) for r in stored}
    assert all(abs(float(vec[r["id"]] @ q) - r["score"]) < 1e-5 for r in full)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"a": {"between": [1, 2]}}, ValueError, "unknown operator 'between'; valid operators: eq, ne"),
        ({"a": [1, 2]}, TypeError, "write {'in'"),
        ({"a": {"in": "x"}}, TypeError, "needs a list"),
        ({"a": {"gt": True}}, TypeError, "cannot compare booleans"),
        ({"a": {"contains": 3}}, TypeError, "needs a string"),
        ({"AND": {"a": 1}}, TypeError, "list of filter dicts"),
        ({"a": {"eq": None}}, TypeError, "string, number or boolean"),
        ({"a": {}}, ValueError, "empty operator dict"),
        ({'a"b': 1}, ValueError, "quotes"),
        ("user_id=1", TypeError, "filters must be a dict"),
    ],
)
def test_bad_filters_are_named(tmp_path: Path, hash_embedder: Any, bad: Any, error: type, match: str) -> None:
    m = Memory(tmp_path / "b.sqlite", embedder=hash_embedder)
    with pytest.raises(error, match=match):
        m.get_all(filters=bad)
    m.close()


@pytest.mark.parametrize("how", ["collation", "translate"])
def test_pg_lower_is_python_str_lower(
    pg_url: Callable[[], str], hash_embedder: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``icontains`` on PostgreSQL lowers with ``hm_lower``: equal to ``str.lower`` on every code
    point, and on strings where the Final_Sigma rule and U+0130 matter; also when no collation
    of the server can be used and the function falls back to one big translate()."""
    if how == "translate":
        monkeypatch.setattr(pglower, "_candidates", lambda conn: [])
        monkeypatch.setattr(pglower, "_VERIFIED", {})
    m = Memory(pg_url(), embedder=hash_embedder)
    storage = m._storage
    rng = random.Random(3)
    alphabet = "AaΣσς'.:ʰ\u0301\u0345 1İÉé\u00adǅΣ\u2019-"
    samples = ["ΑΣ", "ΣΑΣ", "ΌΣΟΣ ΣΟΦΌΣ.", "AΣ'", "AΣ'A", "1ʰΣ", "İSTANBUL", "Straße"]
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9))) for _ in range(3000)]
    text, want = pglower.probe(full=how == "collation")  # see probe(): enough for translate()
    with storage._read() as conn:
        assert conn.execute(f"SELECT {storage._lower}(%s)", (text,)).fetchone()[0] == want
        got = conn.execute(
            f"SELECT array(SELECT {storage._lower}(s) FROM unnest(%s::text[]) WITH ORDINALITY u(s, i)"
            " ORDER BY i)",
            (samples,),
        ).fetchone()[0]
        how_stored = conn.execute(f"SELECT value FROM {storage._ns}.meta WHERE key = 'lower_how'").fetchone()[
            0
        ]
    assert got == [s.lower() for s in samples]
    assert how_stored.startswith("translate()" if how == "translate" else "lower()")
    m.close()
