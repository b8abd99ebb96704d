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


# A date with a year named in a query (``query_span``): "May 3, 2023", "3 June, 2023", "December
# 1,2023", "in December 2023". Whitespace runs are bounded (``\s{1,4}``) and every branch is
# fixed-length apart from them, so a match attempt costs O(1) steps at each position: linear on
# the longest query (``MAX_QUERY_CHARS``; tests/memory/test_query_dates.py times a hostile one).
_QUERY_DATE = re.compile(
    r"\b(?:([0-9]{1,2})\s{1,4})?(" + "|".join(MONTHS) + r")\b(?:\s{1,4}([0-9]{1,2})\b)?,?\s{0,4}([0-9]{4})\b",
    re.IGNORECASE | re.ASCII,
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February's 29 checked against the year


def query_span(query: str) -> tuple[str, str] | None:
    """The UTC days ``(first, last)`` (``"YYYY-MM-DD"``, both included) of the first date with a
    year that ``query`` names: a day ("May 3, 2023", "3 June, 2023", "December 1,2023") is that
    day, a month alone ("in December 2023") that calendar month; English month names in full, any
    case, a 4-digit year 0001-9999. None when it names none, or when the first one is no day of the
    calendar ("31 February 2023", "May 2023" with year 0000): the query then gets no date boost.
    Memories whose ``created_at`` falls on those days are the ones the search boosts (``hybrid``:
    ``in_span``; the same date as ``date_words`` reads)."""
    found = _QUERY_DATE.search(query)
    if found is None:
        return None
    before, name, after, year_text = found.groups()
    year, month = int(year_text), [m.lower() for m in MONTHS].index(name.lower()) + 1
    if year == 0:
        return None
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    last = _DAYS[month - 1] - (month == 2 and not leap)
    month_text = f"{year:04d}-{month:02d}"
    if before is None and after is None:
        return f"{month_text}-01", f"{month_text}-{last:02d}"
    day = int(before if before is not None else after)
    if not 1 <= day <= last:
        return None
    return f"{month_text}-{day:02d}", f"{month_text}-{day:02d}"


def in_span(created_at: str, span: tuple[str, str]) -> bool:
    """Whether ``created_at``'s date (its first ten characters, as ``date_words`` reads them) is
    one of the days of ``span`` (``query_span``)."""
    day = created_at[:10]
    return span[0] <= day <= span[1] and _DATE.fullmatch(day) is not None  # compared first: cheaper
