"""The date words of a memory (``keyword_dates``, issue 23): its ``created_at`` as words the keyword
side indexes with its text, so that "when did Caroline go to the LGBTQ support group?" and a turn
of 7 May 2023 share "May" and "2023". Derived data: the memory's text, hash, history and search
results never hold them.

The rendering lives here only, once in Python (``date_words``) and once as SQL (``sql``, the same
expression on SQLite and PostgreSQL but for the digit test), tested equal over many dates on both
backends (tests/memory/test_keyword_dates.py). It reads the first ten characters of ``created_at``
as ``YYYY-MM-DD``: the UTC date of every ``created_at`` hivemem writes (``records.now``,
``records.created``, Mem0 imports); a ``created_at`` that does not start with such a date (an
imported free-form one) has no date words. Changing the rendering means bumping ``VERSION`` (the
stores re-index at their next open with the option: ``fts.ensure_schema``, ``pgkeyword``).
"""

from __future__ import annotations

import re

VERSION = "1"  # of the rendering; part of the keyword layout marks (fts.LAYOUT_DATED, pgdates.VERSION)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")  # fmt: skip
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")


def date_words(created_at: str) -> str:
    """``"2023-05-08T13:56:00.000000+00:00"`` → ``"8 May 2023"`` (day without leading zero, English
    month, 4-digit year); ``""`` when ``created_at`` does not start with a date (module docstring)."""
    found = _DATE.match(created_at)
    if found is None:
        return ""
    year, month, day = found.groups()
    if not ("01" <= month <= "12" and "01" <= day <= "31"):
        return ""
    return f"{day.lstrip('0')} {MONTHS[int(month) - 1]} {year}"


def sql(column: str, dialect: str) -> str:
    """``date_words(column)`` as an SQL expression of ``dialect`` (``"sqlite"`` or ``"postgres"``),
    NULL where ``date_words`` gives ``""``."""
    if dialect == "sqlite":
        digits = f"{column} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'"
    else:
        digits = f"{column} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}'"
    month = " ".join(f"WHEN '{n:02d}' THEN '{name}'" for n, name in enumerate(MONTHS, 1))
    return (
        f"CASE WHEN {digits} AND substr({column}, 9, 2) BETWEEN '01' AND '31'"
        f" THEN ltrim(substr({column}, 9, 2), '0') || ' ' || (CASE substr({column}, 6, 2) {month} END)"
        f" || ' ' || substr({column}, 1, 4) END"
    )
