"""Input checks shared by every entry point, so bad input fails at the door with its index."""

from __future__ import annotations

from collections.abc import Iterable


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
    """Raise TypeError/ValueError if ``text`` is not a str that can be encoded as UTF-8."""
    where = "text" if index is None else f"texts[{index}]"
    if not isinstance(text, str):
        raise TypeError(f"{where} is {type(text).__name__}, expected str")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{where} is not valid Unicode: lone surrogate {text[exc.start]!r} at position {exc.start}"
            ) from None
    return text
