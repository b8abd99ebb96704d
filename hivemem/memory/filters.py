"""Mem0's filter language, parsed once into a small tree that every storage backend compiles.

Grammar (Mem0's "enhanced metadata filtering", the same on every backend)::

    {"user_id": "alice",                      # shorthand for {"eq": "alice"}
     "category": {"in": ["a", "b"]},         # operators: eq ne in nin gt gte lt lte contains icontains
     "score": {"gte": 3, "lt": 9},           # several operators on one field: all must hold
     "topic": "*",                           # the field is present and not null
     "AND": [f1, f2], "OR": [f1, f2], "NOT": [f1, f2]}   # NOT: none of them holds

Keys at one level are ANDed. Semantics, chosen so that SQL and Python agree exactly:

* Values compare only within a type family: numbers with numbers (``True`` is not ``1``),
  strings with strings (by code point), booleans only by ``eq``/``ne``/``in``/``nin``.
* ``ne``/``nin`` are the negation of ``eq``/``in``: a record *without* the field matches them.
* ``contains``/``icontains`` are substring tests on string fields (``icontains`` uses Unicode
  ``str.lower``).

Parsing rejects anything else with a ValueError/TypeError that names the problem, so a typo such
as ``{"gte ": 3}`` never silently matches nothing.

Limits, checked here, before any backend compiles the tree (``LimitExceeded``, a ValueError naming
the limit; HTTP 422). Each backend must run every tree within them; they keep the SQLite
compiler's worst tree well inside SQLite's parser stack and expression depth (the margins:
docs/security.md#limits, "Why these numbers").

* ``MAX_FILTER_DEPTH`` = 10 levels of AND/OR/NOT nesting;
* ``MAX_FILTER_BRANCHES`` = 256 items in all AND/OR/NOT lists together;
* ``MAX_FILTER_CONDITIONS`` = 256 field tests (each operator on a field counts one);
* ``MAX_IN_VALUES`` = 10,000 values in all ``in``/``nin`` lists together (a backend binds a list
  as one parameter, never one placeholder per value);
* ``MAX_FIELD_CHARS`` = 256 characters in a field name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hivemem.embed.validate import check_unicode
from hivemem.errors import LimitExceeded

MAX_FILTER_DEPTH = 10
MAX_FILTER_BRANCHES = 256
MAX_FILTER_CONDITIONS = 256
MAX_IN_VALUES = 10_000
MAX_FIELD_CHARS = 256

OPERATORS = ("eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains", "icontains")
LOGICAL = ("AND", "OR", "NOT")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Cond:
    """One test on one field: ``op`` is one of OPERATORS or ``"exists"``."""

    field: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Logic:
    """``kind`` AND / OR / NOT over ``items`` (NOT = none of the items holds)."""

    kind: str
    items: tuple[Node, ...]


Node = Cond | Logic


def _check_scalar(field: str, op: str, value: Any) -> Scalar:
    if isinstance(value, str):
        return check_unicode(value, f"filter {field!r}: {op} value")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"filter {field!r}: {op} value {value!r} is not a finite number")
        if isinstance(value, int) and abs(value) > 2**53:
            raise ValueError(f"filter {field!r}: {op} value {value} is too large (limit ±2**53)")
        return value
    raise TypeError(
        f"filter {field!r}: {op} value must be a string, number or boolean, got {type(value).__name__}"
    )


def _check_field(field: Any) -> str:
    if not isinstance(field, str) or not field:
        raise TypeError(f"filter keys must be non-empty strings, got {field!r}")
    if len(field) > MAX_FIELD_CHARS:
        raise LimitExceeded(
            f"filter key {field[:40]!r}… is {len(field)} characters; the limit is {MAX_FIELD_CHARS} "
            "(MAX_FIELD_CHARS)",
            limit_name="MAX_FIELD_CHARS",
            limit=MAX_FIELD_CHARS,
            field="filters",
        )
    if '"' in field or any(ord(c) < 32 for c in field):
        raise ValueError(f"filter key {field!r} may not contain quotes or control characters")
    return check_unicode(field, f"filter key {field!r}")


_LABELS = {"branches": "AND/OR/NOT items", "conditions": "field conditions", "in_values": "in/nin values"}


class _Budget:
    """What one filter has used of the limits, counted while parsing (never after the fact)."""

    __slots__ = ("branches", "conditions", "in_values")

    def __init__(self) -> None:
        self.branches = self.conditions = self.in_values = 0

    def spend(self, what: str, n: int, limit: int, name: str) -> None:
        used = getattr(self, what) + n
        setattr(self, what, used)
        if used > limit:
            label = _LABELS[what]
            raise LimitExceeded(
                f"filters have more than {limit} {label} in all ({name}); split the query or use 'in'",
                limit_name=name,
                limit=limit,
                field="filters",
            )


def _field_ops(field: str, spec: Any, budget: _Budget) -> list[Node]:
    if spec == "*":
        budget.spend("conditions", 1, MAX_FILTER_CONDITIONS, "MAX_FILTER_CONDITIONS")
        return [Cond(field, "exists")]
    if not isinstance(spec, dict):
        if isinstance(spec, list | tuple | set):
            raise TypeError(f"filter {field!r}: a list is ambiguous here; write {{'in': [...]}}")
        budget.spend("conditions", 1, MAX_FILTER_CONDITIONS, "MAX_FILTER_CONDITIONS")
        return [Cond(field, "eq", _check_scalar(field, "eq", spec))]
    if not spec:
        raise ValueError(f"filter {field!r}: empty operator dict; use one of {', '.join(OPERATORS)}")
    out: list[Node] = []
    for op, value in spec.items():
        if op not in OPERATORS:
            raise ValueError(
                f"filter {field!r}: unknown operator {op!r}; valid operators: {', '.join(OPERATORS)}"
                " (and the value '*' for 'present')"
            )
        budget.spend("conditions", 1, MAX_FILTER_CONDITIONS, "MAX_FILTER_CONDITIONS")
        if op in ("in", "nin"):
            if not isinstance(value, list | tuple):
                raise TypeError(f"filter {field!r}: {op} needs a list, got {type(value).__name__}")
            budget.spend("in_values", len(value), MAX_IN_VALUES, "MAX_IN_VALUES")
            out.append(Cond(field, op, tuple(_check_scalar(field, op, v) for v in value)))
        elif op in ("contains", "icontains"):
            if not isinstance(value, str):
                raise TypeError(f"filter {field!r}: {op} needs a string, got {type(value).__name__}")
            out.append(Cond(field, op, check_unicode(value, f"filter {field!r}: {op} value")))
        elif op in ("gt", "gte", "lt", "lte"):
            v = _check_scalar(field, op, value)
            if isinstance(v, bool):
                raise TypeError(f"filter {field!r}: {op} cannot compare booleans")
            out.append(Cond(field, op, v))
        else:
            out.append(Cond(field, op, _check_scalar(field, op, value)))
    return out


def parse(filters: dict[str, Any] | None) -> Node | None:
    """Validate ``filters`` and return its tree (``None`` for no filter)."""
    if filters is None:
        return None
    if not isinstance(filters, dict):
        raise TypeError(f"filters must be a dict, got {type(filters).__name__}")
    node = _parse_dict(filters, 0, _Budget(), "filters")
    return node if node.items else None


def _parse_dict(filters: dict[str, Any], depth: int, budget: _Budget, path: str) -> Logic:
    items: list[Node] = []
    for key, spec in filters.items():
        if key in LOGICAL:
            kind = key
            if not isinstance(spec, list | tuple):
                raise TypeError(f"filter {key!r} needs a list of filter dicts, got {type(spec).__name__}")
            if depth + 1 > MAX_FILTER_DEPTH:  # before descending: a hostile tree never recurses far
                raise LimitExceeded(
                    f"filters nest AND/OR/NOT deeper than {MAX_FILTER_DEPTH} levels (MAX_FILTER_DEPTH) "
                    f"at {path[:200]}",
                    limit_name="MAX_FILTER_DEPTH",
                    limit=MAX_FILTER_DEPTH,
                    field="filters",
                )
            budget.spend("branches", len(spec), MAX_FILTER_BRANCHES, "MAX_FILTER_BRANCHES")
            subs: list[Node] = []
            for i, sub in enumerate(spec):
                if not isinstance(sub, dict):
                    raise TypeError(f"filter {key}[{i}] must be a dict, got {type(sub).__name__}")
                subs.append(_parse_dict(sub, depth + 1, budget, f"{path}[{key!r}][{i}]"))
            items.append(Logic(kind, tuple(subs)))
        else:
            items.extend(_field_ops(_check_field(key), spec, budget))
    return Logic("AND", tuple(items))


def literal(values: dict[str, str]) -> Node | None:
    """Equality on each field with the value taken literally (scope arguments, an API key's user).

    Never built through :func:`parse`, whose shorthand reads ``"*"`` as "present": a scope value
    is a tenant's id, so the only way to widen it is a filter the caller spells out.
    """
    items = tuple(Cond(_check_field(field), "eq", value) for field, value in values.items())
    if not items:
        return None
    return Logic("AND", items)


def and_(*nodes: Node | None) -> Node | None:
    """AND of the given trees, skipping ``None``."""
    present = tuple(n for n in nodes if n is not None)
    if not present:
        return None
    return present[0] if len(present) == 1 else Logic("AND", present)
