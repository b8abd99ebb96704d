"""The int8 ranking engine of both backends' vector indexes: quantisation, int8 scoring, the
choice of the best candidates, and how many of them to re-score exactly.

Each row keeps int8 codes and one float32 scale (``vector ≈ codes × scale``, per-row symmetric, peak
at ±127). The int8 pass ranks candidates; the best ``RESCORE`` (at least 4 × k) are re-scored
exactly from the float32 vectors, so a result differs from exact search only when a true top-k row
ranks below ``RESCORE`` in int8. A zero vector gets scale 0 and codes 0: it scores 0 against every
query, on either backend. Where the codes live (memory-mapped files for SQLite, in-process arrays
for PostgreSQL) is the backend's business; what is done with them is this module's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numkong
import numpy as np
import numpy.typing as npt

RESCORE = 256  # rows re-scored exactly after the int8 pass (at least 4 × k)

Codes = npt.NDArray[np.int8]
Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def quantise(vectors: npt.NDArray[np.floating]) -> tuple[Codes, Floats]:
    """Per-row int8 codes and scales of a ``(n, dim)`` float array: ``vectors ≈ codes * scales[:, None]``."""
    peak = np.abs(vectors).max(axis=1)
    scales = (peak / 127).astype(np.float32)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    codes = np.clip(np.rint(vectors * inv[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def quantise_query(query: npt.NDArray[np.floating]) -> Codes:
    """The query's int8 codes (its scale is left out: it scales every row's score alike). A zero
    query gets codes 0, as a zero row does."""
    peak = float(np.abs(query).max()) or 1.0
    codes: Codes = np.clip(np.rint(query * (127 / peak)), -127, 127).astype(np.int8)
    return codes


def rescore_count(k: int, floor: int | None = None) -> int:
    """How many of the int8 best are re-scored exactly for a top-``k`` (at least ``floor``,
    by default ``RESCORE``)."""
    return max(RESCORE if floor is None else floor, 4 * k)


def widening(first: int, live: int, factor: int) -> Iterator[int]:
    """Candidate counts for a search whose filter most of the best rows fail: ``first``, then
    ``factor`` times more each time, the last one all ``live`` rows (then no more)."""
    count = first
    while True:
        yield min(count, live)
        if count >= live:
            return
        count *= factor


def scores(q8: Codes, codes: Codes, scales: Floats, out: Floats | None = None) -> Floats:
    """int8 score of each row: ``(q8 · codes) × scale`` (numkong's SIMD kernel), into ``out``
    (shape ``(1, n)``) if given."""
    dots: Floats
    if out is None:
        dots = np.asarray(numkong.cdist(q8[None, :], codes, metric="dot", out_dtype="float32"))[0]
    else:
        numkong.cdist(q8[None, :], codes, metric="dot", out=out, out_dtype="float32")
        dots = out[0]
    dots *= scales
    return dots


def best(approx: Floats, count: int, masked: bool = True) -> Ints:
    """Positions of the ``count`` highest scores, best first; rows scored ``-inf`` are masked and
    never chosen (``masked`` False: the caller knows there are none, and one pass is saved)."""
    live = int(np.count_nonzero(approx > -np.inf)) if masked else len(approx)
    count = min(count, live)
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    if count < len(approx):
        top = np.argpartition(approx, len(approx) - count)[len(approx) - count :]
    else:
        top = np.flatnonzero(approx > -np.inf)
    return top[np.argsort(-approx[top], kind="stable")].astype(np.int64)
