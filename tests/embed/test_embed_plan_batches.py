"""Batch planning over length-sorted texts (pure logic, no model)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivemem.embed.onnx_backend import RUN_OVERHEAD_TOKENS, plan_batches, plan_parallel, split_evenly

pytestmark = pytest.mark.fast  # no model, torch or PostgreSQL (tests/conftest.py)


def _cost(lengths, spans):
    return sum((b - a) * lengths[b - 1] + RUN_OVERHEAD_TOKENS for a, b in spans)


@given(st.lists(st.integers(1, 256), max_size=300), st.integers(1, 64))
def test_spans_cover_in_order_and_beat_fixed_chunks(raw, max_batch):
    lengths = sorted(raw)
    spans = plan_batches(lengths, max_batch)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))
    assert all(0 < b - a <= max_batch for a, b in spans)
    fixed = [(i, min(i + max_batch, len(lengths))) for i in range(0, len(lengths), max_batch)]
    assert _cost(lengths, spans) <= _cost(lengths, fixed)


def test_mixed_lengths_are_split_where_padding_costs_more_than_a_run():
    spans = plan_batches([10] * 8 + [100] * 8, 32)
    assert spans == [(0, 8), (8, 16)]
    assert len(plan_batches([20] * 40, 32)) == 2  # equal lengths: as few runs as max_batch allows


def _worst(lengths, spans):
    return max((b - a) * lengths[b - 1] + RUN_OVERHEAD_TOKENS for a, b in spans)


@given(st.lists(st.integers(1, 256), min_size=1, max_size=12), st.integers(1, 4))
def test_split_evenly_minimises_the_slowest_run(raw, parts):
    """One run per core: the call takes as long as its slowest run (checked against brute force)."""
    import itertools

    lengths = sorted(raw)
    spans = split_evenly(lengths, parts)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))
    assert len(spans) <= parts and all(b > a for a, b in spans)
    n = len(lengths)
    best = min(
        _worst(lengths, list(itertools.pairwise((0, *cuts, n))))
        for k in range(min(parts, n))
        for cuts in itertools.combinations(range(1, n), k)
    )
    assert _worst(lengths, spans) == best


@given(st.lists(st.integers(1, 256), min_size=1, max_size=40), st.integers(1, 4), st.integers(1, 32))
def test_plan_parallel_never_finishes_later_than_one_run_per_core(raw, workers, max_batch):
    lengths = sorted(raw)
    spans = plan_parallel(lengths, workers, max_batch)
    assert [i for a, b in spans for i in range(a, b)] == list(range(len(lengths)))

    def finish(spans):
        loads = [0] * workers
        for c in sorted(((b - a) * lengths[b - 1] + RUN_OVERHEAD_TOKENS for a, b in spans), reverse=True):
            loads[loads.index(min(loads))] += c
        return max(loads)

    assert finish(spans) <= finish(split_evenly(lengths, workers))
