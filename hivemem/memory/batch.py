"""``Memory.batch_update`` / ``batch_delete`` (Mem0's platform shapes): the checks of a batch, done
for all of it before anything is embedded or written, so that a bad item fails the call naming it.

A batch is at most ``MAX_BATCH_CHANGES`` items (Mem0's platform takes 1,000), each naming a
distinct ``memory_id``; the storage then applies it in one transaction (``Storage.update_many`` /
``delete_many``): all of it, or nothing when an id is unknown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hivemem.embed.protocol import EmbedderLike
from hivemem.embed.validate import check_unicode
from hivemem.errors import LimitExceeded, MemoryNotFound
from hivemem.memory.records import check_metadata, check_text, content_hash, expiry
from hivemem.memory.storage.base import Change, Storage

MAX_BATCH_CHANGES = 1000
# ``Memory.update``'s ``expiration_date`` when not given (None means "never expires")
KEEP: Any = object()
_UPDATE_KEYS = ("memory_id", "text", "metadata", "expiration_date")


class Update:
    """One checked item of ``batch_update``: ``meta`` JSON text; ``expires``: ``expiration_date``
    given (then ``expires_at`` is its instant, None: never)."""

    __slots__ = ("expires", "expires_at", "memory_id", "meta", "text")

    def __init__(
        self, memory_id: str, text: str | None, meta: str | None, expiration: Any, where: str = ""
    ) -> None:
        self.memory_id = memory_id
        self.text = text
        self.meta = meta
        self.expires = expiration is not KEEP
        self.expires_at = expiry(expiration, where) if self.expires else None
        if text is None and meta is None and not self.expires:
            raise ValueError(f"{where}update needs text and/or metadata (or expiration_date)")


def _items(items: Any, what: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    if not isinstance(items, list | tuple):
        raise TypeError(f"{what} takes a list of dicts, got {type(items).__name__}")
    if not items:
        raise ValueError(f"{what} needs at least one item")
    if len(items) > MAX_BATCH_CHANGES:
        raise LimitExceeded.count(
            what, len(items), "items", MAX_BATCH_CHANGES, "MAX_BATCH_CHANGES", "memories"
        )
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"items[{i}] must be a dict, got {type(item).__name__}")
        extra = set(item) - set(keys)
        if extra:
            raise ValueError(f"items[{i}] has unknown keys {sorted(extra)}; allowed: {list(keys)}")
        memory_id = item.get("memory_id")
        if not isinstance(memory_id, str) or not memory_id:
            raise TypeError(f"items[{i}]: memory_id must be a non-empty string, got {memory_id!r}")
        check_unicode(memory_id, f"items[{i}]: memory_id")
        if memory_id in seen:
            raise ValueError(f"items[{i}]: memory {memory_id} is named twice in this batch")
        seen.add(memory_id)
    return list(items)


def updates(items: Any) -> list[Update]:
    """``batch_update``'s items checked: ``{"memory_id", "text"?, "metadata"?, "expiration_date"?}``,
    at least one change each."""
    out = []
    for i, item in enumerate(_items(items, "batch_update", _UPDATE_KEYS)):
        where = f"items[{i}]: "
        text = item.get("text")
        metadata = item.get("metadata")
        out.append(
            Update(
                item["memory_id"],
                None if text is None else check_text(text, f"{where}text", embedded=True),
                None if metadata is None else check_metadata(metadata, where),
                item.get("expiration_date", KEEP),
                where,
            )
        )
    return out


def deletions(items: Any) -> list[str]:
    """``batch_delete``'s items (``{"memory_id"}``) checked → the ids, in order."""
    return [item["memory_id"] for item in _items(items, "batch_delete", ("memory_id",))]


def apply(storage: Storage, embedder: Callable[[], EmbedderLike], changes: list[Update]) -> None:
    """Checked updates → one transaction: unknown ids refused before the embed call (and again
    under the transaction's lock), the new texts embedded in one call (``embedder()``: the model,
    loaded only when a text changes)."""
    missing = storage.unknown([c.memory_id for c in changes])
    if missing:
        raise MemoryNotFound(f"Memory with id {missing[0]} not found")
    texts = list(dict.fromkeys(c.text for c in changes if c.text is not None))
    vectors = embedder().embed(texts) if texts else None
    row = {t: i for i, t in enumerate(texts)}
    try:
        storage.update_many(
            [
                Change(c.memory_id, None, None, None, c.meta, c.expires, c.expires_at)
                if c.text is None or vectors is None
                else Change(
                    c.memory_id,
                    c.text,
                    vectors[row[c.text]],
                    content_hash(c.text),
                    c.meta,
                    c.expires,
                    c.expires_at,
                )
                for c in changes
            ]
        )
    except KeyError as exc:  # deleted between the check and the transaction
        raise MemoryNotFound(f"Memory with id {exc.args[0]} not found") from None
