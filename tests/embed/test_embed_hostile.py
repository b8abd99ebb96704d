"""Hostile input to the embedding engine (the standing module of issue 9 for the embed part): any
list a caller passes gives one unit vector per text, or a TypeError/ValueError naming the item —
never a tokenizer panic, a NaN vector, or a silently shortened batch. The real model, a few dozen
examples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem import Embedder

TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\ufeff", "a\udcff", "\ud800b", "🐝" * 300, "word " * 400, "\n\t\r"]),
)
ITEMS = st.lists(st.one_of(TEXTS, st.integers(), st.none(), st.binary(max_size=4)), max_size=5)


@pytest.fixture(scope="module")
def engine(hivemem_home: Any) -> Iterator[Embedder]:
    with Embedder(cache=False) as e:
        yield e


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=ITEMS)
def test_any_batch_gives_unit_vectors_or_names_the_bad_item(engine: Embedder, items: list[Any]) -> None:
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str) or _surrogate(t)), None)
    if bad is None:
        out = engine.embed(items)
        assert out.shape == (len(items), engine.dim) and out.dtype == np.float32
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3) if len(items) else True
    else:
        with pytest.raises((TypeError, ValueError), match=rf"texts\[{bad}\]"):
            engine.embed(items)


def _surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@pytest.mark.parametrize("bare", ["a string", b"bytes", None, 42])
def test_a_bare_value_is_not_a_batch(engine: Embedder, bare: Any) -> None:
    with pytest.raises(TypeError, match="expected a list of strings"):
        engine.embed(bare)
