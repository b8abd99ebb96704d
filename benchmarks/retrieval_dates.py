"""Issue 23, step 3: session dates on LoCoMo, as a library would render them from ``created_at``.

    python benchmarks/retrieval_dates.py --cache FILE              # every row (~5 min with the cache)
    python benchmarks/retrieval_dates.py --cache FILE --only REGEX  # some rows (baselines always)

The same data, model, metric, rule and printout as ``benchmarks/retrieval_ideas.py`` (whose
``Lab`` and rankers it imports). Each LoCoMo session date (``"1:56 pm on 8 May, 2023"``) is
parsed into a datetime, taken as UTC, then *rendered* as a store would render a memory's
``created_at`` into its keyword text (``RENDER``; LoCoMo's own string is the reference). Every
row is on top of the built row (``--runs``, ``keyword_context`` + ``vector_context``: mean-vector
context of the turn and the 2 before it in its session, w 0.5, pool 20; keyword K), and varies:

* **placement**: the date words in the memory's own keyword text (``body``), in the window's
  text too (each of the window's memories with its date: ``body + window``), or the window only;
* then (step 2, rows "D + …", D being "8 May 2023" in body + window) parameters of the whole
  index or query, never per question: the fusion weight, the keyword context's share and length,
  the vector context's weight and length, the candidate depth, neighbour smoothing, BM25 length
  normalisation (``lengths``), LoCoMo's image caption, and a date named in the question matched
  to the memory's date (``span``, ``question_dates``); then a few combinations of the rows that
  passed, and the neighbourhood of the best one (is it a plateau or a spike?);
* rows "(library)": the question dates as a library can build them (``boost_mode`` of
  ``mean_context``): every dated memory a keyword candidate with ties to the newest or the most
  similar, or the boost on the fusion's own candidates only (what ``hybrid.fuse`` does);
* rows "(parser)": on top of that last row, a wider reader of the question's date (``_reader``,
  ``read``: abbreviated months, ordinal days, a day or month without a year after a preposition,
  of any year or the latest, a year alone), written after seeing which shapes ``span`` missed.
  ``--against check`` adds each row's paired change against the library's reader;
* rows "(window)" (round 6): the built stack run by the library itself (a store with the three
  options, each session its own ``run_id``, each turn with its session's time: ``library``; its
  keyword window is *symmetric* since round 6, the turn and the 2 on each side in its session),
  its replay here (the run prints how many of the 760 top 10s differ: ``_checked``), the replay
  with the backward window built before (the turn and the 2 before it) and with ± 1.
  ``--against '(window) before'`` adds each row's paired change and the categories worse
  against the backward row.

Only the keyword side sees the dates (the vectors are the turns', as a store that indexes date
words would have). The figures and the decision are in docs/memory.md (Step 3: session dates).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import retrieval_ideas as I

LOCOMO_DATE = "%I:%M %p on %d %B, %Y"  # "1:56 pm on 8 May, 2023" (C locale: English month names)


def when(raw: str) -> datetime:
    """A LoCoMo session date as a UTC datetime."""
    return datetime.strptime(raw, LOCOMO_DATE).replace(tzinfo=UTC)


def _clock(d: datetime) -> str:
    return f"{d.hour % 12 or 12}:{d:%M} {'am' if d.hour < 12 else 'pm'}"


# How a store would write created_at into the keyword text (day without a leading zero, English
# month names); "raw": LoCoMo's own string, the reference (parsed back: the renderings see only
# the datetime).
RENDER: dict[str, Callable[[datetime], str]] = {
    "raw": lambda d: f"{_clock(d)} on {d.day} {d:%B}, {d.year}",
    "8 May 2023": lambda d: f"{d.day} {d:%B} {d.year}",
    "May 2023": lambda d: f"{d:%B} {d.year}",
    "8 May 2023 1:56 pm": lambda d: f"{d.day} {d:%B} {d.year} {_clock(d)}",
    "Monday 8 May 2023": lambda d: f"{d:%A} {d.day} {d:%B} {d.year}",
    "2023-05-08": lambda d: d.date().isoformat(),
}


def dated(render: str, t: I.Turn) -> str:
    return f"[{RENDER[render](when(t.date))}] {I.said(t)}"


def _register() -> None:
    """Stores whose text carries the date: ``date R`` (the turn) and ``context -N date R`` (its
    window, each turn with its date), for ``Lab.side``; also the windows of other lengths."""
    for r in RENDER:
        I.VARIANTS[f"date {r}"] = lambda ts, i, r=r: dated(r, ts[i])
        for n in (1, 2, 3):
            I.VARIANTS[f"context -{n} date {r}"] = lambda ts, i, r=r, n=n: "\n".join(
                dated(r, t) for t in I.window(ts, i, n, 0)
            )
    I.VARIANTS["context -2 (scope) date 8 May 2023"] = lambda ts, i: "\n".join(
        dated("8 May 2023", t) for t in I.window(ts, i, 2, 0, False)
    )
    for n in (1, 2):  # round 6: the keyword window symmetric (rows "(window)")
        I.VARIANTS[f"context ±{n} date 8 May 2023"] = lambda ts, i, n=n: "\n".join(
            dated("8 May 2023", t) for t in I.window(ts, i, n, n)
        )
    I.VARIANTS["context -3"] = lambda ts, i: "\n".join(I.said(t) for t in I.window(ts, i, 3, 0))
    I.VARIANTS["date 8 May 2023 + caption"] = lambda ts, i: (
        dated("8 May 2023", ts[i]) + (f" [shares a photo: {ts[i].caption}]" if ts[i].caption else "")
    )


_register()

_MONTH_NAMES = "January February March April May June July August September October November December"
_MONTHS = {m.lower(): n for n, m in enumerate(_MONTH_NAMES.split(), 1)}
_Q_DATE = re.compile(
    r"(?:(\d{1,2})\s+)?(" + "|".join(_MONTHS) + r")(?:\s+(\d{1,2}))?,?\s+(\d{4})", re.IGNORECASE
)


def span(question: str, days: int = 0) -> tuple[float, float] | None:
    """The UTC span ``[start, end)`` (POSIX seconds) of the first date with a year that
    ``question`` names ("in May 2023": that month; "on 3 June, 2023", "May 3, 2023": that day ±
    ``days``); None when it names none."""
    m = _Q_DATE.search(question)
    if not m:
        return None
    day = m.group(1) or m.group(3)
    month, year = _MONTHS[m.group(2).lower()], int(m.group(4))
    if day:
        at = datetime(year, month, int(day), tzinfo=UTC).timestamp()
        return at - days * 86400, at + (days + 1) * 86400
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC).timestamp()
    return datetime(year, month, 1, tzinfo=UTC).timestamp(), end


# A wider reader (issue 23, "query dates a real parser reads"; rows "(parser)"): abbreviated
# months, ordinal days, a month (and day) without a year after a preposition, a year alone after
# one. Added after seeing which question shapes ``span`` missed: an overfitting risk (docs).
_ABBR = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "sept": 9,
         "oct": 10, "nov": 11, "dec": 12}  # fmt: skip
_PREP = r"(?:in|on|of|during|since|until|by|before|after|from|around)"


def _reader(
    abbrev: bool, ordinal: bool, yearless: bool, year_alone: bool, prep: bool = True
) -> re.Pattern[str]:
    """The wider reader with its options (rows "(parser)"; ``read`` reads its groups): all off
    reads what ``datewords.query_span`` read before; ``prep=False`` reads a month without a year
    even without a preposition before it (the "may" the verb risk)."""
    month = "|".join([*_MONTHS, *(sorted(_ABBR, key=len, reverse=True) if abbrev else [])])
    day = r"[0-9]{1,2}" + (r"(?:st|nd|rd|th)?" if ordinal else "")

    def m(p: str) -> str:  # day, month, day: groups p+"b", p+"m", p+"a"
        before = rf"(?:(?P<{p}b>{day})\s{{1,4}}(?:of\s{{1,4}})?)?"
        return before + rf"(?P<{p}m>{month})\b(?!['’])\.?(?:\s{{1,4}}(?P<{p}a>{day})\b)?"

    branches = [rf"(?:{_PREP}\s{{1,4}})?{m('y')},?\s{{0,4}}(?P<year>[0-9]{{4}})\b"]  # with a year
    if yearless:
        branches.append((rf"{_PREP}\s{{1,4}}(?:the\s{{1,4}})?" if prep else "") + m("n"))
    if year_alone:
        branches.append(rf"{_PREP}\s{{1,4}}(?P<alone>[0-9]{{4}})\b")
    return re.compile(r"\b(?:" + "|".join(f"(?:{b})" for b in branches) + ")", re.IGNORECASE | re.ASCII)


Named = tuple[int | None, int | None, int | None]  # (year, month, day): a field None = not named


def read(question: str, reader: re.Pattern[str]) -> Named | None:
    """The first date ``reader`` finds in ``question`` as (year, month, day), None where not named."""
    found = reader.search(question)
    if not found:
        return None
    g = found.groupdict()
    if g.get("alone"):
        return (int(g["alone"]), None, None)
    p = "y" if g["year"] else "n"
    month = _MONTHS.get(g[p + "m"].lower()) or _ABBR[g[p + "m"].lower()]
    d = g[p + "b"] or g[p + "a"]
    return (int(g["year"]) if g["year"] else None, month, int(d.rstrip("stndrh")) if d else None)


def parsed_dates(
    lab: I.Lab, share: float, reader: re.Pattern[str], which: str
) -> Callable[[str, int], np.ndarray]:
    """``question_dates`` with ``read``: a month (and day) without a year matches that month (and
    day) of any year (``which="any"``), or of the latest year whose such day is not after the
    conversation's newest memory (``"latest"``); a year alone, that year."""
    at = {
        conv: [when(ts[lab_first(lab, conv, u)].date) for u in range(len(lab.ids[conv]))]
        for conv, ts in lab.raw.items()
    }
    ymd = {conv: np.array([(d.year, d.month, d.day) for d in ds]) for conv, ds in at.items()}
    named = [read(q, reader) for _, q, _, _ in lab.questions]

    def boost(conv: str, i: int) -> np.ndarray:
        got, a = named[i], ymd[conv]
        if got is None:
            return np.zeros(len(a))
        year, month, day = got
        if year is None and which == "latest":
            newest = max(at[conv])
            year = newest.year - ((month, day or 1) > (newest.month, newest.day))
        keep = np.ones(len(a), bool)
        for col, want in enumerate((year, month, day)):
            if want is not None:
                keep &= a[:, col] == want
        return share * keep.astype(float)

    return boost


def question_dates(lab: I.Lab, share: float, days: int) -> Callable[[str, int], np.ndarray]:
    """A date named in the question (``span``) matched to each memory's date: a memory whose
    date is in the span gets ``share`` added to its keyword score (the sum of the store parts,
    each divided by its best; ``I.mean_context``), which the fusion then divides by its best, so
    such a memory is a keyword candidate even without a keyword hit. The same rule for every
    question; a question without a date with a year gets nothing."""
    stamp = {
        conv: np.array([when(ts[lab_first(lab, conv, u)].date).timestamp() for u in range(len(ids))])
        for conv, ts in lab.raw.items()
        for ids in [lab.ids[conv]]
    }
    named = [span(q, days) for _, q, _, _ in lab.questions]

    def boost(conv: str, i: int) -> np.ndarray:
        got, s = named[i], stamp[conv]
        if got is None:
            return np.zeros(len(s))
        return share * ((s >= got[0]) & (s < got[1])).astype(float)

    return boost


def lab_first(lab: I.Lab, conv: str, u: int) -> int:
    """The index in ``lab.raw[conv]`` of the first turn that baseline unit ``u`` stands for."""
    key = (conv, "first")
    if key not in _FIRST:
        p, first = lab.pos[conv], {}
        for i, t in enumerate(lab.raw[conv]):
            first.setdefault(p[lab.by_dia[conv, t.dia]], i)
        _FIRST[key] = first
    return _FIRST[key][u]


_FIRST: dict[tuple[str, str], dict[int, int]] = {}

BUILT = "built: K + mean-vector context -2 (session), w 0.5, pool 20"


def rows(lab: I.Lab) -> dict[str, I.Ranker]:
    """The baselines, the built row, then the renderings × placements, then step 2's rows."""
    out: dict[str, I.Ranker] = {
        "baseline: Memory.search (hybrid)": I.public_api(lab),
        BUILT: I.mean_context(lab, 2, 0, True, {"base": 1.0, "context -2": 0.5}, 0.5, 20),
    }
    for r in RENDER:
        for place, kw in (
            ("body", {f"date {r}": 1.0, "context -2": 0.5}),
            ("body + window", {f"date {r}": 1.0, f"context -2 date {r}": 0.5}),
            ("window", {"base": 1.0, f"context -2 date {r}": 0.5}),
        ):
            out[f"date '{r}' in {place}"] = I.mean_context(lab, 2, 0, True, kw, 0.5, 20)
    # step 2: parameters of the whole index or query, on top of the best date row
    d = "8 May 2023"
    best = {f"date {d}": 1.0, f"context -2 date {d}": 0.5}
    top = "D"  # the best date row: "8 May 2023" in body + window

    def on(**a: object) -> I.Ranker:
        kw = a.pop("kw", best)
        before = a.pop("before", 2)
        w = a.pop("w", 0.5)
        pool = a.pop("pool", 20)
        return I.mean_context(lab, before, 0, True, kw, w, pool, **a)  # type: ignore[arg-type]

    for fw in (0.3, 0.5, 0.6):
        out[f"{top} + fusion weight {fw}"] = on(fw=fw)
    for share in (0.3, 0.7, 1.0):
        out[f"{top} + keyword context share {share}"] = on(
            kw={f"date {d}": 1.0, f"context -2 date {d}": share}
        )
    for n in (1, 3):
        out[f"{top} + keyword window -{n}"] = on(kw={f"date {d}": 1.0, f"context -{n} date {d}": 0.5})
    for w in (0.3, 0.7):
        out[f"{top} + vector context w {w}"] = on(w=w)
    for n in (1, 3):
        out[f"{top} + vector window -{n}"] = on(before=n)
    for depth in (30, 40):
        out[f"{top} + candidates {depth} per side"] = on(depth=depth, pool=depth)
    out[f"{top} + neighbour smoothing 0.1"] = on(g=0.1)
    for b in (0.25, 0.75):
        out[f"{top} + BM25 length normalisation b {b}, k1 1.2"] = on(scale=lengths(lab, 1.2, b))
    out[f"{top} + LoCoMo's image caption in the body (not user data)"] = on(
        kw={f"date {d} + caption": 1.0, f"context -2 date {d}": 0.5}
    )
    for share in (0.3, 0.5):
        out[f"{top} + question dates × {share}"] = on(boost=question_dates(lab, share, 0))
    # combinations of the rows above that passed the rule (each one more chance to overfit)
    qd = question_dates(lab, 0.5, 0)
    share1 = {f"date {d}": 1.0, f"context -2 date {d}": 1.0}
    out[f"{top} + question dates × 0.5 + vector context w 0.7"] = on(boost=qd, w=0.7)
    out[f"{top} + question dates × 0.5 + keyword context share 1.0"] = on(boost=qd, kw=share1)
    out[f"{top} + question dates × 0.5 + keyword context share 1.0 + vector context w 0.7"] = on(
        boost=qd, kw=share1, w=0.7
    )
    kw3 = {f"date {d}": 1.0, f"context -3 date {d}": 0.5}
    out[f"{top} + question dates × 0.5 + keyword window -3"] = on(boost=qd, kw=kw3)
    for share, w in ((0.3, 0.7), (0.7, 0.7), (1.0, 0.7), (0.5, 0.6), (0.5, 0.8)):  # its neighbourhood
        qd_ = question_dates(lab, share, 0)
        out[f"(around the best) {top} + question dates × {share} + vector context w {w}"] = on(boost=qd_, w=w)
    # the library's choices (qdates, step 1): which memories the question dates may lift
    for mode in ("all newest", "all cosine", "candidates"):
        out[f"(library) {top} + question dates × 0.5 ({mode}) + vector context w 0.7"] = on(
            boost=qd, w=0.7, boost_mode=mode
        )
        out[f"(library) {top} + question dates × 0.5 ({mode})"] = on(boost=qd, boost_mode=mode)
    # a wider reader (rows "(parser)"), each on top of the library's row: (b), the fusion's own candidates
    for label, reader, which in (
        ("the library's reader (check: = (b))", _reader(False, False, False, False), "any"),
        ("+ abbreviated months, ordinal days", _reader(True, True, False, False), "any"),
        ("+ a year alone ('in 2023')", _reader(False, False, False, True), "any"),
        ("+ month without a year after a preposition, any year", _reader(False, False, True, False), "any"),
        ("+ month without a year after a preposition, latest", _reader(False, False, True, False), "latest"),
        (
            "+ month without a year, no preposition needed, any year",
            _reader(False, False, True, False, False),
            "any",
        ),
        (
            "+ all: abbreviations, ordinals, month without a year (any), year alone",
            _reader(True, True, True, True),
            "any",
        ),
        ("+ all, month without a year: latest", _reader(True, True, True, True), "latest"),
    ):
        out[f"(parser) {top} + question dates × 0.5 (candidates) {label}"] = on(
            boost=parsed_dates(lab, 0.5, reader, which), boost_mode="candidates"
        )
    # round 6 (rows "(window)"): the built stack as the library runs it (its keyword window ± 2
    # since round 6), its replay here, the backward window built before, and ± 1
    built = parsed_dates(lab, 0.5, _reader(True, True, True, False), "any")  # the reader as built
    out["(window) the library: Memory.search with the three options, --runs --dates"] = library(lab)
    out["(window) replayed: the library's, keyword window ±2"] = _checked(
        lab, on(kw={f"date {d}": 1.0, f"context ±2 date {d}": 0.5}, boost=built, boost_mode="candidates")
    )
    out["(window) before round 6: keyword window -2 (backward)"] = on(boost=built, boost_mode="candidates")
    out["(window) keyword window ±1"] = on(
        kw={f"date {d}": 1.0, f"context ±1 date {d}": 0.5}, boost=built, boost_mode="candidates"
    )
    # without run_id: the windows run over the whole scope (the conversation), across sessions
    scope = {f"date {d}": 1.0, f"context -2 (scope) date {d}": 0.5}
    out["(scope) D, windows in the conversation"] = I.mean_context(lab, 2, 0, False, scope, 0.5, 20)
    out["(scope) D + question dates × 0.5 + vector context w 0.7"] = I.mean_context(
        lab, 2, 0, False, scope, 0.7, 20, boost=qd
    )
    out["built + question dates × 0.5 (no date words in the text)"] = I.mean_context(
        lab, 2, 0, True, {"base": 1.0, "context -2": 0.5}, 0.5, 20, boost=qd
    )
    return out


_LIBRARY: dict[int, list[int]] = {}  # question index -> the library's ranking (rows "(window)")


def library(lab: I.Lab) -> I.Ranker:
    """The built stack itself: a store with ``keyword_context``, ``vector_context`` and
    ``keyword_dates``, each session its own ``run_id``, each turn added with its session's time
    (``retrieval.py --no-reference --runs --dates``'s built row); its hits as baseline units."""
    store: list[I.Memory] = []  # made at the first search (other rows never pay for it)
    unit: dict[str, int] = {}  # memory id -> baseline unit

    def rank(conv: str, q: str, i: int) -> list[int]:
        if not store:
            store.append(
                I.Memory(
                    str(lab.tmp / "library.sqlite"),
                    embedder=lab.emb,
                    keyword_context=True,
                    vector_context=True,
                    keyword_dates=True,
                )
            )
            times = {c: {f"D{t.session}": when(t.date).timestamp() for t in ts} for c, ts in lab.raw.items()}
            for c, mine in lab.turns.items():
                for mid, dias in I.R.fill(store[0], {c: mine}, True, times).items():
                    unit[mid] = lab.pos[c][lab.by_dia[c, dias[0]]]
        got = [unit[h["id"]] for h in store[0].search(q, user_id=conv, top_k=I.R.K)["results"]]
        _LIBRARY[i] = got
        if i == len(lab.questions) - 1:
            store.pop().close()
        return got

    return rank


def _checked(lab: I.Lab, replay: I.Ranker) -> I.Ranker:
    """``replay``, counting the questions whose top 10 differs from the library's (run before it);
    prints the count after the last question."""
    differ: list[int] = []

    def rank(conv: str, q: str, i: int) -> list[int]:
        got = replay(conv, q, i)
        if _LIBRARY and _LIBRARY.get(i) != got:
            differ.append(i)
        if i == len(lab.questions) - 1 and _LIBRARY:
            print(
                f"  replay against the library: {len(differ)} of {len(lab.questions)} top 10s differ",
                flush=True,
            )
        return got

    return rank


def lengths(lab: I.Lab, k1: float, b: float) -> Callable[[str, str], np.ndarray]:
    """BM25's length normalisation for hivemem's keyword score (``fts.bm25``: term frequency 1,
    ``b = 0``): with term frequency 1 a row's factor is the same for every word it holds,
    ``(k1 + 1) / (1 + k1 · (1 - b + b · len / mean len))``, so the store's score times it is
    BM25 with ``k1``, ``b`` (lengths: ``\\w+`` words of the stored text, the conversation's mean)."""
    cache: dict[tuple[str, str], np.ndarray] = {}

    def scale(name: str, conv: str) -> np.ndarray:
        if (name, conv) not in cache:
            ts, make = lab.raw[conv], I.VARIANTS[name]
            n = np.array(
                [
                    len(re.findall(r"\w+", make(ts, lab_first(lab, conv, u))))
                    for u in range(len(lab.ids[conv]))
                ],
                float,
            )
            cache[name, conv] = (k1 + 1) / (1 + k1 * (1 - b + b * n / n.mean()))
        return cache[name, conv]

    return scale


if __name__ == "__main__":
    I.main(rows, "retrieval_dates", "LoCoMo (development half): session dates, all questions", __doc__)
