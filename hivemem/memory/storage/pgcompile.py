"""PostgreSQL's dialect of the filter compiler (``sqlcompile``: the same tree, walk and semantics).

What differs from SQLite is only how an atom is written:

* metadata is read from the ``meta`` jsonb column; ``jsonb_typeof`` keeps the type families apart
  (numbers, strings, booleans). Equality and number order use jsonb's own operators, which compare
  numbers numerically and never cast (no error on a field that holds another type);
* strings compare in code-point order: ``COLLATE "C"`` (UTF-8 byte order is code-point order),
  whatever the database's default collation;
* ``contains`` is ``strpos``; ``icontains`` lowers with ``hm_lower`` (``pglower``: Python's
  ``str.lower``, not PostgreSQL's locale-dependent ``lower``), qualified by the store's schema;
* an ``in``/``nin`` list is ONE array parameter (``= ANY(%s::jsonb[])``; jsonb equality keeps the
  type families apart).

PostgreSQL text cannot hold U+0000, so nothing stored contains it; a filter string that does is
refused with a ValueError rather than sent to the server.
"""

from __future__ import annotations

import json
from typing import Any

from hivemem.memory.filters import Node
from hivemem.memory.storage.sqlcompile import Compiled, Dialect, compile_filter, is_num

_FIELD = "(meta -> %s::text)"
_TEXT = "(meta ->> %s::text)"


class PgDialect(Dialect):
    """``lower``: the schema-qualified name of the store's ``hm_lower`` function."""

    mark = "%s"
    true = "true"
    false = "false"

    def __init__(self, lower: str) -> None:
        self.lower = lower

    def check(self, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(
                "filter values may not contain NUL characters (U+0000): PostgreSQL text cannot hold them"
            )
        return value

    def column_in(self, column: str, strings: list[str], params: list[Any]) -> str:
        params.append(strings)
        return f"{column} = ANY(%s::text[])"

    def column_contains(self, column: str, needle: str, lower: bool, params: list[Any]) -> str:
        params.append(needle)
        return f"strpos({f'{self.lower}({column})' if lower else column}, %s) > 0"

    def meta_exists(self, name: str, params: list[Any]) -> str:
        params.append(name)
        return f"jsonb_typeof{_FIELD} <> 'null'"

    def meta_eq(self, name: str, value: Any, params: list[Any]) -> str:
        params.extend((name, json.dumps(value)))
        return f"{_FIELD} = %s::jsonb"

    def meta_in(self, name: str, values: tuple[Any, ...], params: list[Any]) -> str | None:
        if not values:
            return None
        params.extend((name, [json.dumps(v) for v in values]))
        return f"{_FIELD} = ANY(%s::jsonb[])"

    def meta_cmp(self, name: str, sym: str, value: Any, params: list[Any]) -> str:
        if is_num(value):
            params.extend((name, name, json.dumps(value)))
            return f"jsonb_typeof{_FIELD} = 'number' AND {_FIELD} {sym} %s::jsonb"
        params.extend((name, name, value))
        return f"jsonb_typeof{_FIELD} = 'string' AND {_TEXT} COLLATE \"C\" {sym} %s"

    def meta_contains(self, name: str, needle: str, lower: bool, params: list[Any]) -> str:
        params.extend((name, name, needle))
        expr = f"{self.lower}{_TEXT}" if lower else _TEXT
        return f"jsonb_typeof{_FIELD} = 'string' AND strpos({expr}, %s) > 0"


def compile_pg(node: Node | None, lower: str) -> Compiled:
    """The WHERE clause of ``node`` for PostgreSQL (``%s`` placeholders); ``lower``: the
    schema-qualified ``hm_lower``."""
    return compile_filter(node, PgDialect(lower))


def compile_where(node: Node | None, lower: str) -> tuple[str, list[Any]]:
    """``(sql, params)`` for ``WHERE sql``; ``("true", [])`` for no filter (prefer ``compile_pg``,
    whose ``always`` says so without reading the SQL)."""
    compiled = compile_pg(node, lower)
    return compiled.sql, compiled.params
