"""Checks of the arguments only a search takes (``Memory.search``): the cosine threshold and a
query vector computed by the caller."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def check_threshold(threshold: Any) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}")
    if not math.isfinite(threshold):  # NaN compares false with every score: it silently found nothing
        raise ValueError(
            f"threshold must be a finite number (a cosine, usually in [-1, 1]), got {threshold!r}"
        )
    return float(threshold)


def check_vector(vector: Any, dim: int) -> np.ndarray:
    """``vector`` as ``dim`` finite float32 numbers (ValueError else): a query's embedding."""
    try:
        out = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"vector must be {dim} numbers (the query's embedding)") from None
    if out.shape != (dim,) or not np.isfinite(out).all():
        raise ValueError(f"vector must be {dim} finite numbers (the query embedding), got shape {out.shape}")
    return out
