"""The date words of a memory (``keyword_dates``, issue 23): its ``created_at`` as words the keyword
side indexes with its text, so that "what did Caroline do on 7 May, 2023?" and a turn of that
day share "7", "May" and "2023". Derived data: the memory's text, hash, history and search
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


# A date named in a query (``query_span``), the first by position, one pattern of two branches:
# (1) a day or month with a year, "May 3, 2023", "3rd June, 2023", "Sept. 5th 2023", "December
# 1,2023", "in December 2023"; (2) after a preposition, a day or month without one, "in June",
# "on Aug 15th", "on the 3rd of May". A month is its English name in full or its abbreviation
# (``_ABBREVIATIONS``), any case; a day may carry an ordinal suffix. The preposition keeps "may"
# the verb ("what may she do") from reading as May. A year alone ("in 2023") is not read: it
# lowered multi-hop recall@5 on LoCoMo (docs/memory.md, "A wider reader of query dates").
# Whitespace runs are bounded (``\s{1,4}``) and every branch is fixed-length apart from them, so a
# match attempt costs O(1) steps at each position: linear on the longest query (``MAX_QUERY_CHARS``;
# tests/memory/test_query_dates.py checks the pattern and reads hostile queries).
_ABBREVIATIONS = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9,
                  "sept": 9, "oct": 10, "nov": 11, "dec": 12}  # fmt: skip
_MONTH_NUMBER = {name.lower(): n for n, name in enumerate(MONTHS, 1)} | _ABBREVIATIONS
_MONTH = "|".join(sorted(_MONTH_NUMBER, key=len, reverse=True))
_DAY = r"[0-9]{1,2}(?:st|nd|rd|th)?"
_PREP = r"(?:in|on|of|during|since|until|by|before|after|from|around)"
_MONTH_DAY = rf"(?:({_DAY})\s{{1,4}}(?:of\s{{1,4}})?)?({_MONTH})\b(?!['’])\.?(?:\s{{1,4}}({_DAY})\b)?"
_QUERY_DATE = re.compile(
    rf"\b(?:(?:{_PREP}\s{{1,4}})?{_MONTH_DAY},?\s{{0,4}}([0-9]{{4}})\b"  # groups 1-4: with a year
    rf"|{_PREP}\s{{1,4}}(?:the\s{{1,4}})?{_MONTH_DAY})",  # groups 5-7: without a year
    re.IGNORECASE | re.ASCII,
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February's 29 checked against the year
ANY_YEAR = "-"  # a span's year part when the query names none: "--05-01" (ISO 8601's "--MM-DD")


def query_span(query: str) -> tuple[str, str] | None:
    """The UTC days ``(first, last)`` (both included) of the first date ``query`` names
    (``_QUERY_DATE``): a day with a year ("May 3, 2023", "3rd June, 2023") is ``("2023-05-03",
    "2023-05-03")``, a month with a year ("in December 2023") that calendar month; a day or month
    without a year ("on Aug 15th", "in June") the same days of every year, written ``"--MM-DD"``
    (``ANY_YEAR``). Years 0001-9999. None when it names none,
    or when the first one is no day of the calendar ("31 February 2023", "on June 31st"): the query
    then gets no date boost. Memories whose ``created_at`` falls on those days are the ones the
    search boosts (``hybrid``: ``in_span``; the same date as ``date_words`` reads)."""
    found = _QUERY_DATE.search(query)
    if found is None:
        return None
    g = found.groups()
    before, name, after, year_text = g[0:4] if g[1] is not None else (*g[4:7], None)
    month = _MONTH_NUMBER[str(name).lower()]  # a month branch matched: its name is there
    if year_text is None:
        year_part, last = ANY_YEAR, _DAYS[month - 1]  # February: its 29th is in some year
    else:
        year = int(year_text)
        if year == 0:
            return None
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        year_part, last = f"{year:04d}", _DAYS[month - 1] - (month == 2 and not leap)
    month_text = f"{year_part}-{month:02d}"
    if before is None and after is None:
        return f"{month_text}-01", f"{month_text}-{last:02d}"
    day = int(str(before if before is not None else after).rstrip("stndrh"))
    if not 1 <= day <= last:
        return None
    return f"{month_text}-{day:02d}", f"{month_text}-{day:02d}"


def in_span(created_at: str, span: tuple[str, str]) -> bool:
    """Whether ``created_at``'s date (its first ten characters, as ``date_words`` reads them) is
    one of the days of ``span`` (``query_span``)."""
    day = created_at[:10]
    if span[0].startswith(ANY_YEAR * 2):  # "--MM-DD": the same days of every year
        return span[0][1:] <= day[4:] <= span[1][1:] and _DATE.fullmatch(day) is not None
    return span[0] <= day <= span[1] and _DATE.fullmatch(day) is not None  # compared first: cheaper
