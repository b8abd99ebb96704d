"""Compile a parsed filter tree (``hivemem.memory.filters``) to a WHERE clause: one compiler, two dialects.

The compiler (``compile_filter``) walks the tree and owns the semantics shared by every backend:

* every atom is two-valued (``dialect.sure``: ``coalesce(…, 0|false)``), so NOT, ``ne`` and
  ``nin`` treat a missing field as "does not equal", exactly like the Python reading in ``filters``;
* the columns of ``records.COLUMNS`` hold only text: a non-string value never matches them;
* equality on a column at the top level of the tree is emitted bare (``user_id = ?``) so the
  column's index can serve it (NULL simply does not match there);
* no filter (or an empty AND) compiles to ``Compiled.always``: a flag, never SQL text to compare;
* ``unexpired(bound)`` (never a user's filter: ``Memory`` adds it) keeps the memories whose
  ``expires_at`` (``records.expiry``'s fixed-width UTC text) is NULL or ≥ ``bound`` (None: NULL
  only); ``Storage.expiry_cut`` gives the bound.

A ``Dialect`` writes the SQL of each atom: ``SQLITE`` here (metadata read with
``json_extract``/``json_type``, the JSON path bound as a parameter), PostgreSQL's in ``pgcompile``.
An ``in``/``nin`` list is bound as ONE parameter (SQLite: a JSON array read with ``json_each``, one
per type family so the string ``"3"`` never equals the number 3), never one placeholder per value:
``filters.MAX_IN_VALUES`` values are one uncorrelated subquery, not that many ORed terms (which
overflowed SQLite's expression tree at ~1,000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.records import COLUMNS

CMP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_UNEXPIRED = "unexpired"  # the operator of ``unexpired``; ``filters.parse`` never makes it


def unexpired(bound: str | None) -> Cond:
    """The test "``expires_at`` NULL or ≥ ``bound``" (None: NULL only), as a node of a filter tree."""
    return Cond("expires_at", _UNEXPIRED, bound)


def is_unexpired(node: Node | None) -> bool:
    """Whether ``node`` is an ``unexpired`` test (its bound is ``node.value``)."""
    return isinstance(node, Cond) and node.op == _UNEXPIRED


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True)
class Compiled:
    """``WHERE {sql}`` with ``params``; ``always``: no filter at all (``sql`` is then the dialect's
    true, usable as is)."""

    sql: str
    params: list[Any] = field(default_factory=list)
    always: bool = False


class Dialect:
    """How one backend writes the atoms of a filter (SQLite's; ``pgcompile.PgDialect`` overrides).

    Each method appends its parameters to ``params`` in the order its placeholders appear."""

    mark = "?"
    true = "1"
    false = "0"

    def sure(self, expr: str) -> str:
        """``expr`` made two-valued: NULL (a missing field) reads as false."""
        return f"coalesce({expr}, {self.false})"

    def check(self, value: Any) -> Any:
        """A filter value, refused if the backend cannot hold it (SQLite: any)."""
        return value

    # -- the columns of ``records.COLUMNS`` (text) -----------------------------------------------

    def column_in(self, column: str, strings: list[str], params: list[Any]) -> str:
        params.append(_array(strings))
        return f"{column} IN {_EACH}"

    def column_contains(self, column: str, needle: str, lower: bool, params: list[Any]) -> str:
        params.append(needle)
        return f"instr({f'hm_lower({column})' if lower else column}, ?) > 0"

    # -- metadata fields -------------------------------------------------------------------------

    def meta_exists(self, name: str, params: list[Any]) -> str:
        params.append(_path(name))
        return "json_type(metadata, ?) NOT IN ('null')"

    def meta_eq(self, name: str, value: Any, params: list[Any]) -> str:
        path = _path(name)
        if isinstance(value, bool):
            params.append(path)
            return f"json_type(metadata, ?) = '{'true' if value else 'false'}'"
        params.extend((path, path, value))
        kind = "= 'text'" if isinstance(value, str) else _NUM
        return f"json_type(metadata, ?) {kind} AND json_extract(metadata, ?) = ?"

    def meta_in(self, name: str, values: tuple[Any, ...], params: list[Any]) -> str | None:
        """``None``: nothing can match (an empty list)."""
        path = _path(name)
        strings = [v for v in values if isinstance(v, str)]
        numbers = [v for v in values if is_num(v)]
        flags = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
        parts = []
        if strings:
            params.extend((path, path, _array(strings)))
            parts.append(f"(json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) IN {_EACH})")
        if numbers:
            params.extend((path, path, _array(numbers)))
            parts.append(f"(json_type(metadata, ?) {_NUM} AND json_extract(metadata, ?) IN {_EACH})")
        if flags:
            params.append(path)
            parts.append(f"(json_type(metadata, ?) IN ({','.join(repr(f) for f in flags)}))")
        return " OR ".join(parts) if parts else None

    def meta_cmp(self, name: str, sym: str, value: Any, params: list[Any]) -> str:
        path = _path(name)
        kind = _NUM if is_num(value) else "= 'text'"
        params.extend((path, path, value))
        return f"json_type(metadata, ?) {kind} AND json_extract(metadata, ?) {sym} ?"

    def meta_contains(self, name: str, needle: str, lower: bool, params: list[Any]) -> str:
        path = _path(name)
        expr = "hm_lower(json_extract(metadata, ?))" if lower else "json_extract(metadata, ?)"
        params.extend((path, path, needle))
        return f"json_type(metadata, ?) = 'text' AND instr({expr}, ?) > 0"


_NUM = "IN ('integer','real')"
_EACH = "(SELECT value FROM json_each(?))"  # the values of one bound JSON array
SQLITE = Dialect()


def _path(name: str) -> str:
    return f'$."{name}"'


def _array(values: list[Any]) -> str:
    return json.dumps(values, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class _Walk:
    """One compilation: the tree walked in placeholder order, parameters collected."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.params: list[Any] = []

    def atom(self, c: Cond) -> str:
        d, name, op, params = self.d, c.field, c.op, self.params
        value: Any = c.value if isinstance(c.value, tuple) else d.check(c.value)
        column = name in COLUMNS
        if op == _UNEXPIRED:
            if value is None:
                return "(expires_at IS NULL)"
            params.append(value)
            return f"(expires_at IS NULL OR expires_at >= {d.mark})"
        if op == "exists":
            return f"({name} IS NOT NULL)" if column else d.sure(d.meta_exists(name, params))
        if op in ("eq", "ne"):
            eq = self.eq(name, value)
            return eq if op == "eq" else f"(NOT {eq})"
        if op in ("in", "nin"):
            any_ = self.in_(name, value)
            return any_ if op == "in" else f"(NOT {any_})"
        if op in CMP:
            if not column:
                return d.sure(d.meta_cmp(name, CMP[op], value, params))
            if not isinstance(value, str):
                return d.false  # columns hold only text
            params.append(value)
            return d.sure(f"{name} {CMP[op]} {d.mark}")
        if op in ("contains", "icontains"):
            lower = op == "icontains"
            needle = value.lower() if lower else value
            if column:
                return d.sure(d.column_contains(name, needle, lower, params))
            return d.sure(d.meta_contains(name, needle, lower, params))
        raise ValueError(f"unknown filter operator {op!r}")  # parse() never lets one through

    def eq(self, name: str, value: Any) -> str:
        d = self.d
        if name not in COLUMNS:
            return d.sure(d.meta_eq(name, value, self.params))
        if not isinstance(value, str):
            return d.false  # columns hold only text
        self.params.append(value)
        return d.sure(f"{name} = {d.mark}")

    def in_(self, name: str, values: tuple[Any, ...]) -> str:
        """Whether the field equals one of ``values`` (bound as one parameter)."""
        d = self.d
        values = tuple(d.check(v) for v in values)
        if name in COLUMNS:
            strings = [v for v in values if isinstance(v, str)]
            return d.sure(d.column_in(name, strings, self.params)) if strings else d.false
        sql = d.meta_in(name, values, self.params)
        return d.false if sql is None else d.sure(sql)

    def node(self, node: Node) -> str:
        if isinstance(node, Cond):
            return self.atom(node)
        parts = [self.node(n) for n in node.items]
        if node.kind == "AND":
            return "(" + " AND ".join(parts) + ")" if parts else self.d.true
        any_ = "(" + " OR ".join(parts) + ")" if parts else self.d.false
        return any_ if node.kind == "OR" else f"(NOT {any_})"


def compile_filter(node: Node | None, dialect: Dialect = SQLITE) -> Compiled:
    """The WHERE clause of ``node`` in ``dialect``; ``Compiled.always`` when nothing is filtered."""
    top = () if node is None else node.items if isinstance(node, Logic) and node.kind == "AND" else (node,)
    if not top:
        return Compiled(dialect.true, [], always=True)
    walk = _Walk(dialect)
    parts: list[str] = []
    for item in top:
        if (
            isinstance(item, Cond)
            and item.op == "eq"
            and item.field in COLUMNS
            and isinstance(item.value, str)
        ):
            parts.append(f"{item.field} = {dialect.mark}")  # indexable; NULL simply does not match here
            walk.params.append(dialect.check(item.value))
        else:
            parts.append(walk.node(item))
    return Compiled(" AND ".join(parts), walk.params)


def compile_where(node: Node | None) -> tuple[str, list[Any]]:
    """``(sql, params)`` for ``WHERE sql`` in SQLite; ``("1", [])`` for no filter (prefer
    ``compile_filter``, whose ``always`` says so without reading the SQL)."""
    compiled = compile_filter(node, SQLITE)
    return compiled.sql, compiled.params
