"""Input checks shared by every entry point, so bad input fails at the door with its index.

``MAX_TEXT_CHARS`` is the one length limit of a text to embed, checked here before anything
tokenizes or stores it: the Python engine, ``connect()`` clients, the service socket (which checks
again what a raw client sends), HTTP ``/v1/embeddings`` and every text ``Memory`` embeds (add,
add_batch, update, search queries) call ``check_text``. Above it a text is refused with
``LimitExceeded``, never cut: the caller keeps control of what is stored. Why a limit at all: the
model keeps 256 tokens, yet a 15 MiB text was tokenized whole (16.6 s, gigabytes held).

``model_input`` bounds the cost of a long text *under* the limit: the tokenizer sees a prefix that
provably yields the same first 256 tokens as the whole text, so its vector is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hivemem.errors import LimitExceeded

# Characters of one text (64 Ki): ~60x what the model's 256-token window covers in English, so no
# text the model can see all of is refused, and a refused one had most of itself ignored anyway.
MAX_TEXT_CHARS = 65_536
# The first prefix of a long text that ``model_input`` tries, in characters (256 tokens of English
# take ~1,100); a prefix that holds too few tokens is grown 4x until it holds enough, or is whole.
PREFIX_CHARS = 2_048
_GROWTH = 4
# Calls of at most this many texts are tokenized in the calling thread, text by text, instead of by
# ``encode_batch``'s thread pool: for the ~16 short texts of a batch of concurrent single calls the
# pool's fork/join costs as much as it saves on a quiet machine, and on a loaded one a descheduled
# pool thread stalls the whole batch (docs/embed.md, "Concurrent singles"). Same tokens either way.
SERIAL_TOKENIZE_TEXTS = 32


def check_texts(texts: object) -> list[str]:
    """Return ``texts`` as a list of valid strings, or raise naming the first bad item.

    A bare string is refused (it would otherwise be embedded character by character).
    """
    if isinstance(texts, str | bytes):
        raise TypeError(
            f"expected a list of strings, got a bare {type(texts).__name__}; "
            "wrap it in a list or call embed_one()"
        )
    if texts is None or not isinstance(texts, Iterable):
        raise TypeError(f"expected a list of strings, got {type(texts).__name__}")
    items = list(texts)
    for i, text in enumerate(items):
        check_text(text, index=i)
    return items


def check_text(text: object, index: int | None = None) -> str:
    """Raise TypeError/ValueError if ``text`` is not a str that can be encoded as UTF-8, and
    LimitExceeded if it is longer than ``MAX_TEXT_CHARS``."""
    where = "text" if index is None else f"texts[{index}]"
    if not isinstance(text, str):
        raise TypeError(f"{where} is {type(text).__name__}, expected str")
    check_length(text, where)
    return check_unicode(text, where)


def check_unicode(value: str, where: str) -> str:
    """``value`` if it can be stored as UTF-8; else ValueError naming ``where`` and the position.

    A Python ``str`` may hold lone surrogates (``"\\udcff"``, from ``surrogateescape`` decoding or
    JSON ``"\\ud800"`` escapes); SQLite, the tokenizer and the wire need real UTF-8.
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{where} is not valid Unicode: lone surrogate {value[exc.start]!r} at position {exc.start}"
            ) from None
    return value


def check_length(text: str, where: str) -> None:
    """LimitExceeded naming ``where`` if ``text`` has more than ``MAX_TEXT_CHARS`` characters."""
    if len(text) > MAX_TEXT_CHARS:
        raise LimitExceeded(
            f"{where} has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS): "
            "the model reads only its first 256 tokens (~1,100 characters of English), so split "
            "longer documents into chunks",
            limit_name="MAX_TEXT_CHARS",
            limit=MAX_TEXT_CHARS,
            field="input" if where.startswith("texts") else where,
        )


_ASCII_CUTS = frozenset(" \t\n\r!\"#$%&'()*+,-./:;<=>?@[\\^_`{|}~")


def _is_cut(c: str) -> bool:
    """Whether the BERT tokenizer (``BertNormalizer`` + ``BertPreTokenizer``) always starts a new
    word at ``c``, whatever comes before: ASCII whitespace and punctuation, Latin-1 and general
    punctuation, the ideographic space and full stops, and CJK ideographs (each its own word).
    All of them are starters (canonical combining class 0), so Unicode normalisation never
    reorders or composes across them. Kept to old, stable blocks on purpose. Never "]", which
    ends special tokens such as "[MASK]" that the tokenizer matches whole."""
    o = ord(c)
    if o < 0x80:
        return c in _ASCII_CUTS
    return (
        o in (0xA1, 0xA7, 0xAB, 0xB6, 0xB7, 0xBB, 0xBF)
        or 0x2010 <= o <= 0x2027
        or (0x2030 <= o <= 0x205E and o not in (0x2044, 0x2052))  # those two are math symbols
        or 0x3000 <= o <= 0x3002
        or 0x4E00 <= o <= 0x9FFF
    )


def _prefix(text: str, size: int) -> str:
    """``text`` cut just before its last word start within the first ``size`` characters, or
    ``text`` itself if it is not longer than ``size`` or has no such place to cut."""
    if len(text) <= size:
        return text
    for i in range(size, 0, -1):
        if _is_cut(text[i]):
            return text[:i]
    return text


def model_input(tokenizer: Any, texts: list[str]) -> list[Any]:
    """``tokenizer.encode_batch(texts)`` (special tokens added, truncation at the model's window on),
    at a cost bounded by what the model keeps instead of by the texts' lengths.

    Each long text is tokenized from a prefix that ends where a word starts (``_is_cut``). The
    BERT tokenizer works word by word there, so the prefix's tokens are the whole text's first
    tokens; once the prefix overflows the window (``Encoding.overflowing``) the model gets the
    same tokens either way, and the same overflow flag (the ``truncated`` count). A prefix that
    does not overflow is grown until it does or is the whole text. ``tests/embed/
    test_text_limit.py`` checks every cut character and hostile texts both ways.
    """
    encodings: list[Any] = [None] * len(texts)
    todo = list(range(len(texts)))
    size = PREFIX_CHARS
    while todo:
        inputs = [_prefix(texts[i], size) for i in todo]
        if len(inputs) > SERIAL_TOKENIZE_TEXTS:
            batch = tokenizer.encode_batch(inputs, add_special_tokens=True)
        else:
            batch = [tokenizer.encode(text, add_special_tokens=True) for text in inputs]
        left = []
        for i, text, enc in zip(todo, inputs, batch, strict=True):
            if len(text) == len(texts[i]) or enc.overflowing:
                encodings[i] = enc
            else:
                left.append(i)
        todo, size = left, size * _GROWTH
    return encodings
