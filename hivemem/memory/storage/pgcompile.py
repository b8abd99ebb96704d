"""Compile a parsed filter tree (``hivemem.memory.filters``) to a PostgreSQL WHERE clause.

The same tree as ``sqlcompile`` (SQLite), the same semantics (Python's reading in ``filters``):

* every atom is two-valued (``coalesce(…, false)``), so NOT, ``ne`` and ``nin`` treat a missing
  field as "does not equal";
* metadata is read from the ``meta`` jsonb column; ``jsonb_typeof`` keeps the type families apart
  (numbers, strings, booleans). Equality and number order use jsonb's own operators, which compare
  numbers numerically and never cast (no error on a field that holds another type);
* strings compare in code-point order: ``COLLATE "C"`` (UTF-8 byte order is code-point order),
  whatever the database's default collation;
* ``contains`` is ``strpos``; ``icontains`` lowers with ``hm_lower`` (``pglower``: Python's
  ``str.lower``, not PostgreSQL's locale-dependent ``lower``).

Columns of ``records.COLUMNS`` are read directly (they are ``COLLATE "C"`` text); equality on a
column at the top level of the tree is emitted bare (``user_id = %s``) so an index can serve it.
An ``in``/``nin`` list is bound as ONE array parameter (``= ANY(%s::jsonb[])``; jsonb equality
keeps the type families apart), never one placeholder per value (``filters.MAX_IN_VALUES``).

PostgreSQL text cannot hold U+0000, so nothing stored contains it; a filter string that does is
refused with a ValueError rather than sent to the server.
"""

from __future__ import annotations

import json
from typing import Any

from hivemem.memory.filters import Cond, Logic, Node
from hivemem.memory.records import COLUMNS

_CMP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_FIELD = "(meta -> %s::text)"


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(
            "filter values may not contain NUL characters (U+0000): PostgreSQL text cannot hold them"
        )
    return value


def _in(field: str, values: tuple[Any, ...], params: list[Any]) -> str:
    """Whether the field equals one of ``values``, as one array parameter."""
    if field in COLUMNS:  # columns hold only text
        strings = [_text(v) for v in values if isinstance(v, str)]
        if not strings:
            return "false"
        params.append(strings)
        return f"coalesce({field} = ANY(%s::text[]), false)"
    if not values:
        return "false"
    params.extend((field, [json.dumps(_text(v)) for v in values]))
    return f"coalesce({_FIELD} = ANY(%s::jsonb[]), false)"


def _eq(field: str, value: Any, params: list[Any]) -> str:
    value = _text(value)
    if field in COLUMNS:
        if not isinstance(value, str):
            return "false"  # columns hold only text
        params.append(value)
        return f"coalesce({field} = %s, false)"
    params.extend((field, json.dumps(value)))
    return f"coalesce({_FIELD} = %s::jsonb, false)"


class _Compiler:
    def __init__(self, lower: str) -> None:
        self.lower = lower  # the qualified name of hm_lower
        self.params: list[Any] = []

    def atom(self, c: Cond) -> str:
        field, op, params = c.field, c.op, self.params
        value: Any = c.value if isinstance(c.value, tuple) else _text(c.value)
        column = field in COLUMNS
        if op == "exists":
            if column:
                return f"({field} IS NOT NULL)"
            params.append(field)
            return f"coalesce(jsonb_typeof{_FIELD} <> 'null', false)"
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
                    return "false"
                params.append(value)
                return f"coalesce({field} {sym} %s, false)"
            if _is_num(value):
                params.extend((field, field, json.dumps(value)))
                return f"coalesce(jsonb_typeof{_FIELD} = 'number' AND {_FIELD} {sym} %s::jsonb, false)"
            params.extend((field, field, value))
            text = '(meta ->> %s::text) COLLATE "C"'
            return f"coalesce(jsonb_typeof{_FIELD} = 'string' AND {text} {sym} %s, false)"
        if op in ("contains", "icontains"):
            needle = value.lower() if op == "icontains" else value
            if column:
                expr = f"{self.lower}({field})" if op == "icontains" else field
                params.append(needle)
                return f"coalesce(strpos({expr}, %s) > 0, false)"
            text = "(meta ->> %s::text)"
            expr = f"{self.lower}{text}" if op == "icontains" else text
            params.extend((field, field, needle))
            return f"coalesce(jsonb_typeof{_FIELD} = 'string' AND strpos({expr}, %s) > 0, false)"
        raise ValueError(f"unknown filter operator {op!r}")  # parse() never lets one through

    def node(self, node: Node) -> str:
        if isinstance(node, Cond):
            return self.atom(node)
        parts = [self.node(n) for n in node.items]
        if node.kind == "AND":
            return "(" + " AND ".join(parts) + ")" if parts else "true"
        any_ = "(" + " OR ".join(parts) + ")" if parts else "false"
        return any_ if node.kind == "OR" else f"(NOT {any_})"


def compile_where(node: Node | None, lower: str) -> tuple[str, list[Any]]:
    """``(sql, params)`` for ``WHERE sql`` (``%s`` placeholders); ``("true", [])`` for no filter.

    ``lower``: the schema-qualified name of the store's ``hm_lower`` function.
    """
    if node is None:
        return "true", []
    top = node.items if isinstance(node, Logic) and node.kind == "AND" else (node,)
    comp = _Compiler(lower)
    parts: list[str] = []
    for item in top:
        if (
            isinstance(item, Cond)
            and item.op == "eq"
            and item.field in COLUMNS
            and isinstance(item.value, str)
        ):
            parts.append(f"{item.field} = %s")  # indexable; NULL simply does not match here
            comp.params.append(item.value)
        else:
            parts.append(comp.node(item))
    return (" AND ".join(parts) if parts else "true"), comp.params
