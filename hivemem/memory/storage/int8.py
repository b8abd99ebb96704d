"""The int8 form of a stored vector, one definition for both backends' indexes.

Each row keeps int8 codes and one float32 scale (``vector ≈ codes × scale``, per-row symmetric, peak
at ±127). The int8 pass ranks candidates; the best ``RESCORE`` (at least 4 × k) are re-scored
exactly from the float32 vectors, so a result differs from exact search only when a true top-k row
ranks below ``RESCORE`` in int8. A zero vector gets scale 0 and codes 0: it scores 0 against every
query, on either backend.
"""

from __future__ import annotations

import numpy as np

RESCORE = 256  # rows re-scored exactly after the int8 pass (at least 4 × k)


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 codes and scales of a ``(n, dim)`` float array: ``vectors ≈ codes * scales[:, None]``."""
    peak = np.abs(vectors).max(axis=1)
    scales = (peak / 127).astype(np.float32)
    inv = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales > 0)
    codes = np.clip(np.rint(vectors * inv[:, None]), -127, 127).astype(np.int8)
    return codes, scales
