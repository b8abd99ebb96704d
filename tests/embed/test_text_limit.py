"""Issue 26 (6): one documented maximum text length (``MAX_TEXT_CHARS``), enforced before anything
tokenizes a text, and a bounded tokenization of long texts under it that changes no vector.

The real model and tokenizer. ``model_input`` tokenizes a prefix of a long text; the property test
checks on hostile texts (special tokens, combining marks, final sigma, CJK, long words, Unicode
spaces, control characters) that its tokens are exactly the whole text's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivemem import Embedder, LimitExceeded
from hivemem.embed.validate import MAX_TEXT_CHARS, PREFIX_CHARS, SERIAL_TOKENIZE_TEXTS, _is_cut, model_input

PIECES = [
    "word ", "the cat sat. ", "[MASK]", "[CLS] ", "]", "[", "e\u0301", "\u0301", "\u0327\u0301", "ΣΑΣ ", "σς",
    "日本語", "한국어", "\u3000", "\u00a0", "\u2028", "\x1c", "\x00", "\ufeff", "\u200d", "🐝", "a" * 120,
    "1234567890", "don't", "«x»", "—", "…", "\t", "\n", "İ", "ﬁ", "Å", "\u0130\u0307", ".", "$%^", "_",
]  # fmt: skip
LONG_TEXTS = (
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=60)
    .map("".join)
    .flatmap(
        lambda unit: st.integers(PREFIX_CHARS // max(1, len(unit)), MAX_TEXT_CHARS // max(1, len(unit))).map(
            lambda n: (unit * n)[:MAX_TEXT_CHARS]
        )
    )
)


@pytest.fixture(scope="module")
def engine(hivemem_home: Any) -> Iterator[Embedder]:
    with Embedder(cache=False) as e:
        yield e


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(LONG_TEXTS, min_size=1, max_size=3))
def test_the_prefix_gives_the_whole_texts_tokens(engine: Embedder, texts: list[str]) -> None:
    tokenizer = engine.backend.tokenizer  # type: ignore[attr-defined]
    whole = tokenizer.encode_batch(texts, add_special_tokens=True)
    bounded = model_input(tokenizer, texts)
    for a, b in zip(whole, bounded, strict=True):
        assert a.ids == b.ids
        assert bool(a.overflowing) == bool(b.overflowing)


def test_small_calls_tokenized_text_by_text_get_the_pools_tokens(engine: Embedder) -> None:
    """Calls of up to ``SERIAL_TOKENIZE_TEXTS`` texts skip ``encode_batch``'s pool: same tokens and
    overflow flags as the pool gives, whichever path a text takes."""
    tokenizer = engine.backend.tokenizer  # type: ignore[attr-defined]
    texts = [f"sentence {i} about tea, cats and the weather" for i in range(40)]
    texts += ["naïve café ✓ 東京 text", "word " * 400]  # not ASCII; overflowing the window
    pool = tokenizer.encode_batch(texts, add_special_tokens=True)
    for call in (texts, texts[-SERIAL_TOKENIZE_TEXTS:], texts[-2:]):
        got = model_input(tokenizer, call)
        want = pool[len(texts) - len(call) :]
        assert [e.ids for e in got] == [e.ids for e in want]
        assert [bool(e.overflowing) for e in got] == [bool(e.overflowing) for e in want]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.lists(st.sampled_from(PIECES), min_size=1, max_size=30).map("".join))
def test_every_cut_place_starts_a_word(engine: Embedder, text: str) -> None:
    """What ``model_input`` rests on: cut where ``_is_cut`` says, a text's tokens are the first
    tokens of the whole text's (no truncation here, no special tokens)."""
    tokenizer = _untruncated(engine)
    whole = tokenizer.encode(text, add_special_tokens=False).ids
    for i in range(1, len(text)):
        if _is_cut(text[i]):
            part = tokenizer.encode(text[:i], add_special_tokens=False).ids
            assert whole[: len(part)] == part, (text[:i], text[i:])


def test_every_cut_character_starts_a_word(engine: Embedder) -> None:
    """Each character ``_is_cut`` accepts, between a word with an accent and a combining mark."""
    tokenizer = _untruncated(engine)
    cuts = [chr(o) for o in range(0x20, 0xA000) if _is_cut(chr(o))]
    assert len(cuts) > 20_000
    heads = tokenizer.encode_batch(["x caf\u00e9s"] * len(cuts), add_special_tokens=False)
    wholes = tokenizer.encode_batch([f"x caf\u00e9s{c}\u0301ab" for c in cuts], add_special_tokens=False)
    for c, head, whole in zip(cuts, heads, wholes, strict=True):
        assert whole.ids[: len(head.ids)] == head.ids, hex(ord(c))


def _untruncated(engine: Embedder) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(engine.backend.tokenizer.to_str())  # type: ignore[attr-defined]
    tokenizer.no_truncation()
    return tokenizer


def test_vectors_of_long_texts_are_unchanged(engine: Embedder) -> None:
    """A text at the limit and long ones under it embed exactly as from their whole tokenization."""
    words = " ".join(f"w{i} memory" for i in range(MAX_TEXT_CHARS))
    texts = [words[:MAX_TEXT_CHARS], ("日本語のテキスト。" * 9000)[: MAX_TEXT_CHARS - 1], "a" * 5000 + " end"]
    backend: Any = engine.backend
    whole = backend.tokenizer.encode_batch(texts, add_special_tokens=True)
    lengths = np.array([len(e.ids) for e in whole], dtype=np.int64)
    expected = np.empty((len(texts), engine.dim), dtype=np.float32)
    for i in range(len(texts)):  # the model's own run, fed the whole text's tokens
        backend._run(np.array([i]), whole, lengths, expected)
    np.testing.assert_array_equal(engine.embed(texts), expected)


class _Counting:
    """A tokenizer wrapper that records how many characters it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chars = 0

    def encode_batch(self, texts: list[str], **kwargs: Any) -> Any:
        self.chars += sum(map(len, texts))
        return self.inner.encode_batch(texts, **kwargs)

    def encode(self, text: str, **kwargs: Any) -> Any:  # small calls: text by text
        self.chars += len(text)
        return self.inner.encode(text, **kwargs)


def test_a_long_allowed_text_is_tokenized_from_a_prefix_only(engine: Embedder) -> None:
    counting = _Counting(engine.backend.tokenizer)  # type: ignore[attr-defined]
    text = ("plain english words in a long memory " * 2000)[:MAX_TEXT_CHARS]
    (enc,) = model_input(counting, [text])
    assert counting.chars <= PREFIX_CHARS
    assert len(enc.ids) == 256 and enc.overflowing


def test_over_the_limit_is_refused_before_tokenizing(engine: Embedder) -> None:
    counting = _Counting(engine.backend.tokenizer)  # type: ignore[attr-defined]
    engine.backend.tokenizer = counting  # type: ignore[attr-defined]
    try:
        with pytest.raises(LimitExceeded, match=r"texts\[1\] has 65,537 characters.*MAX_TEXT_CHARS") as info:
            engine.embed(["fine", "x" * (MAX_TEXT_CHARS + 1)])
        assert info.value.limit_name == "MAX_TEXT_CHARS" and info.value.limit == MAX_TEXT_CHARS
        with pytest.raises(LimitExceeded, match="MAX_TEXT_CHARS"):
            engine.embed_one("y " * (8 << 20))
        assert counting.chars == 0
        assert engine.embed_one("z" * MAX_TEXT_CHARS).shape == (engine.dim,)  # at the limit: fine
    finally:
        engine.backend.tokenizer = counting.inner  # type: ignore[attr-defined]
