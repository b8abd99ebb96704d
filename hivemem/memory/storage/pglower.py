"""``hm_lower(text)``: Python's ``str.lower``, as an SQL function, for ``icontains`` on PostgreSQL.

The filter language defines ``icontains`` by Python's ``str.lower`` (``filters.py``), and SQLite
calls that very function. PostgreSQL's ``lower()`` is not the same function: its result depends on
the collation's ctype (under ``C`` it folds ASCII only; glibc's ``C.utf8`` makes ``İ`` an ``i``
where Python gives ``i̇``), and it never applies the Final_Sigma rule (``"ΑΣ".lower() == "ας"``).

``install`` builds ``hm_lower`` per store, and checks it against the running interpreter:

1. ``Σ`` in the Final_Sigma context → ``ς``, by a regular expression with look-behind/ahead over
   the Cased and Case_Ignorable code points. ``unicodedata`` does not expose those two sets, so
   each code point is classified by how ``str.lower`` treats a sigma next to it (``_tables``);
2. code points Python lowers to several code points (only U+0130 ``İ`` → ``i̇``) → ``replace()``;
3. ``lower(… COLLATE c)`` with a collation of the server whose per-character lowering is Python's,
   except for a few code points that a ``translate()`` before it fixes. Candidate collations are
   probed with every code point at once (one query, once per schema:
   docs/postgres.md#measurements-behind-the-design): on glibc 2.36, ``C.utf8`` differs from Python
   3.11 only at ``İ``;
4. no usable collation: one ``translate()`` over all 1,432 single-character mappings. Exact but
   slow (docs/postgres.md#measurements-behind-the-design): ASCII-only text takes
   ``lower(… COLLATE "C")`` instead.

The finished function is compared with ``str.lower`` on every code point before it is used. It is
made once per schema and rebuilt only when the Python/Unicode version that made it changes
(``VERSION``, kept in the store's ``meta`` table).
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from typing import Any

VERSION = f"py{sys.version_info[0]}.{sys.version_info[1]}-unicode{unicodedata.unidata_version}-2"
_SIGMA, _FINAL = "\u03a3", "\u03c2"
_MAX_FIXES = 64  # more single-character fixes than this: the collation is not worth it
_MAX_TRIED = 6  # collations probed at most


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str], list[int], list[int]]:
    """Python's lowering, read off ``str.lower``: single-character mappings, multi-character
    mappings, and the code points that are Cased-but-not-Case_Ignorable and Case_Ignorable.

    ``"A" + c + "Σ"`` ends in ``ς`` iff c is case-ignorable (skipped, then "A" is cased) or cased;
    ``"1" + c + "Σ"`` ends in ``ς`` iff c is cased and not case-ignorable ("1" is not cased).
    """
    single: dict[str, str] = {}
    multi: dict[str, str] = {}
    cased: list[int] = []
    ignorable: list[int] = []
    for c in _chars():
        low = c.lower()
        if low != c:
            (single if len(low) == 1 else multi)[c] = low
        if ("A" + c + _SIGMA).lower()[-1] == _FINAL:
            (cased if ("1" + c + _SIGMA).lower()[-1] == _FINAL else ignorable).append(ord(c))
    return single, multi, cased, ignorable


@functools.cache
def _chars() -> tuple[str, ...]:
    """Every code point PostgreSQL text can hold (no NUL, no surrogates), except the newline."""
    return tuple(chr(cp) for cp in range(1, sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF and cp != 0x0A)


@functools.cache
def probe(full: bool = True) -> tuple[str, str]:
    """``(text, text.lower() per character)``: every code point, newline-separated; or (``full``
    False) only those a translate()-based function treats specially, which suffices for it: any
    other code point passes through translate() unchanged and is its own lowercase."""
    chars = _chars()
    if not full:
        single, multi, cased, ignorable = _tables()
        keep = {*single, *single.values(), *multi, *"".join(multi.values()), *map(chr, cased)}
        keep |= {*map(chr, ignorable), *map(chr, range(1, 0x80))}
        chars = tuple(c for c in chars if c in keep)
    return "\n".join(chars), "\n".join(c.lower() for c in chars)


def ranges(cps: list[int]) -> str:
    """Sorted code points as the inside of a regex bracket (runs as ``\\Uxxxxxxxx-\\Uyyyyyyyy``)."""
    parts: list[str] = []
    start = prev = cps[0]
    for cp in [*cps[1:], -1]:
        if cp == prev + 1:
            prev = cp
            continue
        parts.append(f"\\U{start:08X}" if start == prev else f"\\U{start:08X}-\\U{prev:08X}")
        start = prev = cp
    return "".join(parts)


def _bracket(cps: list[int]) -> str:
    return f"[{ranges(cps)}]"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _context_free(expr: str) -> str:
    """Steps 1 and 2 of the module docstring around ``expr``."""
    _, multi, cased, ignorable = _tables()
    final_sigma = (
        f"(?<={_bracket(cased)}{_bracket(ignorable)}*){_SIGMA}(?!{_bracket(ignorable)}*{_bracket(cased)})"
    )
    expr = (
        f"CASE WHEN strpos({expr}, {_literal(_SIGMA)}) > 0 THEN regexp_replace({expr}, "
        f"{_literal(final_sigma)}, {_literal(_FINAL)}, 'g') ELSE {expr} END"
    )
    for upper, lower in multi.items():
        expr = f"replace({expr}, {_literal(upper)}, {_literal(lower)})"
    return expr


def _translate(expr: str, fixes: dict[str, str]) -> str:
    if not fixes:
        return expr
    return f"translate({expr}, {_literal(''.join(fixes))}, {_literal(''.join(fixes.values()))})"


def _fixes(conn: Any, collation: str) -> dict[str, str] | None:
    """Code points that ``lower(… COLLATE collation)`` gets wrong → Python's lowercase, or ``None``
    when a translate() before ``lower`` cannot repair it (it lowers what Python keeps)."""
    text, want = probe()
    try:
        with conn.transaction():  # a savepoint: a failed probe must not end the caller's transaction
            got = conn.execute(f"SELECT lower(%s COLLATE {_ident(collation)})", (text,)).fetchone()[0]
    except Exception:  # a collation that cannot be used with this database's encoding
        return None
    if got == want:
        return {}
    got_rows, want_rows = got.split("\n"), want.split("\n")
    if len(got_rows) != len(want_rows):
        return None
    _, multi, _, _ = _tables()
    fixes: dict[str, str] = {}
    for c, g, w in zip(_chars(), got_rows, want_rows, strict=True):
        if g == w or c in multi:  # multi-character mappings are replaced before lower()
            continue
        if w == c or len(fixes) >= _MAX_FIXES:
            return None
        fixes[c] = w
    return fixes


def _candidates(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT collname FROM pg_collation WHERE collencoding IN (-1, pg_char_to_encoding('UTF8'))"
        " AND collprovider IN ('c', 'i', 'd') AND collname NOT IN ('C', 'POSIX', 'ucs_basic')"
    ).fetchall()
    names = [r[0] for r in rows]

    def rank(name: str) -> tuple[int, str]:
        low = name.lower()
        if low in ("c.utf8", "c.utf-8"):
            return 0, name  # glibc's C.UTF-8: per-character towlower, no locale quirks
        if low in ("en_us.utf8", "en_us.utf-8", "default"):
            return 1, name
        if low == "und-x-icu":
            return 2, name
        return 3, name

    return sorted(names, key=rank)[:_MAX_TRIED]


_VERIFIED: dict[str, tuple[str, str]] = {}  # server → (body, how) already checked on it


def install(conn: Any, qualified_name: str, server: str) -> str:
    """Create ``qualified_name(text)`` on ``conn`` (in the caller's transaction) and check it on
    every code point; → how it lowers (for the store's ``meta``). ``server`` names the server:
    a body already checked there by this process is not probed again."""
    if server in _VERIFIED:
        body, how = _VERIFIED[server]
        conn.execute(
            f"CREATE OR REPLACE FUNCTION {qualified_name}(t text) RETURNS text"
            f" LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {body}"
        )
        return how
    single, _, _, _ = _tables()
    base = _context_free("t")
    best: tuple[str, dict[str, str]] | None = None
    for name in _candidates(conn):
        fixes = _fixes(conn, name)
        if fixes is not None and (best is None or len(fixes) < len(best[1])):
            best = (name, fixes)
            if not fixes:
                break
    if best is not None:
        name, fixes = best
        body = f"lower({_translate(base, fixes)} COLLATE {_ident(name)})"
        how = f"lower() with collation {name}" + (f" and {len(fixes)} fixes" if fixes else "")
    else:
        ascii_only = "t ~ '^[\\x01-\\x7F]*$'"
        body = f'CASE WHEN {ascii_only} THEN lower(t COLLATE "C") ELSE {_translate(base, single)} END'
        how = "translate() of every mapping (no server collation lowers like Python)"
    conn.execute(
        f"CREATE OR REPLACE FUNCTION {qualified_name}(t text) RETURNS text"
        f" LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {body}"
    )
    text, want = probe(full=best is not None)
    if conn.execute(f"SELECT {qualified_name}(%s)", (text,)).fetchone()[0] != want:
        raise RuntimeError(f"{qualified_name} does not lower like Python's str.lower ({how})")
    _VERIFIED[server] = (body, how)
    return how
