"""benchmarks/retrieval_dates.py: the LoCoMo session dates it parses and renders, and the dates it
reads in questions, are what the rows claim (no model: pure parsing)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import retrieval_dates as dates  # noqa: E402

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


@pytest.mark.parametrize(
    "raw", ["1:56 pm on 8 May, 2023", "12:48 am on 1 February, 2023", "12:05 pm on 31 December, 2022"]
)
def test_the_reference_rendering_gives_locomos_string_back(raw: str) -> None:
    assert dates.RENDER["raw"](dates.when(raw)) == raw


def test_renderings_of_one_date() -> None:
    d = dates.when("12:48 am on 1 February, 2023")
    assert d == datetime(2023, 2, 1, 0, 48, tzinfo=UTC)
    got = {name: render(d) for name, render in dates.RENDER.items()}
    assert got == {
        "raw": "12:48 am on 1 February, 2023",
        "8 May 2023": "1 February 2023",  # no leading zero
        "May 2023": "February 2023",
        "8 May 2023 1:56 pm": "1 February 2023 12:48 am",
        "Monday 8 May 2023": "Wednesday 1 February 2023",
        "2023-05-08": "2023-02-01",
    }


def _utc(*a: int) -> float:
    return datetime(*a, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("Who did Maria have dinner with on May 3, 2023?", (_utc(2023, 5, 3), _utc(2023, 5, 4))),
        ("What did Gina find on 1 February, 2023?", (_utc(2023, 2, 1), _utc(2023, 2, 2))),
        ("What did Maria donate in December 2023?", (_utc(2023, 12, 1), _utc(2024, 1, 1))),
        ("What did Joanna accomplish in January 2022?", (_utc(2022, 1, 1), _utc(2022, 2, 1))),
        ("When did Melanie go camping in June?", None),  # no year: no span
        ("How many times has Melanie gone to the beach in 2023?", None),
    ],
)
def test_question_spans(question: str, expected: tuple[float, float] | None) -> None:
    assert dates.span(question) == expected


def test_a_day_span_widens_by_whole_days() -> None:
    assert dates.span("on 3 June, 2023", days=2) == (_utc(2023, 6, 1), _utc(2023, 6, 6))


READ = {  # the rows "(parser)": what the wider reader reads, with the options that were built
    "When did Melanie go camping in June?": (None, 6, None),
    "What did John's teammates give him when they met on Aug 15th?": (None, 8, 15),
    "Which country was Tim visiting in the second week of November?": (None, 11, None),
    "What book did Tim just finish reading on 8th December, 2023?": (2023, 12, 8),
    "Where was the forest picture shared by John on December 1,2023 taken?": (2023, 12, 1),
    "what may she do": None,
    "in June's car": None,
}


@pytest.mark.parametrize(("question", "expected"), READ.items())
def test_the_wider_reader_reads_and_the_library_reads_the_same(
    question: str, expected: tuple[int | None, int | None, int | None] | None
) -> None:
    """The prototype's reader with the options that were built (``_reader``: all but a year alone)
    and the library's ``datewords.query_span`` read the same date."""
    from hivemem.memory.storage import datewords

    got = dates.read(question, dates._reader(True, True, True, False))
    assert got == expected
    span = datewords.query_span(question)
    if expected is None:
        assert span is None
    else:
        year, month, day = expected
        assert span is not None
        assert span[0].startswith("--" if year is None else str(year))
        assert month is None or span[0][-5:-3] == f"{month:02d}"
        assert day is None or span[0][-2:] == span[1][-2:] == f"{day:02d}"


def test_the_wider_reader_without_options_reads_as_span() -> None:
    """With every option off, the rows' reader finds a date in the same questions as ``span``."""
    plain = dates._reader(False, False, False, False)
    for q in ["in June", "in 2023", "on Aug 15th", "May 3, 2023", "in December 2023", "3 June, 2023"]:
        assert (dates.read(q, plain) is None) == (dates.span(q) is None), q


def test_a_year_alone_is_read_by_the_rows_only() -> None:
    q = "How many times has Melanie gone to the beach in 2023?"
    assert dates.read(q, dates._reader(True, True, True, True)) == (2023, None, None)
    assert dates.read(q, dates._reader(True, True, True, False)) is None


def test_the_symmetric_windows_of_the_window_rows() -> None:
    """Rows "(window)": the keyword window ±N holds the turn and N turns on each side of it in its
    session (each with its date), where the built window (``context -2``) holds the 2 before it."""
    from retrieval_ideas import Turn

    s1, s2 = "1:56 pm on 8 May, 2023", "10:00 am on 9 May, 2023"
    ts = [Turn(f"D1:{i}", "A", f"t{i}", s1, 1) for i in range(4)] + [Turn("D2:0", "B", "u0", s2, 2)]

    def members(name: str, i: int) -> list[str]:
        return [line.split(": ")[1] for line in dates.I.VARIANTS[name](ts, i).split("\n")]

    assert members("context ±2 date 8 May 2023", 1) == ["t0", "t1", "t2", "t3"]
    assert members("context ±2 date 8 May 2023", 3) == ["t1", "t2", "t3"]  # the session ends there
    assert members("context ±1 date 8 May 2023", 2) == ["t1", "t2", "t3"]
    assert members("context ±2 date 8 May 2023", 4) == ["u0"]
    assert members("context -2 date 8 May 2023", 3) == ["t1", "t2", "t3"]  # backward (before round 6)
    assert dates.I.VARIANTS["context ±1 date 8 May 2023"](ts, 4) == "[9 May 2023] B: u0"
