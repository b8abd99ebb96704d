"""Vectors as the float lists the frameworks take (numpy's ``tolist`` is typed ``Any``)."""

from __future__ import annotations

import numpy as np


def as_row(vector: np.ndarray) -> list[float]:
    row: list[float] = vector.tolist()
    return row


def as_rows(matrix: np.ndarray) -> list[list[float]]:
    rows: list[list[float]] = matrix.tolist()
    return rows
