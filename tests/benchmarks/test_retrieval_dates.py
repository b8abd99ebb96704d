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
