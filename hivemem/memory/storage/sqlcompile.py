"""Compile a parsed filter tree (``hivemem.memory.filters``) to an SQLite WHERE clause.

Every atom is made two-valued (``coalesce(…, 0)``) so that NOT and ``ne``/``nin`` treat a
missing field as "does not equal", exactly like the Python semantics in ``filters``. Metadata
fields are read with ``json_extract``/``json_type`` (the JSON path is a bound parameter); the
columns of ``records.COLUMNS`` are read directly. Equality on a column at the top level of the
tree is emitted bare (``user_id = ?``) so SQLite can use the column's index.

An ``in``/``nin`` list is bound as ONE parameter, a JSON array read with ``json_each`` (one array per
type family, so the string ``"3"`` never equals the number 3), never one placeholder per value: a
list of 10,000 values (``filters.MAX_IN_VALUES``) is one uncorrelated subquery, not 10,000 ORed
terms (which overflowed SQLite's expression tree at ~1,000).
"""

from __future__ import annotations

import json
from typing import Any

from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.records import COLUMNS

_NUM = "IN ('integer','real')"
_EACH = "(SELECT value FROM json_each(?))"  # the values of one bound JSON array
_CMP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(field: str, value: Any, params: list[Any]) -> str:
    if field in COLUMNS:
        if not isinstance(value, str):
            return "0"  # columns hold only text
        params.append(value)
        return f"coalesce({field} = ?, 0)"
    path = f'$."{field}"'
    if isinstance(value, bool):
        params.append(path)
        return f"coalesce(json_type(metadata, ?) = '{'true' if value else 'false'}', 0)"
    params.extend((path, path, value))
    kind = "= 'text'" if isinstance(value, str) else _NUM
    return f"coalesce(json_type(metadata, ?) {kind} AND json_extract(metadata, ?) = ?, 0)"


def _array(values: list[Any]) -> str:
    return json.dumps(values, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _in(field: str, values: tuple[Any, ...], params: list[Any]) -> str:
    """Whether the field equals one of ``values``: one JSON-array parameter per type family."""
    strings = [v for v in values if isinstance(v, str)]
    if field in COLUMNS:  # columns hold only text
        if not strings:
            return "0"
        params.append(_array(strings))
        return f"coalesce({field} IN {_EACH}, 0)"
    path = f'$."{field}"'
    numbers = [v for v in values if _is_num(v)]
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
    if not parts:
        return "0"
    return f"coalesce({' OR '.join(parts)}, 0)"


def _atom(c: Cond, params: list[Any]) -> str:
    field, op, value = c.field, c.op, c.value
    column = field in COLUMNS
    path = f'$."{field}"'
    if op == "exists":
        if column:
            return f"({field} IS NOT NULL)"
        params.append(path)
        return "coalesce(json_type(metadata, ?) NOT IN ('null'), 0)"
    if op == "eq":
        return _eq(field, value, params)
    if op == "ne":
        return f"(NOT {_eq(field, value, params)})"
    if op in ("in", "nin"):
        any_ = _in(field, value, params)
        return any_ if op == "in" else f"(NOT {any_})"
    if op in _CMP:
        sym = _CMP[op]
        if column:
            if not isinstance(value, str):
                return "0"
            params.append(value)
            return f"coalesce({field} {sym} ?, 0)"
        kind = _NUM if _is_num(value) else "= 'text'"
        params.extend((path, path, value))
        return f"coalesce(json_type(metadata, ?) {kind} AND json_extract(metadata, ?) {sym} ?, 0)"
    if op in ("contains", "icontains"):
        needle = value.lower() if op == "icontains" else value
        if column:
            expr = f"hm_lower({field})" if op == "icontains" else field
            params.append(needle)
            return f"coalesce(instr({expr}, ?) > 0, 0)"
        expr = "hm_lower(json_extract(metadata, ?))" if op == "icontains" else "json_extract(metadata, ?)"
        params.extend((path, path, needle))
        return f"coalesce(json_type(metadata, ?) = 'text' AND instr({expr}, ?) > 0, 0)"
    raise ValueError(f"unknown filter operator {op!r}")  # parse() never lets one through


def _node(node: Node, params: list[Any]) -> str:
    if isinstance(node, Cond):
        return _atom(node, params)
    parts = [_node(n, params) for n in node.items]
    if node.kind == "AND":
        return "(" + " AND ".join(parts) + ")" if parts else "1"
    any_ = "(" + " OR ".join(parts) + ")" if parts else "0"
    return any_ if node.kind == "OR" else f"(NOT {any_})"


def compile_where(node: Node | None) -> tuple[str, list[Any]]:
    """``(sql, params)`` for ``WHERE sql``; ``("1", [])`` for no filter."""
    if node is None:
        return "1", []
    top = node.items if isinstance(node, Logic) and node.kind == "AND" else (node,)
    params: list[Any] = []
    parts: list[str] = []
    for item in top:
        if (
            isinstance(item, Cond)
            and item.op == "eq"
            and item.field in COLUMNS
            and isinstance(item.value, str)
        ):
            parts.append(f"{item.field} = ?")  # indexable; NULL simply does not match here
            params.append(item.value)
        else:
            parts.append(_node(item, params))
    return (" AND ".join(parts) if parts else "1"), params
