"""Dates named in a query (part of ``keyword_dates``, issue 23): ``datewords.query_span`` reads
them, ``hybrid.fuse`` adds ``DATE_SHARE`` to the keyword score of the fusion's candidates created
then. These tests check the parser and the arithmetic on both backends, not ranking quality: they
use the hash embedder (NOT a model; ``tests/hash_embedder.py``) and run in the fast set. The recall
it buys is measured by ``benchmarks/retrieval.py --runs --dates`` on LoCoMo with the real model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from memory_helpers import TALK, TALK_SEARCHES, add_dated_talk

from hivemem import Memory
from hivemem.embed.validate import MAX_TEXT_CHARS
from hivemem.http.memory_models import MemoryRecord
from hivemem.memory import hybrid
from hivemem.memory.storage import datewords

pytestmark = pytest.mark.fast

# -- the parser -------------------------------------------------------------------------------------

DAY = {
    "when did she go there on May 3, 2023?": "2023-05-03",
    "3 June, 2023": "2023-06-03",
    "December 1,2023": "2023-12-01",  # no space after the comma
    "on 7  may   2023 at noon": "2023-05-07",
    "MAY 3 2023": "2023-05-03",
    "29 February 2024": "2024-02-29",  # a leap year
    "29 February 2000": "2000-02-29",
    "January 1, 0001": "0001-01-01",
    "December 31, 9999": "9999-12-31",
    "on 3 May 2023 and on 4 June 2024": "2023-05-03",  # the first date
    "3 June 3 2023": "2023-06-03",  # a day on both sides: the first one
    "3rd June, 2023": "2023-06-03",  # ordinals, abbreviations
    "the 12th of May 2023": "2023-05-12",
    "Sept 3, 2023": "2023-09-03",
    "sep. 21st 2023": "2023-09-21",
    "on Aug 15th, 2022": "2022-08-15",
    "DEC 1 2023": "2023-12-01",
}
MONTH = {
    "what did Caroline do in December 2023?": ("2023-12-01", "2023-12-31"),
    "February 2024": ("2024-02-01", "2024-02-29"),
    "february 2023": ("2023-02-01", "2023-02-28"),
    "February 1900": ("1900-02-01", "1900-02-28"),  # a century, not a leap year
    "April, 2023": ("2023-04-01", "2023-04-30"),
    "in Feb 2023": ("2023-02-01", "2023-02-28"),
    "in June 2023 and in 2022": ("2023-06-01", "2023-06-30"),  # the first date
}
ANY_YEAR = {  # after a preposition, a day or month without a year: those days of every year
    "When did Melanie go camping in June?": ("--06-01", "--06-30"),
    "what did they give him when they met on Aug 15th?": ("--08-15", "--08-15"),
    "on the 3rd of May": ("--05-03", "--05-03"),
    "in the second week of November": ("--11-01", "--11-30"),
    "since may": ("--05-01", "--05-31"),
    "during february": ("--02-01", "--02-29"),  # the 29th is in some years
    "on Feb 29th": ("--02-29", "--02-29"),
    "in June, then on 4 May 2023": ("--06-01", "--06-30"),  # the first date
}
NONE = [
    "31 February 2023",  # no such day: no date at all
    "29 February 2023",
    "30 February 2024",
    "April 31, 2023",
    "May 32, 2023",
    "0 May 2023",
    "May 0, 2023",
    "May 0000",
    "May 12023",
    "May 2023x",
    "May2023",
    "Mayo 2023",
    "mayday 2023",
    "may I ask about 2023",
    "what may she do in the morning",  # "may" the verb: no year, no preposition before it
    "she said she may come in",
    "2023-05-03",  # ISO and numeric dates are not read
    "05/03/2023",
    "May 3",  # no year and no preposition
    "June 2",
    "in June's car",  # a name, not a month
    "on Jan’s birthday",
    "in Mayo",
    "in mayday",
    "on June 31st",  # no such day in any year
    "on Feb 30",
    "How many times has Melanie gone to the beach in 2023?",  # a year alone is not read
    "since 1999",
    "Sept3, 2023",
    "",
    "３ May ２０２３",  # only ASCII digits
    "in ２０２３",
]


@pytest.mark.parametrize(("query", "day"), DAY.items())
def test_a_day_is_that_utc_day(query: str, day: str) -> None:
    assert datewords.query_span(query) == (day, day)


@pytest.mark.parametrize(("query", "span"), MONTH.items())
def test_a_month_alone_is_that_calendar_month(query: str, span: tuple[str, str]) -> None:
    assert datewords.query_span(query) == span


@pytest.mark.parametrize(("query", "span"), ANY_YEAR.items())
def test_a_day_or_month_without_a_year_is_those_days_of_every_year(query: str, span: tuple[str, str]) -> None:
    assert datewords.query_span(query) == span


def test_a_year_alone_is_not_read_and_the_next_date_is() -> None:
    """A year alone ("in 2023") lowered multi-hop recall@5 on LoCoMo (docs/memory.md): not read."""
    assert datewords.query_span("in 2024, on May 3, 2023") == ("2023-05-03", "2023-05-03")


@pytest.mark.parametrize("query", NONE)
def test_no_date_or_no_day_of_the_calendar_gives_none(query: str) -> None:
    assert datewords.query_span(query) is None


def test_in_span_reads_created_at_as_date_words_does() -> None:
    span = ("2023-05-01", "2023-05-31")
    assert datewords.in_span("2023-05-01T00:00:00.000000+00:00", span)
    assert datewords.in_span("2023-05-31T23:59:59.999999+00:00", span)
    assert not datewords.in_span("2023-06-01T00:00:00.000000+00:00", span)
    assert not datewords.in_span("2023-04-30T23:59:59.999999+00:00", span)
    assert not datewords.in_span("", span) and not datewords.in_span("May 2023", span)
    every = datewords.query_span("in May")
    assert every == ("--05-01", "--05-31")
    for day in ("2023-05-01", "2022-05-31T23:59:59+00:00", "1999-05-15", "2024-05-08T00:00:00.000000+00:00"):
        assert datewords.in_span(day, every), day
    for day in ("2023-04-30", "2023-06-01T00:00:00+00:00", "", "May 2023", "--05-03", "2023-5-3"):
        assert not datewords.in_span(day, every), day
    leap = datewords.query_span("on Feb 29th")
    assert (
        leap is not None
        and datewords.in_span("2024-02-29", leap)
        and not datewords.in_span("2023-03-01", leap)
    )


def test_the_pattern_has_no_unbounded_repetition_and_hostile_queries_are_read() -> None:
    """Every quantifier of the pattern is bounded, so a match attempt at one position reads a
    bounded number of characters: linear in the query (no timing here, the property itself).
    Queries of the longest size made of near misses give no date, or the one at their very end."""
    pattern = datewords._QUERY_DATE.pattern
    assert not re.search(r"(?<!\\)[+*]|\{\d*,\}", pattern), pattern
    pieces = ["1 " * 4, "May ", "May 3,", "12 May ", "May 1 " * 3, " " * 9, "mayday ", "May 12023 "]
    pieces += ["in ", "on the ", "12th of ", "in Jun's ", "in 20233 ", "Sept. 3rd ", "in the 3rd of "]
    for piece in pieces:
        hostile = (piece * (MAX_TEXT_CHARS // len(piece) + 1))[: MAX_TEXT_CHARS - 16]
        got = datewords.query_span(hostile)
        assert got is None or piece in ("May 1 " * 3,), (piece, got)  # "May 1 May": no year
        assert datewords.query_span(hostile + ". June 2, 2023") in (("2023-06-02", "2023-06-02"), got)
    assert datewords.query_span(" " * (MAX_TEXT_CHARS - 12) + "June 2, 2023") == ("2023-06-02", "2023-06-02")


# -- the boost: the fusion's arithmetic, explain ------------------------------------------------------

ROWS = [  # (text, created_at day): "bicycle" in three of them, two created on 3 May 2023
    ("Caroline bought a red bicycle", "2023-05-03T09:00:00+00:00"),
    ("Melanie bought a blue bicycle", "2023-06-01"),
    ("They talked about bicycles and helmets", "2023-05-03T21:30:00+00:00"),
    ("Nothing in common with the query", "2023-05-03"),
    ("A walk by the lake", "2022-05-03"),
]


def fill(m: Memory) -> dict[str, str]:
    out = m.add_batch([{"messages": t, "user_id": "u", "timestamp": s} for t, s in ROWS])["results"]
    return {r["memory"]: r["id"] for r in out}


@pytest.mark.parametrize("context", [False, True])
def test_candidates_created_on_the_named_day_get_the_boost(location: str, context: bool) -> None:
    """explain shows ``date_boost`` (0.5 for the candidates created on the day, 0 for the others)
    and ``date_span``; the keyword score is ``(raw / best [or the summed parts] + 0.5) / top``; a
    candidate with no keyword hit gets a keyword part from the date alone; the fusion's formula
    holds for every hit."""
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True, keyword_context=context) as m:
        fill(m)
        hits = m.search("bicycle on May 3, 2023", user_id="u", explain=True)["results"]
        assert len(hits) == len(ROWS)
        boost = {h["memory"]: h["score_details"]["date_boost"] for h in hits}
        assert boost == {t: 0.5 if s.startswith("2023-05-03") else 0.0 for t, s in ROWS}
        assert {tuple(h["score_details"]["date_span"]) for h in hits} == {("2023-05-03", "2023-05-03")}
        raw = {h["memory"]: h["score_details"]["keyword_score"] for h in hits}
        best = max(v for v in raw.values() if v is not None)
        base = {t: (0.0 if v is None else v if context else v / best) + boost[t] for t, v in raw.items()}
        top = max(base.values())
        for h in hits:
            d = h["score_details"]
            assert d["keyword_normalized"] == pytest.approx(base[h["memory"]] / top, abs=1e-12)
            w = d["keyword_weight"]
            assert h["score"] == pytest.approx(
                (d["cosine"] + w * d["keyword_normalized"]) / (1 + w), abs=1e-9
            )
        # over REST the same fields come back (the response model keeps them)
        record = MemoryRecord(**hits[0]).model_dump(exclude_unset=True)
        assert {"date_boost", "date_span"} <= set(record["score_details"])


@pytest.mark.parametrize(
    ("query", "span", "days"),
    [
        ("bicycle on May 3rd", ("--05-03", "--05-03"), ("2023-05-03", "2022-05-03")),  # every year
        ("bicycle on 3rd May, 2023", ("2023-05-03", "2023-05-03"), ("2023-05-03",)),
    ],
)
def test_a_day_without_a_year_boosts_that_day_of_every_year(
    location: str, query: str, span: tuple[str, str], days: tuple[str, ...]
) -> None:
    """A day without a year boosts the candidates created on that day of any year; explain's
    ``date_span`` is the span as read (``--MM-DD`` for every year)."""
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:
        fill(m)
        hits = m.search(query, user_id="u", explain=True)["results"]
        assert len(hits) == len(ROWS)
        boost = {h["memory"]: h["score_details"]["date_boost"] for h in hits}
        assert boost == {t: 0.5 if s.startswith(days) else 0.0 for t, s in ROWS}
        assert {tuple(h["score_details"]["date_span"]) for h in hits} == {span}


def test_the_boost_needs_the_option_and_only_hybrid_mode_has_it(location: str) -> None:
    with Memory(location, embedder=HashEmbedder()) as m:
        fill(m)
        hits = m.search("bicycle on May 3, 2023", user_id="u", explain=True)["results"]
        assert all("date_boost" not in h["score_details"] for h in hits)  # the option off: as before
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True) as m:
        plain = m.search("bicycle", user_id="u", explain=True)["results"]
        assert {(h["score_details"]["date_boost"], h["score_details"]["date_span"]) for h in plain} == {
            (0.0, None)
        }
        keyword = m.search("bicycle on May 3, 2023", user_id="u", mode="keyword", explain=True)["results"]
        assert all("date_boost" not in h["score_details"] for h in keyword)
    with Memory(location, embedder=HashEmbedder()) as m:  # reopened without the option: as the store has it
        assert m._storage.dates
        hits = m.search("bicycle on May 3, 2023", user_id="u", explain=True)["results"]
        assert {h["score_details"]["date_boost"] for h in hits} == {0.0, 0.5}


@pytest.mark.parametrize("context", [False, True])
def test_a_query_without_a_candidate_in_its_dates_ranks_exactly_as_without_the_boost(
    location: str, context: bool
) -> None:
    """A query that names no date, or a date no candidate was created on, gives the same hits with
    the same scores (bit for bit) as the same store searched with the boost switched off."""
    with Memory(location, embedder=HashEmbedder(), keyword_dates=True, keyword_context=context) as m:
        fill(m)
        m.add_batch([{"messages": t, "user_id": u, "run_id": r} for u, r, t in TALK])
        queries: list[dict[str, Any]] = [
            *(q for q in TALK_SEARCHES if "filters" not in q),
            {"query": "bicycle on 9 May, 2023", "user_id": "u"},
            {"query": "lake in May 2021"},
            {"query": "bicycle May 31, 2023"},
        ]
        found = {}
        for on in (True, False):
            m._storage.has_dates = lambda on=on: on  # type: ignore[method-assign]  # the boost only
            found[on] = [[(h["id"], h["score"]) for h in m.search(**q)["results"]] for q in queries]
        assert found[True] == found[False] and all(found[True])


# -- both backends rank alike ------------------------------------------------------------------------


def test_both_backends_rank_alike_with_dates_in_the_query(tmp_path: Path, pg_url: Callable[[], str]) -> None:
    """The same rows on SQLite and PostgreSQL, keyword_dates on, with and without both contexts:
    queries naming days and months give the same memories in the same order, with the same scores
    (to 1e-6: the backends' cosines differ in the last float32 bits)
    and the same boosts, before and after more writes dated on the named day."""
    places = [str(tmp_path / "m.sqlite"), pg_url()]
    for place in places:
        with Memory(place, embedder=HashEmbedder()) as m:
            add_dated_talk(m)
            fill(m)
    searches: list[dict[str, str]] = [
        {"query": "what happened at the lake on 3 March, 2023?", "user_id": "u"},
        {"query": "bicycle on May 3, 2023", "user_id": "u"},
        {"query": "pottery class in April 2023", "user_id": "u", "run_id": "r1"},
        {"query": "weather May 5, 2023", "user_id": "u"},
        {"query": "bicycle on May 3rd", "user_id": "u"},  # every year
    ]
    for context in (False, True):
        stores = [
            Memory(
                p,
                embedder=HashEmbedder(),
                keyword_dates=True,
                keyword_context=context,
                vector_context=context,
            )
            for p in places
        ]
        for step in range(2):
            for args in searches:
                found, scores = [], []
                for m in stores:
                    hits = m.search(**args, explain=True)["results"]
                    found.append([(h["memory"], h["score_details"]["date_boost"]) for h in hits])
                    scores.append([h["score"] for h in hits])
                assert found[0] == found[1] and found[0], (args, step, context)
                assert scores[0] == pytest.approx(scores[1], abs=1e-6), (args, step, context)
                assert any(b for _, b in found[0]), (args, step, context)
            for m in stores:  # more rows on the named days, between the rounds
                days = ("2023-05-03", "2023-05-05", "2023-04-10")
                swam = f"Melanie swam {step} {context}"
                m.add_batch(
                    [{"messages": swam, "user_id": "u", "run_id": "r1", "timestamp": d} for d in days]
                )
        for m in stores:
            m.close()


def test_fuse_without_a_span_ignores_created_at() -> None:
    """``fuse`` reads created_at only with a span (a store without the option pays nothing)."""
    vector = [{"id": "a", "score": 0.5, "created_at": "2023-05-03"}]
    keyword = [{"id": "a", "score": 2.0, "created_at": "2023-05-03"}]
    plain = hybrid.fuse(vector, keyword, {}, 5, None)
    assert hybrid.fuse(vector, keyword, {}, 5, None, span=("2024-01-01", "2024-01-31")) == plain
    boosted = hybrid.fuse(
        vector, keyword, {}, 5, None, span=("2023-05-03", "2023-05-03"), explain=True, dates=True
    )
    assert boosted[0]["score"] == plain[0]["score"]  # one candidate: normalised to 1 either way
    assert boosted[0]["score_details"]["date_boost"] == 0.5
